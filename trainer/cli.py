"""tweetgen-train: turn tweets into a model folder that tweetgen-run serves.

Examples:
  tweetgen-train --archive twitter-2024.zip --name me                    # everything: exported/me/
  tweetgen-train --user alice --user bob --name cyborg --epochs 4        # two voices (X API, X_BEARER_TOKEN)
  tweetgen-train --file tweets.csv --base-model ./SmolLM2.gguf --name me # another base model
  tweetgen-train fetch --user dril --workdir work                        # download into work/raw/ only
  tweetgen-train clean --file tweets.csv --as me --file more.txt --as me --workdir work --json
  tweetgen-train train --workdir work --name me --resume                 # continue a killed training run
  tweetgen-train export --model path/to/hf-folder --out exported/other   # export any local causal LM
  tweetgen-train eval --model exported/me --workdir work/me --json       # voice, memorization, diversity
  tweetgen-train push --model exported/me --repo-id me/me-bot --private  # to the Hugging Face Hub (HF_TOKEN)

Stages: fetch, clean, train, export, eval (with none, all of them run in turn), and push. Everywhere, --as NAME files
the previous source's tweets under that user, and --name names the model.

Tables and progress go to stderr; `--json` prints the statistics on stdout. Errors print `Error: ...` and exit 1.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from tweetgen.errors import TweetgenError
from tweetgen.trainer.cli_args import STAGES, build_parser as _build_parser, clean_options, collect_sources
from tweetgen.trainer.data.clean import CleanOptions, UserStats, clean_all, save_stats, stats_json
from tweetgen.trainer.data.dataset import save_clean
from tweetgen.trainer.data.fetch import fetch

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    return _build_parser(__doc__)


def run_fetch(args: argparse.Namespace) -> dict[str, list]:
    """Fill the cache for every source, showing progress (and rate-limit waits) on stderr."""
    from rich.console import Console

    sources = collect_sources(args)
    with Console(stderr=True).status("Fetching tweets...") as status:
        return fetch(sources, args.workdir, report=status.update,
                     client_options={"max_wait": args.max_wait, "deadline": args.deadline})


def run_clean(args: argparse.Namespace) -> dict[str, UserStats]:
    """Fetch, clean, save clean/<user>.jsonl and stats.json, print the table (and JSON)."""
    options = clean_options(args)
    raw = run_fetch(args)
    texts, stats = clean_all(raw, options)
    save_clean(args.workdir, texts)
    save_stats(args.workdir, stats, options)
    print_stats(stats, options)
    if args.json and args.stage == "clean":
        print(json.dumps(stats_json(stats, options)))
    return stats


def print_stats(stats: dict[str, UserStats], options: CleanOptions) -> None:
    """The per-user table, on stderr."""
    from rich.console import Console
    from rich.table import Table

    columns = list(next(iter(stats.values())).to_json(with_replies=options.drop_replies)) if stats else []
    table = Table("user", *columns, title="Tweets per user")
    for user, s in stats.items():
        table.add_row(user, *(f"{v:,}" for v in s.to_json(with_replies=options.drop_replies).values()))
    Console(stderr=True).print(table)


def _setup_logging(verbose: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("tweetgen.trainer")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def run_train(args: argparse.Namespace, console, tracker) -> dict[str, Any]:
    """Clean the SOURCES if any were given, then fine-tune; returns the training summary."""
    from tweetgen.trainer.train.config import config_from_args
    from tweetgen.trainer.pipeline import train_stage

    if args.sources:
        run_clean(args)
    result = train_stage(_work(args), args.model_name, config_from_args(args), resume=args.resume, console=console,
                         tracker=tracker)
    if not _is_first_process():  # under torchrun every process trains; the first one speaks
        return {}
    console.print(f"perplexity on held-out tweets: {result.perplexity_before:.1f} before, "
                  f"{result.perplexity_after:.1f} after; {result.train_tokens:,} tokens in {result.wall_seconds:.0f} s "
                  f"({result.tokens_per_second:.0f} tokens/s); model in {result.model_dir}")
    return {"train": result.to_json()}


def sampling_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling defaults given on the command line, checked (tweetgen.sampling's rules)."""
    from tweetgen.sampling import SamplingParams

    given = {key: getattr(args, key) for key in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")
             if getattr(args, key, None) is not None}
    try:
        SamplingParams(**given)
    except ValueError as exc:
        raise TweetgenError(f"sampling defaults: {exc}") from None
    if given.get("temperature") == 0:  # greedy by default
        given["do_sample"] = False
    return given


def run_export(args: argparse.Namespace, console, tracker) -> dict[str, Any]:
    """Export a trained run of the work folder, or any Hugging Face causal-LM folder (--model)."""
    from tweetgen.trainer.export.export import export_folder_info, export_model
    from tweetgen.trainer.pipeline import export_stage

    variants = dict(int8=not args.no_int8, fp16=not args.no_fp16, fp32=not args.no_fp32, int4=args.int4)
    sampling = sampling_defaults(args)
    with console.status("Exporting to ONNX, checking against PyTorch, making the variants..."):
        if getattr(args, "model", None) is not None:
            name = args.name or args.model.resolve().name
            info = export_folder_info(args.model, name)
            info.sampling.update(sampling)
            report = export_model(args.model, args.out or Path("exported") / name, info=info, **variants)
        else:
            name = getattr(args, "model_name", None) or args.name
            if not name or args.workdir is None:
                raise TweetgenError("export: give --model DIR (any Hugging Face causal-LM folder), or --workdir DIR "
                                    "and --name NAME of a trained run")
            report = export_stage(_work(args), name, args.out or Path("exported") / name, **variants,
                                  copy_index=not args.no_copy_index, sampling=sampling)
    tracker.log_model(report.out_dir, kind="onnx", metadata=report.to_json())
    console.print(f"exported to {report.out_dir}; try: tweetgen-run -m {report.out_dir} \"My dream is\"")
    return {"export": report.to_json()}


def run_eval(args: argparse.Namespace, console, tracker) -> dict[str, Any]:
    """Evaluate the model folder (--model, or the one the pipeline just exported); eval.json and the card."""
    from tweetgen.trainer.eval.card import eval_table
    from tweetgen.trainer.pipeline import eval_stage

    if args.stage == "eval":
        folder, name, samples, seed = args.model, args.name, args.samples, args.seed
    else:
        folder, name, seed = args.out or Path("exported") / args.model_name, args.model_name, 0
        samples = args.eval_samples
    judge = getattr(args, "judge", None)
    if samples < 1 or seed < 0:
        raise TweetgenError(f"eval: --samples must be 1 or more and --seed 0 or more, not {samples} and {seed}")
    with console.status(f"Evaluating {folder}: {samples} tweets, perplexity, voice, memorization..."):
        report = eval_stage(folder, _work(args), name=name, samples=samples, seed=seed, judge=judge).to_json()
    tracker.log_eval(report)
    console.print(eval_table(report))
    if report.get("judge"):
        fluency = report["judge"]
        console.print(f"fluency ({fluency['judge']}): median perplexity {fluency['generated']:.1f} generated, "
                      f"{fluency['real']:.1f} real: ratio {fluency['ratio']:.3f}")
    console.print(f"targets: {report['targets']}; written to {Path(folder) / 'eval.json'} and its README.md")
    return {"eval": report}


def _work(args: argparse.Namespace):
    """The work folder of this command, one WorkDir for every stage it runs: what it reads, it reads once."""
    from tweetgen.trainer.workdir import WorkDir

    if getattr(args, "work", None) is None:
        args.work = WorkDir(args.workdir)
    return args.work


def _check_stage_args(args: argparse.Namespace) -> str | None:
    """A usage problem the parser cannot see, or None."""
    if args.stage in ("fetch", "clean", "run") and not args.sources:
        return f"{args.stage}: give at least one source: --archive PATH, --user NAME or --file PATH"
    if args.stage in ("train", "run"):
        if not args.model_name:
            return f"{args.stage}: give the model a name: --name NAME"
        args.workdir = args.workdir or Path("work") / args.model_name
    return None


def main(argv: list[str] | None = None) -> int:
    """Run tweetgen-train; returns the exit status (0 ok, 1 bad input, 2 usage, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in STAGES and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "run")  # no stage named: the whole pipeline
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 2 for a usage error, 0 for --help
        return int(e.code or 0)
    if args.stage is None:
        parser.print_help(sys.stderr)
        return 2
    problem = _check_stage_args(args)
    if problem:
        print(f"usage error: {problem}", file=sys.stderr)
        return 2
    _setup_logging(args.verbose)
    try:
        return _run_stage(args)
    except TweetgenError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"Error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted: downloads are cached and training checkpoints kept; run the same command (training: "
              "with --resume) to go on.", file=sys.stderr)
        return 130


def _run_stage(args: argparse.Namespace) -> int:
    """Run the stage holding its work folder: exclusively when it writes there, shared when it only reads."""
    from contextlib import nullcontext

    from tweetgen.trainer.workdir import lock

    workdir = getattr(args, "workdir", None)
    held = nullcontext() if workdir is None else lock(workdir, shared=args.stage in ("export", "eval"))
    with held:
        return _run_stage_held(args)


def _run_stage_held(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    summary: dict[str, Any] = {}
    with _start_tracker(args) as tracker:
        if args.stage == "fetch":
            run_fetch(args)
        elif args.stage == "clean":
            run_clean(args)
        elif args.stage == "export":
            summary = run_export(args, console, tracker)
        elif args.stage == "eval":
            summary = run_eval(args, console, tracker)
        elif args.stage == "push":
            from tweetgen.trainer.export.push import push

            files = push(args.model, args.repo_id, private=args.private)
            console.print(f"pushed {len(files)} files to https://huggingface.co/{args.repo_id}")
        else:
            summary = run_train(args, console, tracker)
            if args.stage == "run" and _is_first_process():
                summary.update(run_export(args, console, tracker))
                if not args.no_eval:
                    summary.update(run_eval(args, console, tracker))
    if getattr(args, "json", False) and summary:
        print(json.dumps(summary["eval"] if args.stage == "eval" else summary))
    return 0


def _start_tracker(args: argparse.Namespace):
    """The experiment tracker of --report-to (train, run, export); it does nothing for the other stages."""
    from dataclasses import asdict

    from tweetgen.trainer.train.config import config_from_args
    from tweetgen.trainer.tracking import Tracker

    if args.stage in ("train", "run"):
        config = config_from_args(args)
        return Tracker.start(config.report_to, name=args.model_name, config=asdict(config))
    if args.stage == "export":
        name = args.name or (args.model.resolve().name if args.model else "export")
        config = {"model": str(args.model or ""), "int8": not args.no_int8, "fp16": not args.no_fp16,
                  "fp32": not args.no_fp32}
        return Tracker.start(args.report_to, name=name, config=config, job_type="tweetgen-export")
    return Tracker()


def _is_first_process() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


if __name__ == "__main__":
    sys.exit(main())

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
from tweetgen.version import version
from tweetgen.trainer.data.clean import CleanOptions, UserStats, clean_all, save_stats, stats_json
from tweetgen.trainer.data.dataset import save_clean
from tweetgen.trainer.data.fetch import Source, fetch

log = logging.getLogger(__name__)


class _SourceAction(argparse.Action):
    """Appends (kind, value) to `sources` so mixed --archive/--user/--file keep their order."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        sources = list(getattr(namespace, "sources", None) or [])
        sources.append({"kind": self.const, "value": values, "name": None})
        namespace.sources = sources


class _NameAction(argparse.Action):
    """--name applies to the source just before it; given before any source, to every source."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        sources = getattr(namespace, "sources", None)
        if sources:
            sources[-1]["name"] = values
        else:
            namespace.default_name = values


class _NoModelNameAction(argparse.Action):
    """--name in a stage that makes no model: say what to use instead."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error("--name names a model, and this stage makes none: file tweets under a user with --as NAME")


def add_source_args(parser: argparse.ArgumentParser, *, rename_flags: tuple[str, ...] = ("--as",),
                    workdir_required: bool = True) -> None:
    """The SOURCES options shared by every stage that reads tweets."""
    group = parser.add_argument_group("sources (each can repeat; at least one)")
    group.add_argument("--archive", action=_SourceAction, const="archive", metavar="PATH",
                       help="an X archive: the .zip X sent, its unpacked folder, or its tweets.js / tweet.js")
    group.add_argument("--user", action=_SourceAction, const="user", metavar="NAME",
                       help="an X username, downloaded with the X API v2 (bearer token in X_BEARER_TOKEN)")
    group.add_argument("--file", action=_SourceAction, const="file", metavar="PATH",
                       help="a .csv, .jsonl, .json (array) or .txt (one tweet a line) file")
    group.add_argument(*rename_flags, dest="rename", action=_NameAction, metavar="NAME",
                       help="file the previous source's tweets under this user (before any source: all of them)")
    group.add_argument("--text-column", metavar="COL", help="files: the column holding the text (default: guessed)")
    group.add_argument("--user-column", metavar="COL", help="files: the column holding the user (default: guessed)")
    parser.set_defaults(sources=[], default_name=None)
    parser.add_argument("--workdir", type=Path, required=workdir_required, metavar="DIR",
                        help="where the cache (raw/), cleaned tweets (clean/), stats.json and training runs (runs/) "
                             "go" + ("" if workdir_required else " (default: work/NAME)"))
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")


def collect_sources(args: argparse.Namespace) -> list[Source]:
    """The Source list the parsed SOURCES options describe, in command-line order."""
    return [Source(kind=s["kind"], value=s["value"], name=s["name"] or args.default_name,
                   text_column=args.text_column, user_column=args.user_column) for s in args.sources]


def add_clean_args(parser: argparse.ArgumentParser) -> None:
    """Cleaning options; defaults come from CleanOptions (huggingtweets' rules plus de-duplication)."""
    default = CleanOptions()
    group = parser.add_argument_group("cleaning")
    group.add_argument("--keep-retweets", action="store_true", help="keep retweets (dropped by default)")
    group.add_argument("--drop-replies", action="store_true", help="drop replies and tweets starting with @name")
    group.add_argument("--min-words", type=int, default=default.min_words, metavar="N",
                       help="drop tweets with fewer words, not counting words with http, @ or # (default %(default)s)")
    group.add_argument("--keep-urls", action="store_true", help="keep links in the text")
    group.add_argument("--no-mentions", action="store_true", help="remove @names from the text")
    group.add_argument("--keep-newlines", action="store_true", help="keep line breaks instead of flattening")
    group.add_argument("--keep-duplicates", action="store_true", help="keep exact duplicates")


def clean_options(args: argparse.Namespace) -> CleanOptions:
    """The CleanOptions that the parsed cleaning options describe."""
    if args.min_words < 0:
        raise TweetgenError(f"--min-words must be 0 or more, not {args.min_words}")
    return CleanOptions(drop_retweets=not args.keep_retweets, drop_replies=args.drop_replies,
                        min_words=args.min_words, remove_urls=not args.keep_urls,
                        keep_mentions=not args.no_mentions, keep_newlines=args.keep_newlines,
                        drop_duplicates=not args.keep_duplicates)


STAGES = ("fetch", "clean", "train", "export", "eval", "push", "run")


def build_parser() -> argparse.ArgumentParser:
    """The tweetgen-train parser: one subcommand per stage, and `run` (the default) for all of them."""
    parser = argparse.ArgumentParser(prog="tweetgen-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    stages = parser.add_subparsers(dest="stage", metavar="STAGE")
    fetch_parser = stages.add_parser("fetch", help="fill the cache with each user's raw tweets, then stop")
    add_source_args(fetch_parser)
    clean_parser = stages.add_parser("clean", help="fetch what is not cached, clean, and report the counts")
    add_source_args(clean_parser)
    for parser_ in (fetch_parser, clean_parser):
        parser_.add_argument("--name", action=_NoModelNameAction, help=argparse.SUPPRESS)
    add_clean_args(clean_parser)
    clean_parser.add_argument("--json", action="store_true", help="print the statistics as JSON on stdout")
    train_parser = stages.add_parser("train", help="fine-tune on the work folder's cleaned tweets (SOURCES: clean "
                                                   "them first)")
    _add_model_stage_args(train_parser, need_sources=False)
    export_parser = stages.add_parser("export", help="export a trained run (--workdir, --name) or any Hugging Face "
                                                     "causal-LM folder (--model) to an ONNX model folder")
    export_parser.add_argument("--model", type=Path, metavar="DIR", help="a local Hugging Face causal-LM folder")
    export_parser.add_argument("--workdir", type=Path, metavar="DIR", help="the work folder of a trained run")
    export_parser.add_argument("--name", help="the model's name (default: the folder's name)")
    _add_export_args(export_parser)
    export_parser.add_argument("--json", action="store_true", help="print the export report as JSON on stdout")
    export_parser.add_argument("--report-to", default="none", metavar="TRACKER",
                               help="wandb: log the exported folder as a W&B model artifact (pip install wandb)")
    export_parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    eval_parser = stages.add_parser("eval", help="measure a model folder on the work folder's held-out tweets: "
                                                 "perplexity, voice, memorization, diversity (eval.json, card)")
    eval_parser.add_argument("--model", type=Path, required=True, metavar="DIR", help="the exported model folder")
    eval_parser.add_argument("--workdir", type=Path, required=True, metavar="DIR",
                             help="the work folder whose cleaned tweets trained the model")
    eval_parser.add_argument("--name", help="the training run whose split to use (default: the folder's name when "
                                            "the work folder has that run, else a default split)")
    eval_parser.add_argument("--samples", type=int, default=500, metavar="N", help="tweets to generate (%(default)s)")
    eval_parser.add_argument("--seed", type=int, default=0, help="seed of the generation (%(default)s)")
    eval_parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    eval_parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    push_parser = stages.add_parser("push", help="publish an exported folder to the Hugging Face Hub (the token: "
                                                 "HF_TOKEN or `hf auth login`)")
    push_parser.add_argument("--model", type=Path, required=True, metavar="DIR", help="the exported model folder")
    push_parser.add_argument("--repo-id", required=True, metavar="USER/NAME", help="the model repo to create or update")
    push_parser.add_argument("--private", action="store_true", help="create the repo private")
    push_parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    run_parser = stages.add_parser("run", help="all stages in turn (the default)")
    _add_model_stage_args(run_parser, need_sources=True)
    _add_export_args(run_parser)
    run_parser.add_argument("--no-eval", action="store_true", help="skip the evaluation after the export")
    run_parser.add_argument("--eval-samples", type=int, default=500, metavar="N",
                            help="tweets generated by the evaluation (%(default)s)")
    return parser


def _add_model_stage_args(parser: argparse.ArgumentParser, *, need_sources: bool) -> None:
    from tweetgen.trainer.train.config import add_config_args

    add_source_args(parser, workdir_required=False)
    add_clean_args(parser)
    parser.add_argument("--name", dest="model_name", help="the model's name (default: the users' names joined by -)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted training run")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout at the end")
    group = parser.add_argument_group("training (every knob of TrainConfig)")
    add_config_args(group)
    parser.set_defaults(need_sources=need_sources)


def _add_export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, metavar="DIR", help="the model folder to write (default: exported/NAME)")
    parser.add_argument("--no-int8", action="store_true", help="skip model_quantized.onnx (int8, for CPUs)")
    parser.add_argument("--no-fp16", action="store_true", help="skip model_fp16.onnx (for GPUs)")
    parser.add_argument("--no-fp32", action="store_true",
                        help="leave model.onnx out of the folder once every check has used it (a smaller folder)")
    group = parser.add_argument_group("the model's sampling defaults (generation_config.json; tweetgen-run's -t -k -p "
                                      "override them)")
    group.add_argument("--temperature", type=float, help="default: 1.0")
    group.add_argument("--top-k", type=int, help="default: 50")
    group.add_argument("--top-p", type=float, help="default: 0.95")
    group.add_argument("--repetition-penalty", type=float, help="default: 1.0 (none)")
    parser.add_argument("--no-copy-index", action="store_true",
                        help="ship no copies.bin (the training tweets' 8-word windows, hashed, with which "
                             "tweetgen-run draws again a tweet that copies one)")


def run_fetch(args: argparse.Namespace) -> dict[str, list]:
    """Fill the cache for every source, showing progress (and rate-limit waits) on stderr."""
    from rich.console import Console

    sources = collect_sources(args)
    with Console(stderr=True).status("Fetching tweets...") as status:
        return fetch(sources, args.workdir, report=status.update)


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
    result = train_stage(args.workdir, args.model_name, config_from_args(args), resume=args.resume, console=console,
                         tracker=tracker)
    if not _is_first_process():  # under torchrun every process trains; the first one speaks
        return {}
    console.print(f"perplexity on held-out tweets: {result.perplexity_before:.1f} before, "
                  f"{result.perplexity_after:.1f} after; {result.train_tokens:,} tokens in {result.wall_seconds:.0f} s "
                  f"({result.tokens_per_second:.0f} tokens/s); model in {result.model_dir}")
    return {"train": result.to_json()}


def sampling_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling defaults given on the command line, checked (runtime.sampling's rules)."""
    from tweetgen.sampling import SamplingParams

    given = {key: getattr(args, key) for key in ("temperature", "top_k", "top_p", "repetition_penalty")
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

    variants = dict(int8=not args.no_int8, fp16=not args.no_fp16, fp32=not args.no_fp32)
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
            report = export_stage(args.workdir, name, args.out or Path("exported") / name, **variants,
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
    if samples < 1 or seed < 0:
        raise TweetgenError(f"eval: --samples must be 1 or more and --seed 0 or more, not {samples} and {seed}")
    with console.status(f"Evaluating {folder}: {samples} tweets, perplexity, voice, memorization..."):
        report = eval_stage(folder, args.workdir, name=name, samples=samples, seed=seed).to_json()
    tracker.log_eval(report)
    console.print(eval_table(report))
    console.print(f"targets: {report['targets']}; written to {Path(folder) / 'eval.json'} and its README.md")
    return {"eval": report}


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

"""tweetgen-train's command line: the parser of every stage, built from the config dataclasses."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tweetgen.errors import TweetgenError
from tweetgen.trainer.data.clean import CleanOptions
from tweetgen.trainer.data.fetch import Source
from tweetgen.trainer.data.sources.xapi import DEADLINE, MAX_WAIT
from tweetgen.trainer.train.config import add_config_args
from tweetgen.version import version


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
    group.add_argument("--max-wait", type=float, default=MAX_WAIT, metavar="S",
                       help="X API: the longest rate-limit wait in seconds (default %(default).0f); a later reset "
                            "stops the download, to be resumed")
    group.add_argument("--deadline", type=float, default=DEADLINE, metavar="S",
                       help="X API: seconds a download may take in all, waits included (default %(default).0f)")
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


def build_parser(description: str) -> argparse.ArgumentParser:
    """The tweetgen-train parser: one subcommand per stage, and `run` (the default) for all of them."""
    parser = argparse.ArgumentParser(prog="tweetgen-train", description=description,
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
    eval_parser.add_argument("--judge", type=Path, metavar="FILE_OR_DIR",
                             help="a judge language model (a .gguf file or a Hugging Face folder) that scores each "
                                  "generated and real tweet: fluency as the ratio of median perplexities")
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
    parser.add_argument("--int4", action="store_true",
                        help="also write model_q4.onnx (4-bit linear layers; tweetgen-run --precision int4)")
    parser.add_argument("--no-fp32", action="store_true",
                        help="leave model.onnx out of the folder once every check has used it (a smaller folder)")
    group = parser.add_argument_group("the model's sampling defaults (generation_config.json; tweetgen-run's -t -k -p "
                                      "--min-p override them)")
    group.add_argument("--temperature", type=float, help="default: 1.0")
    group.add_argument("--top-k", type=int, help="default: 50")
    group.add_argument("--top-p", type=float, help="default: 0.95")
    group.add_argument("--min-p", type=float, help="default: 0 (off)")
    group.add_argument("--repetition-penalty", type=float, help="default: 1.0 (none)")
    parser.add_argument("--no-copy-index", action="store_true",
                        help="ship no copies.bin (the training tweets' 8-word windows, hashed, with which "
                             "tweetgen-run draws again a tweet that copies one)")

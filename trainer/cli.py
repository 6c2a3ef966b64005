"""tweetgen-train: fetch a person's tweets, clean them, (later) train and export.

Examples:
  tweetgen-train fetch --user dril --workdir work              # download into work/raw/ (needs X_BEARER_TOKEN)
  tweetgen-train clean --archive twitter-2024.zip --workdir work
  tweetgen-train clean --file tweets.csv --name me --file more.txt --name me --workdir work --json
  tweetgen-train clean --user alice --user bob --drop-replies --workdir work

Tables and progress go to stderr; `--json` prints the statistics on stdout. Errors print `Error: ...` and exit 1.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from runtime.errors import TweetgenError
from trainer.clean import CleanOptions, UserStats, clean_all, save_stats, stats_json
from trainer.dataset import save_clean
from trainer.fetch import Source, fetch

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


def add_source_args(parser: argparse.ArgumentParser) -> None:
    """The SOURCES options shared by every stage that reads tweets."""
    group = parser.add_argument_group("sources (each can repeat; at least one)")
    group.add_argument("--archive", action=_SourceAction, const="archive", metavar="PATH",
                       help="an X archive: the .zip X sent, its unpacked folder, or its tweets.js / tweet.js")
    group.add_argument("--user", action=_SourceAction, const="user", metavar="NAME",
                       help="an X username, downloaded with the X API v2 (bearer token in X_BEARER_TOKEN)")
    group.add_argument("--file", action=_SourceAction, const="file", metavar="PATH",
                       help="a .csv, .jsonl, .json (array) or .txt (one tweet a line) file")
    group.add_argument("--name", action=_NameAction, metavar="NAME",
                       help="file the previous source's tweets under this user (before any source: all of them)")
    group.add_argument("--text-column", metavar="COL", help="files: the column holding the text (default: guessed)")
    group.add_argument("--user-column", metavar="COL", help="files: the column holding the user (default: guessed)")
    parser.set_defaults(sources=[], default_name=None)
    parser.add_argument("--workdir", type=Path, required=True, metavar="DIR",
                        help="where the cache (raw/), cleaned tweets (clean/) and stats.json go")
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


def build_parser() -> argparse.ArgumentParser:
    """The tweetgen-train parser: one subcommand per stage."""
    parser = argparse.ArgumentParser(prog="tweetgen-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = parser.add_subparsers(dest="stage", metavar="STAGE")
    fetch_parser = stages.add_parser("fetch", help="fill the cache with each user's raw tweets, then stop")
    add_source_args(fetch_parser)
    clean_parser = stages.add_parser("clean", help="fetch what is not cached, clean, and report the counts")
    add_source_args(clean_parser)
    add_clean_args(clean_parser)
    clean_parser.add_argument("--json", action="store_true", help="print the statistics as JSON on stdout")
    return parser


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
    if args.json:
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
    root = logging.getLogger("trainer")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Run tweetgen-train; returns the exit status (0 ok, 1 bad input, 2 usage, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 2 for a usage error, 0 for --help
        return int(e.code or 0)
    if args.stage is None:
        parser.print_help(sys.stderr)
        return 2
    if not args.sources:
        parser.error_message = f"{args.stage}: give at least one source: --archive PATH, --user NAME or --file PATH"
        print(f"usage error: {parser.error_message}", file=sys.stderr)
        return 2
    _setup_logging(args.verbose)
    try:
        if args.stage == "fetch":
            run_fetch(args)
        else:
            run_clean(args)
    except TweetgenError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"Error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted: what was downloaded so far is cached; run the same command to resume.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`tweetgen-run`: write tweets with an exported model. Tweets go to stdout, everything else to stderr."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

from .errors import NoDefaultModelError, TweetgenError
from .version import version
from .folder import DEVICES, PRECISIONS

DEFAULT_MODEL_NAME = "tweety"  # exported/<this> is used when neither --model nor $TWEETGEN_MODEL says otherwise


def _exported_dir() -> Path:
    """Where the default model lives: the package data `tweetgen.exported` (the repo's exported/ in an editable
    install or a checkout)."""
    spec = importlib.util.find_spec("tweetgen.exported")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "exported"


EXPORTED_DIR = _exported_dir()

EXAMPLES = """\
examples:
  tweetgen-run "My dream is"                       one tweet from the default model
  tweetgen-run -n 5 --seed 0 "My dream is"         five tweets, the same five every time
  tweetgen-run --user elonmusk "Mars"              one voice of a multi-user model
  tweetgen-run -m exported/dril -t 0.8 "I will"    another model, cooler sampling
  echo "Today I" | tweetgen-run --json             prompt from stdin, JSON out
"""


class _Version(argparse.Action):
    """--version, read from the installed metadata only when asked for (argparse's own takes it up front)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tweetgen-run", description="Write tweets in someone's voice with an exported tweetgen model.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    parser.add_argument("prompt", nargs="?", help="start of the tweet (read from stdin when piped; default empty)")
    parser.add_argument("-m", "--model", help="exported model folder (default: $TWEETGEN_MODEL, else the default "
                                              f"model exported/{DEFAULT_MODEL_NAME})")
    parser.add_argument("-n", type=int, default=1, help="how many tweets (default 1)")
    parser.add_argument("--max-new-tokens", type=int, help="tokens to add at most (default: the model's)")
    parser.add_argument("-t", "--temperature", type=float, help="0 is greedy (default: the model's)")
    parser.add_argument("-k", "--top-k", type=int, help="sample from the k likeliest tokens; 0 = all")
    parser.add_argument("-p", "--top-p", type=float, help="nucleus sampling, in (0, 1]")
    parser.add_argument("--min-p", type=float,
                        help="keep tokens at least this share as likely as the likeliest, in [0, 1]; 0 = all")
    parser.add_argument("--repetition-penalty", type=float, help="> 1 discourages repeats (1 = none)")
    parser.add_argument("--seed", type=int, help="same seed, same tweets")
    parser.add_argument("--user", help="one voice of a multi-user model (--list-users shows them)")
    parser.add_argument("--list-users", action="store_true", help="print the model's voices and exit")
    parser.add_argument("--max-chars", type=int, default=280, help="cut on a word boundary (default 280; 0 = none)")
    parser.add_argument("--stop-at-newline", action="store_true", help="end each tweet at its first newline")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="end a tweet where it first holds TEXT, cut before it (repeat for up to 4)")
    parser.add_argument("--min-new-tokens", type=int, default=0,
                        help="no end-of-text before this many new tokens (default 0)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="default: cuda if onnxruntime-gpu sees a GPU and the model has an fp16 or fp32 graph, "
                             "else cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="default: int8 on CPU, fp16 on CUDA, when the folder has them")
    parser.add_argument("--threads", type=int, help="CPU threads (default: one per core)")
    parser.add_argument("--no-huge-pages", action="store_true",
                        help="keep the weights on 4 KB pages (default for models from 64 MB: 2 MB pages on Linux, "
                             "which changes this process's malloc settings)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of plain text")
    parser.add_argument("--no-stream", action="store_true", help="print the tweet only once it is complete")
    parser.add_argument("--allow-copies", action="store_true",
                        help="keep tweets that repeat 8 words of a training tweet (by default they are drawn again "
                             "when the model ships its copy index; streaming needs this, as shown words stay shown)")
    return parser


def resolve_model(model: str | None) -> str:
    """--model, else $TWEETGEN_MODEL, else the default model folder; NoDefaultModelError when none exists."""
    if model:
        return model
    if os.environ.get("TWEETGEN_MODEL"):
        return os.environ["TWEETGEN_MODEL"]
    default = EXPORTED_DIR / DEFAULT_MODEL_NAME
    if not default.is_dir():
        raise NoDefaultModelError(
            f"no model given and no default model at {default}. Pass -m/--model with an exported model folder, "
            "set TWEETGEN_MODEL, or make one from tweets: pip install \"tweetgen[cpu,train]\" && "
            "tweetgen-train --file tweets.csv --name mine (then: tweetgen-run -m exported/mine)")
    return str(default)


def _read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        return args.prompt
    if sys.stdin is None or sys.stdin.isatty():
        return ""
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise TweetgenError(f"the prompt on stdin is not valid UTF-8 (byte {exc.start}); send UTF-8 text") from None


def run(args: argparse.Namespace) -> int:
    from .generator import Generator  # onnxruntime loads here, inside main's handling of Ctrl-C

    prompt = _read_prompt(args)
    generator = Generator.load(resolve_model(args.model), device=args.device, precision=args.precision,
                               threads=args.threads,
                               huge_pages=False if args.no_huge_pages else None)
    if args.list_users:
        print("\n".join(generator.users) if generator.users else "(a single-voice model)")
        return 0
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                   user=args.user, max_chars=args.max_chars or None, stop_at_newline=args.stop_at_newline,
                   stop=tuple(args.stop), min_new_tokens=args.min_new_tokens)
    checked = generator.copy_index is not None and not args.allow_copies  # copies are drawn again: no stream
    if args.n == 1 and not (args.json or args.no_stream or checked):
        pieces = generator.stream(prompt, **options)  # arguments are checked here, before anything is printed
        sys.stdout.write(prompt)
        sys.stdout.flush()
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    tweets = [prompt + text for text in generator.generate(prompt, args.n, allow_copies=args.allow_copies, **options)]
    if args.json:
        print(json.dumps({"model": str(generator.folder.path), "variant": generator.model_path.name,
                          "prompt": prompt, "user": args.user, "seed": args.seed, "tweets": tweets},
                         ensure_ascii=False))
    else:
        print("\n\n".join(tweets))
    sys.stdout.flush()  # a write error (a full disk) shows here, inside main's handling, not at exit
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (TweetgenError, ValueError, TypeError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # onnxruntime's own errors while running the graph
        print(f"Error: onnxruntime could not run the model: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # stdout on a full disk, or a model file that cannot be read
        where = exc.filename or "standard output"
        print(f"Error: cannot read or write {where}: {exc.strerror or exc}", file=sys.stderr)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 1


if __name__ == "__main__":
    sys.exit(main())

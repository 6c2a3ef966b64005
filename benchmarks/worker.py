"""Run one engine on one model in this (fresh) process and print what it measured as one JSON line.

    python -m benchmarks.worker ENGINE MANIFEST [SCENARIO] --json [--threads 2] [--repeats 2] [--new-tokens 64]
                                [--long-prompt 200]

ENGINE is a row name (tweetgen-int8, pytorch-fp32, ct2-int8, llamacpp-q8_0, ...; `--list` shows them), MANIFEST a
bench_model.json written by benchmarks.models. SCENARIO: all (default), load, short, long or sample5.
An engine that cannot run here prints {"skipped": "why"} and exits 0. Times are in seconds, raw: every repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from benchmarks.engines.base import Unavailable, engine_specs, open_engine
from benchmarks.models import ModelSet

SHORT_PROMPT = "My dream is"
LONG_PROMPT_TOKENS = 200
SAMPLE_ROWS = 5
SCENARIOS = ("all", "load", "short", "long", "sample5")


def long_prompt_ids(tokenizer, length: int = LONG_PROMPT_TOKENS) -> list[int]:
    """A fixed prompt of exactly `length` tokens: an English paragraph repeated and cut."""
    text = ("My dream is to build a small rocket in the backyard and fly it over the lake at sunset, "
            "while everyone I love watches from the old wooden pier and cheers. ")
    ids: list[int] = []
    while len(ids) < length:
        ids += tokenizer.encode(text).ids
    return ids[:length]


def _timed(call, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = call(*args)
    return time.perf_counter() - start, result


def _greedy_runs(engine, prompt_ids: list[int], n_new: int, repeats: int) -> dict:
    """Time to first token (a 1-token run) and a full n_new run, `repeats` times each, interleaved."""
    first, full, ids = [], [], None
    for _ in range(repeats):
        first.append(_timed(engine.greedy, prompt_ids, 1)[0])
        seconds, ids = _timed(engine.greedy, prompt_ids, n_new)
        full.append(seconds)
        if len(ids) != n_new:
            raise RuntimeError(f"{len(ids)} tokens generated instead of {n_new}")
    return {"prompt_tokens": len(prompt_ids), "new_tokens": n_new, "first_token_s": first, "total_s": full,
            "greedy_ids": ids}


def measure(engine_name: str, manifest: Path, scenario: str, *, threads: int, repeats: int, n_new: int,
            long_tokens: int = LONG_PROMPT_TOKENS) -> dict:
    """Everything one process measures for one engine; raises Unavailable when the engine cannot run."""
    models = ModelSet.read(manifest)
    specs = {spec.name: spec for spec in engine_specs(models, gpu=True)}
    if engine_name not in specs:
        raise ValueError(f"unknown engine {engine_name!r} for {models.name}; known: {', '.join(specs)}")
    spec = specs[engine_name]
    prompts = _prompts_in_a_child(manifest, long_tokens, n_new)
    short = prompts["short"]
    engine = open_engine(spec, models, threads)
    load_s, _ = _timed(engine.load)  # the engine's imports happen here too: what a user waits for
    result = {"load_s": load_s, "model_bytes": sum(p.stat().st_size for p in engine.model_files())}
    if scenario != "load":
        engine.greedy(short, 4)  # warm-up: first-run allocations and kernel choices are not what a server sees
    if scenario in ("all", "short"):
        result["short"] = _greedy_runs(engine, short, n_new, repeats)
    if scenario in ("all", "long"):
        result["long"] = _greedy_runs(engine, prompts["long"], n_new, repeats)
    if scenario in ("all", "sample5"):
        prompt = SHORT_PROMPT if spec.family == "tweetgen" else _prompt_start(models) + SHORT_PROMPT
        runs = [_timed(engine.sample_texts, prompt, SAMPLE_ROWS, n_new, seed) for seed in range(repeats)]
        result["sample5"] = {"rows": SAMPLE_ROWS, "new_tokens": n_new, "total_s": [s for s, _ in runs],
                             "example": runs[0][1][0][:200]}
    return result


def prompt_ids(models: ModelSet, long_tokens: int, n_new: int) -> dict[str, list[int]]:
    """The token ids of the short prompt and of the long one. A model with a short context (the default model has
    128 positions) gets the longest prompt that fits."""
    from tokenizers import Tokenizer

    from tweetgen import read_folder

    tokenizer = Tokenizer.from_file(str(Path(models.onnx) / "tokenizer.json"))
    fits = min(long_tokens, read_folder(models.onnx).context_length - n_new)
    return {"short": tokenizer.encode(SHORT_PROMPT).ids, "long": long_prompt_ids(tokenizer, fits)}


def _prompts_in_a_child(manifest: Path, long_tokens: int, n_new: int) -> dict[str, list[int]]:
    """prompt_ids, worked out by a child process: a tokenizer and the runtime's imports loaded here would count in
    this worker's peak memory (a GPT-2 tokenizer holds ~20 MB) and in the engine's load time."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "benchmarks.worker", "--prompt-ids", str(manifest),
                           "--long-prompt", str(long_tokens), "--new-tokens", str(n_new)],
                          capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(done.stdout)


def _prompt_start(models: ModelSet) -> str:
    """tweetgen puts the folder's prompt start (the training separator) before each prompt; the peers get it too."""
    info = Path(models.onnx) / "tweetgen.json"
    return json.loads(info.read_text(encoding="utf-8")).get("prompt_start", "") if info.is_file() else ""


def peak_rss_mb() -> float:
    """This process's peak resident set size. On Linux the mm's high-water mark (VmHWM): ru_maxrss there also keeps
    the peak of the process image exec replaced, i.e. of the parent that spawned this worker (a benchmark run that
    had loaded torch showed ~300 MB for every worker)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 1024


@contextmanager
def _stdout_to_stderr():
    """Engines and their native libraries may print: keep stdout for the one JSON line."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield os.fdopen(saved, "w")
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one benchmark engine in this process; print JSON.")
    parser.add_argument("engine", nargs="?")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("scenario", nargs="?", default="all", choices=SCENARIOS)
    parser.add_argument("--json", action="store_true", help="print one JSON line (the only output format)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each measurement")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--long-prompt", type=int, default=LONG_PROMPT_TOKENS, help="tokens in the long prompt")
    parser.add_argument("--list", action="store_true", help="print the engine names for this model and exit")
    parser.add_argument("--prompt-ids", action="store_true", help="print the prompts' token ids as JSON and exit")
    args = parser.parse_args(argv)
    models = ModelSet.read(args.manifest)
    if args.prompt_ids:
        print(json.dumps(prompt_ids(models, args.long_prompt, args.new_tokens)))
        return 0
    if args.list or not args.engine:
        print("\n".join(spec.name for spec in engine_specs(models, gpu=True)))
        return 0
    out = {"engine": args.engine, "model": models.name, "scenario": args.scenario, "threads": args.threads,
           "python": sys.executable}
    with _stdout_to_stderr() as stdout:
        try:
            out.update(measure(args.engine, args.manifest, args.scenario, threads=args.threads, repeats=args.repeats,
                               n_new=args.new_tokens, long_tokens=args.long_prompt))
        except Unavailable as exc:
            out["skipped"] = str(exc)
        except Exception as exc:  # one engine's failure is a row in the table, not the end of the benchmark
            out["error"] = f"{type(exc).__name__}: {exc}"
        out["peak_rss_mb"] = peak_rss_mb()
        stdout.write(json.dumps(out) + "\n")
        stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

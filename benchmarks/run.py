"""Run every engine on the same models, one fresh process per engine, interleaved over rounds; print, save, chart.

    python -m benchmarks.run                       # GPT-2 124M and distilgpt2 shapes, 3 rounds (README.md)
    python -m benchmarks.run --quick               # distilgpt2 shape, 1 round: a 1-2 minute smoke run
    python -m benchmarks.run --hf /path/SmolLM2-135M --model exported/tweety

Every time is the MINIMUM over all repeats of all rounds (the least-disturbed run, as timeit reports); peak RSS is
the maximum over rounds. Raw samples are all kept in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import models as model_builder
from benchmarks.engines.base import engine_specs
from benchmarks.floor import copy_bandwidth_gbs, row_bytes_per_token
from benchmarks.models import DEFAULT_CACHE, ModelSet
from benchmarks.report import (check_correctness, perplexity_check, print_report, ratios, round_ratios, summarize,
                               write_chart)
from benchmarks.sizes import all_stack_sizes

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def build_models(args: argparse.Namespace) -> list[ModelSet]:
    exported = list(args.model)
    from tweetgen.cli import DEFAULT_MODEL_NAME, EXPORTED_DIR

    default = EXPORTED_DIR / DEFAULT_MODEL_NAME  # tweetgen-run's default model, when one has been made
    if not exported and not args.quick and default.is_dir():
        exported.append(default)
    return model_builder.build_all(args.shapes, args.hf, exported, args.cache, fp16=args.fp16)


def selected(models: ModelSet, wanted: list[str] | None, gpu: bool):
    """The rows for a model; --engines takes full names (tweetgen-int8) or families (tweetgen, ct2)."""
    specs = engine_specs(models, gpu=gpu)
    if not wanted:
        return specs
    return [s for s in specs if s.name in wanted or s.family in wanted]


def run_worker(engine: str, manifest: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "benchmarks.worker", engine, str(manifest), "all", "--json",
               "--threads", str(args.threads), "--repeats", str(args.repeats), "--new-tokens", str(args.new_tokens),
               "--long-prompt", str(args.long_prompt)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=args.timeout)
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        result = {"engine": engine, "error": f"worker exited {done.returncode}: {' | '.join(tail)}"}
    result["process_s"] = time.perf_counter() - started
    return result


def cold_start(models: ModelSet) -> dict:
    """Wall time from starting `tweetgen-run -m DIR "My dream is"` to its first stdout line (the whole first
    tweet: streaming writes the tweet, then a newline), and to its exit. The model folder's defaults, int8."""
    script = Path(sys.executable).with_name("tweetgen-run")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "tweetgen"]
    command += ["-m", models.onnx, "--seed", "0", "My dream is"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    first_line = process.stdout.readline()
    first = time.perf_counter() - started
    process.communicate()
    total = time.perf_counter() - started
    if process.returncode != 0:
        return {"error": f"exit {process.returncode}", "command": command}
    return {"first_tweet_s": first, "exit_s": total, "command": command, "chars": len(first_line)}


def environment(args: argparse.Namespace) -> dict:
    from importlib import metadata

    versions = {}
    for name in ("onnxruntime", "torch", "transformers", "optimum", "optimum-onnx", "ctranslate2", "llama-cpp-python",
                 "numpy", "tokenizers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
            "processor": _cpu_name(), "cpus": os.cpu_count(), "threads": args.threads,
            "load_average_start": os.getloadavg(), "versions": versions}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _gpu_present() -> bool:
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        return False


def benchmark(args: argparse.Namespace) -> dict:
    gpu = _gpu_present()
    args.fp16 = args.fp16 or gpu  # the GPU rows run model_fp16.onnx
    built = build_models(args)
    raw: dict[str, dict[str, list[dict]]] = {m.name: {} for m in built}
    colds: dict[str, list[dict]] = {m.name: [] for m in built}
    plan = [(m, spec) for m in built for spec in selected(m, args.engines, gpu)]
    per_token = {m.name: {} for m in built}
    for models, spec in plan:
        if spec.device == "cpu":
            per_token[models.name][spec.name] = row_bytes_per_token(spec.family, spec.variant, models)
    for round_index in range(args.rounds):
        # Interleave: each round starts at a different row and alternates direction, so drift in the machine's
        # load spreads over all engines instead of landing on the last ones.
        shift = round_index * max(1, len(plan) // max(1, args.rounds))
        order = plan[shift:] + plan[:shift]
        if round_index % 2:
            order.reverse()
        for models, spec in order:
            result = run_worker(spec.name, model_builder.manifest_path(args.cache, models.name), args)
            raw[models.name].setdefault(spec.name, []).append(result)
            status = result.get("skipped") or result.get("error") or f"{result['process_s']:.1f} s"
            print(f"[round {round_index + 1}/{args.rounds}] {models.name} {spec.name}: {status}", file=sys.stderr)
        if not args.no_cold_start:
            for models in built:
                colds[models.name].append(cold_start(models))
    return {"raw": raw, "cold_start_raw": colds, "models": built, "gpu": gpu, "bytes_per_token": per_token}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="distilgpt2 shape, 1 round, 1 repeat")
    parser.add_argument("--shapes", nargs="*", choices=list(model_builder.SHAPES),
                        help="random-weight shapes (default: gpt2 distilgpt2)")
    parser.add_argument("--hf", type=Path, action="append", default=[],
                        help="also a Hugging Face causal-LM folder, exported and converted for every row "
                             "(e.g. SmolLM2-135M); repeatable")
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help="also an exported folder, ONNX rows only (default: exported/tweety when it exists, "
                             "except with --quick); repeatable")
    parser.add_argument("--engines", nargs="*", help="row names or families (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per measurement in each process")
    parser.add_argument("--threads", type=int, default=_physical_cores())
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--long-prompt", type=int, default=200, help="tokens in the long prompt")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"built models (default {DEFAULT_CACHE})")
    parser.add_argument("--fp16", action="store_true", help="also export model_fp16.onnx (GPU rows)")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the tweetgen-run cold start")
    parser.add_argument("--ppl-texts", type=Path, help="held-out texts, one per line, for the int8 perplexity check "
                                                       "(default: ../shared/data tweets when present)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and PNG")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one worker may take")
    args = parser.parse_args(argv)
    if args.shapes is None:
        args.shapes = ["distilgpt2"] if args.quick else ["gpt2", "distilgpt2"]
    if args.quick:
        args.rounds, args.repeats = 1, 1
    return args


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = environment(args)
    started = time.time()
    bandwidth = [copy_bandwidth_gbs(args.threads)]  # the memory floor's probe, before and after the rows
    measured = benchmark(args)
    bandwidth.append(copy_bandwidth_gbs(args.threads))
    summary = summarize(measured["raw"], measured["cold_start_raw"])
    results = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "environment": env,
        "settings": {"rounds": args.rounds, "repeats": args.repeats, "new_tokens": args.new_tokens,
                     "long_prompt_tokens": args.long_prompt, "threads": args.threads,
                     "statistic": "minimum over all repeats and rounds (peak RSS: maximum)"},
        "models": {m.name: vars(m) for m in measured["models"]},
        "gpu": "measured" if measured["gpu"] else "not measured: no CUDA GPU visible to onnxruntime",
        "install_mb": {name: {"mb": size.mb, "missing": list(size.missing), "distributions": list(size.distributions)}
                       for name, size in all_stack_sizes().items()},
        "summary": summary,
        "correctness": check_correctness(measured["raw"]),
        "perplexity": perplexity_check(measured["models"], args.ppl_texts),
        "raw": measured["raw"],
        "cold_start_raw": measured["cold_start_raw"],
    }
    results["floor"] = {"copy_bandwidth_gbs": bandwidth, "bytes_per_token": measured["bytes_per_token"],
                        "method": "benchmarks/floor.py"}
    results["ratios"] = ratios(summary)
    results["round_ratios"] = round_ratios(measured["raw"], summary)
    results["environment"]["load_average_end"] = os.getloadavg()
    results["environment"]["wall_s"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = args.out / f"{stamp}.json"
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    chart = write_chart(summary, args.out / f"{stamp}.png")
    print_report(results)
    print(f"\nwrote {json_path}" + (f" and {chart}" if chart else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""From the workers' raw JSON to the table, the ratios, the correctness checks and the chart."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from benchmarks.engines.base import SMALL_PAGES, precision_of
from benchmarks.models import ModelSet

REFERENCE = "tweetgen-fp32"  # every other row's greedy ids are compared with this one's
INT4 = "tweetgen-int4"
QUARTER_PEERS = ("llamacpp-q4_0", "llamacpp-q4_K_M")  # llama.cpp's 4-bit rows, against tweetgen's
PPL_TOLERANCE = 0.03  # int8 perplexity may exceed fp32's by this fraction
SHARED_TWEETS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tweets" / "dril" / "dril_tweets.csv"
PPL_TEXTS = 200  # held-out texts scored


def _family(engine: str) -> str:
    return engine.split("-")[0]


def _row(results: list[dict]) -> dict:
    """One engine's rows over all rounds -> its summary (min of times, max of RSS)."""
    good = [r for r in results if "load_s" in r and "error" not in r]
    if not good:
        first = results[0]
        return {"status": f"skipped: {first['skipped']}" if "skipped" in first else
                f"error: {first.get('error', 'no result')}"}
    row = {"status": "ok", "rounds": len(good), "load_s": min(r["load_s"] for r in good),
           "peak_rss_mb": max(r["peak_rss_mb"] for r in good), "model_mb": good[0]["model_bytes"] / 1e6}
    for key in ("short", "long"):
        if key in good[0]:
            first = min(t for r in good for t in r[key]["first_token_s"])
            total = min(t for r in good for t in r[key]["total_s"])
            n_new = good[0][key]["new_tokens"]
            row[key] = {"ttft_ms": first * 1e3, "total_s": total, "tok_s": n_new / total,
                        "decode_ms": (total - first) / max(1, n_new - 1) * 1e3,
                        "prompt_tokens": good[0][key]["prompt_tokens"]}
    if "sample5" in good[0]:
        sample = good[0]["sample5"]
        total = min(t for r in good for t in r["sample5"]["total_s"])
        row["sample5"] = {"total_s": total, "tok_s": sample["rows"] * sample["new_tokens"] / total,
                          "example": sample["example"]}
    return row


def summarize(raw: dict[str, dict[str, list[dict]]], colds: dict[str, list[dict]]) -> dict:
    summary = {}
    for model, engines in raw.items():
        rows = {engine: _row(results) for engine, results in engines.items()}
        good = [c for c in colds.get(model, []) if "first_tweet_s" in c]
        cold = ({"first_tweet_s": min(c["first_tweet_s"] for c in good), "exit_s": min(c["exit_s"] for c in good)}
                if good else {"note": (colds.get(model) or [{"error": "not run"}])[0].get("error", "not run")})
        summary[model] = {"engines": rows, "cold_start": cold}
    return summary


def _first_diff(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token, None when equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check_correctness(raw: dict[str, dict[str, list[dict]]]) -> dict:
    """Greedy ids of every row vs tweetgen-fp32, on both prompts. tweetgen's float variants must be equal; int8
    rows and the peers are reported (random weights have near-tied logits, where float rounding picks a side)."""
    out = {}
    for model, engines in raw.items():
        reference = next((r for r in engines.get(REFERENCE, []) if "short" in r), None)
        if reference is None:
            out[model] = {"note": f"{REFERENCE} did not run: nothing to compare with"}
            continue
        checks = {}
        for engine, results in engines.items():
            result = next((r for r in results if "short" in r), None)
            if engine == REFERENCE or result is None:
                continue
            diffs = {key: _first_diff(result[key]["greedy_ids"], reference[key]["greedy_ids"])
                     for key in ("short", "long") if key in result and key in reference}
            equal = all(d is None for d in diffs.values())
            precision = precision_of(engine)
            if equal:
                verdict = "equal"
            elif precision != "fp32":
                verdict = f"differs ({precision})"
            elif _family(engine) == "tweetgen":
                verdict = "DIFFERENT: fails the check"  # a float variant the runtime ships must decode as fp32 does
            else:
                verdict = "differs (the peer's own float numerics)"
            checks[engine] = {"precision": precision, "equal": equal, "first_diff": diffs, "verdict": verdict}
        out[model] = checks
    return out


def _held_out_texts(path: Path | None) -> list[str] | None:
    if path is not None:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not SHARED_TWEETS.is_file():
        return None
    with SHARED_TWEETS.open(encoding="utf-8", newline="") as file:
        texts = [row["Text"] for row in csv.DictReader(file) if row.get("Text")]
    return texts[-PPL_TEXTS:]


def perplexity_check(models: list[ModelSet], texts_path: Path | None) -> dict:
    """fp32 vs int8 perplexity on held-out texts, for each model with trained weights (random weights say nothing)."""
    trained = [m for m in models if m.trained and (Path(m.onnx) / "model_quantized.onnx").is_file()]
    if not trained:
        return {"note": "no trained model in this run: add --hf DIR (e.g. SmolLM2-135M) or --model exported/NAME"}
    texts = _held_out_texts(texts_path)
    if not texts:
        return {"note": f"no held-out texts: give --ppl-texts FILE ({SHARED_TWEETS} is absent)"}
    from tweetgen.trainer.eval.perplexity import perplexity

    out = {}
    for m in trained:
        if not (Path(m.onnx) / "model.onnx").is_file():  # e.g. the default model ships int8 only
            info = Path(m.onnx) / "tweetgen.json"
            export = json.loads(info.read_text(encoding="utf-8")).get("export") or {} if info.is_file() else {}
            out[m.name] = {"note": "no model.onnx in the folder to compare with; the export's own check: "
                                   + json.dumps(export.get("int8"))}
            continue
        fp32 = perplexity(Path(m.onnx) / "model.onnx", texts).perplexity
        int8 = perplexity(Path(m.onnx) / "model_quantized.onnx", texts).perplexity
        relative = int8 / fp32 - 1
        out[m.name] = {"fp32": fp32, "int8": int8, "relative": relative, "texts": len(texts),
                       "verdict": "within 3%" if relative <= PPL_TOLERANCE else "OVER 3%"}
    return out


def _tok_s(rows: dict, engine: str, key: str = "short") -> float | None:
    row = rows.get(engine, {})
    return row.get(key, {}).get("tok_s") if row.get("status") == "ok" else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _best_fp32_peer(rows: dict) -> str | None:
    """The fastest CPU fp32 row that is not tweetgen's (batch-1 tok/s)."""
    peers = {e: _tok_s(rows, e) for e in rows if precision_of(e) == "fp32" and _family(e) != "tweetgen"
             and "cuda" not in e and _tok_s(rows, e)}
    return max(peers, key=peers.get) if peers else None


def _target_rows(rows: dict) -> list[tuple[str, str]]:
    """(int8 row, fp32 row) pairs the targets are computed for: the default load, and without huge pages when run."""
    return [(f"tweetgen-int8{suffix}", f"tweetgen-fp32{suffix}") for suffix in ("", SMALL_PAGES)
            if suffix == "" or f"tweetgen-int8{suffix}" in rows]


def ratios(summary: dict) -> dict:
    """The issue's targets, as side-by-side ratios (> 1: tweetgen is faster). None where a row is missing."""
    out = {}
    for model, data in summary.items():
        rows = data["engines"]
        best = _best_fp32_peer(rows)
        out[model] = {}
        for int8, fp32 in _target_rows(rows):
            mine = _tok_s(rows, int8)
            sample = rows.get(int8, {}).get("sample5", {})
            out[model].update({
                f"{int8} / llamacpp-q8_0": _ratio(mine, _tok_s(rows, "llamacpp-q8_0")),
                f"{int8} / optimum-int8": _ratio(mine, _tok_s(rows, "optimum-int8")),
                f"{int8} / pytorch-fp32": _ratio(mine, _tok_s(rows, "pytorch-fp32")),
                f"{fp32} / best fp32 peer ({best})": _ratio(_tok_s(rows, fp32), _tok_s(rows, best) if best else None),
                f"{int8} 5x64 sampled: total s": sample.get("total_s"),
                f"{int8} 5x64 sampled: tok/s": sample.get("tok_s"),
                f"{int8} peak RSS MB": rows.get(int8, {}).get("peak_rss_mb"),
            })
        for peer in QUARTER_PEERS:
            out[model][f"{INT4} / {peer}"] = _ratio(_tok_s(rows, INT4), _tok_s(rows, peer))
        out[model]["tweetgen-run cold start to first tweet: s"] = data["cold_start"].get("first_tweet_s")
        out[model].update(_gpu_ratios(rows))
        targets = {row for pair in _target_rows(rows) for row in pair}
        for engine in rows:  # any extra graph the runtime ships (e.g. tweetgen-optimized) against the best peer
            if _family(engine) == "tweetgen" and engine not in targets and not engine.endswith(SMALL_PAGES) \
                    and "cuda" not in engine:
                out[model][f"{engine} / llamacpp-q8_0"] = _ratio(_tok_s(rows, engine), _tok_s(rows, "llamacpp-q8_0"))
    return out


def _gpu_ratios(rows: dict) -> dict:
    """tweetgen on CUDA against PyTorch on CUDA, precision for precision (only the rows that ran)."""
    out = {}
    for precision in ("fp16", "fp32"):
        mine, peer = f"tweetgen-cuda-{precision}", f"pytorch-cuda-{precision}"
        if mine not in rows or peer not in rows:
            continue
        for key, what in (("short", "batch-1"), ("long", "batch-1, 200-token prompt"), ("sample5", "5x64 sampled")):
            out[f"{mine} / {peer}, {what}"] = _ratio(_tok_s(rows, mine, key), _tok_s(rows, peer, key))
    return out


def _round_tok_s(result: dict, key: str = "short") -> float | None:
    """One worker's (one round's) batch-1 tok/s: its fastest repeat."""
    if "error" in result or key not in result:
        return None
    return result[key]["new_tokens"] / min(result[key]["total_s"])


def round_ratios(raw: dict[str, dict[str, list[dict]]], summary: dict) -> dict:
    """The decode ratios of `ratios` round by round: each round runs both rows close together in time, so the
    spread over rounds shows how much of a ratio is the machine's drift. {model: {name: [ratio per round]}}."""
    out = {}
    for model, engines in raw.items():
        best_fp32 = _best_fp32_peer(summary[model]["engines"])
        pairs = {}
        for int8, fp32 in _target_rows(summary[model]["engines"]):
            pairs.update({f"{int8} / llamacpp-q8_0": (int8, "llamacpp-q8_0", "short"),
                          f"{int8} / llamacpp-q8_0, 200-token prompt": (int8, "llamacpp-q8_0", "long"),
                          f"{int8} / optimum-int8": (int8, "optimum-int8", "short"),
                          f"{int8} / pytorch-fp32": (int8, "pytorch-fp32", "short"),
                          f"{fp32} / best fp32 peer ({best_fp32})": (fp32, best_fp32, "short")})
        for peer in QUARTER_PEERS:
            pairs[f"{INT4} / {peer}"] = (INT4, peer, "short")
        out[model] = {}
        for name, (mine, peer, key) in pairs.items():
            rounds = zip(engines.get(mine, []), engines.get(peer, []))
            values = [_ratio(_round_tok_s(a, key), _round_tok_s(b, key)) for a, b in rounds]
            if any(v is not None for v in values):
                out[model][name] = values
    return out


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


TABLE_HEAD = ("| engine | load s | TTFT ms | decode ms/tok | tok/s | 200-tok prompt TTFT ms / tok/s "
              "| 5x64 sampled s / tok/s | peak RSS MB | model MB | MB read a token / floor ms / % of floor "
              "| install MB | greedy = fp32 |")


def _floor(results: dict, model: str, engine: str, decode_ms: float | None) -> str:
    """'MB / floor ms / % of floor' of one row: its bytes a token over the best copy bandwidth measured."""
    floor = results.get("floor") or {}
    read = (floor.get("bytes_per_token") or {}).get(model, {}).get(engine)
    bandwidth = max(floor.get("copy_bandwidth_gbs") or [0])
    if not read or not bandwidth:
        return "-"
    floor_ms = read / (bandwidth * 1e9) * 1e3
    share = f"{floor_ms / decode_ms:.0%}" if decode_ms else "-"
    return f"{read / 1e6:.0f} / {floor_ms:.2f} / {share}"


def worst_rounds(per_round: dict[str, list[float | None]]) -> dict[str, float | None]:
    """Each ratio's worst round (the headline: a lead must hold in every round)."""
    return {name: min((v for v in values if v is not None), default=None) for name, values in per_round.items()}


def print_report(results: dict, out=sys.stdout) -> None:
    env = results["environment"]
    print(f"\n{env['processor']}, {env['cpus']} CPUs, {env['threads']} threads; load average "
          f"{' '.join(f'{x:.2f}' for x in env['load_average_start'])} at the start, "
          f"{' '.join(f'{x:.2f}' for x in env['load_average_end'])} at the end. "
          f"{results['settings']['statistic']}.", file=out)
    installs = results["install_mb"]
    for model, data in results["summary"].items():
        correct = results["correctness"].get(model, {})
        print(f"\n## {model}\n\n{TABLE_HEAD}\n|{'---|' * 12}", file=out)
        skipped = []
        for engine, row in data["engines"].items():
            if row["status"] != "ok":
                skipped.append(f"- {engine}: {row['status']}")
                continue
            short, long, sample = row.get("short", {}), row.get("long", {}), row.get("sample5", {})
            install = installs.get(_family(engine), {}).get("mb")
            verdict = "ref" if engine == REFERENCE else correct.get(engine, {}).get("verdict", "-")
            print(f"| {engine} | {_fmt(row['load_s'], 2)} | {_fmt(short.get('ttft_ms'))} | "
                  f"{_fmt(short.get('decode_ms'))} | {_fmt(short.get('tok_s'))} | {_fmt(long.get('ttft_ms'))} / "
                  f"{_fmt(long.get('tok_s'))} | {_fmt(sample.get('total_s'), 2)} / {_fmt(sample.get('tok_s'))} | "
                  f"{_fmt(row['peak_rss_mb'], 0)} | {_fmt(row['model_mb'], 0)} | "
                  f"{_floor(results, model, engine, short.get('decode_ms'))} | {_fmt(install, 0)} | {verdict} |",
                  file=out)
        if results["gpu"].startswith("not measured"):
            print("| GPU: tweetgen CUDA fp16 / PyTorch CUDA | not measured: no GPU here |" + " |" * 10, file=out)
        for note in results["models"].get(model, {}).get("notes", []):
            print(f"\nnote: {note}", file=out)
        if skipped:
            print("\nnot run:\n" + "\n".join(skipped), file=out)
        print(f"\ncold start (tweetgen-run, process start to first tweet): {data['cold_start']}", file=out)
        print("\nratios (> 1: tweetgen faster):", file=out)
        for name, value in results["ratios"][model].items():
            print(f"- {name}: {_fmt(value, 2)}", file=out)
        per_round = results.get("round_ratios", {}).get(model, {})
        if per_round:
            print("\nheadline: each decode ratio's WORST round [every round] (each round's fastest repeat of each "
                  "row; the overall ratios above take each row's fastest repeat of any round):", file=out)
            for name, worst in worst_rounds(per_round).items():
                print(f"- {name}: {_fmt(worst, 2)} [{', '.join(_fmt(v, 2) for v in per_round[name])}]", file=out)
    floor = results.get("floor")
    if floor:
        print(f"\ncopy bandwidth (floor probe, {results['settings']['threads']} threads, read + written bytes): "
              + " -> ".join(f"{g:.1f}" for g in floor["copy_bandwidth_gbs"]) + " GB/s (start -> end; the floor "
              "uses the higher)", file=out)
    print(f"\ninstalled size (MB, distributions' files; method in benchmarks/sizes.py): "
          + ", ".join(f"{k} {v['mb']:.0f}" + (" (lower bound: missing " + ", ".join(v["missing"]) + ")"
                                                if v["missing"] else "") for k, v in installs.items()), file=out)
    print(f"int8 perplexity check: {results['perplexity']}", file=out)


def write_chart(summary: dict, path: Path) -> Path | None:
    """Bars per model: batch-1 tok/s, 5x64 sampled tok/s, peak RSS. None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    metrics = [("batch-1 greedy tok/s", lambda r: r.get("short", {}).get("tok_s")),
               ("5x64 sampled tok/s", lambda r: r.get("sample5", {}).get("tok_s")),
               ("peak RSS MB", lambda r: r.get("peak_rss_mb"))]
    models = list(summary)
    figure, axes = plt.subplots(len(metrics), len(models), figsize=(5.5 * len(models), 3.2 * len(metrics)),
                                squeeze=False)
    for column, model in enumerate(models):
        rows = {e: r for e, r in summary[model]["engines"].items() if r["status"] == "ok"}
        for line, (title, get) in enumerate(metrics):
            axis = axes[line][column]
            names = [e for e in rows if get(rows[e]) is not None]
            values = [get(rows[e]) for e in names]
            colors = ["tab:orange" if _family(e) == "tweetgen" else "tab:gray" for e in names]
            bars = axis.barh(names, values, color=colors)
            axis.bar_label(bars, fmt="%.0f", fontsize=7)
            axis.invert_yaxis()
            axis.set_title(f"{model}: {title}", fontsize=9)
            axis.tick_params(labelsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


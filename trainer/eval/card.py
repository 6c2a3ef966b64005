"""The evaluation shown: a Markdown section of the model card, eval.json beside it, and a table for the console.

Numbers only, never a tweet: the card is published with the model. The section sits between two HTML comments so
that a later evaluation replaces it instead of adding another.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

START, END = "<!-- tweetgen-eval -->", "<!-- /tweetgen-eval -->"
INSERT_BEFORE = "## How to use"  # where a card without the section gets it (else at the end)
COLUMNS = ("user", "held-out perplexity", "voice: generated", "voice: real (ceiling)", "memorized",
           "distinct-1 gen / real", "distinct-2 gen / real", "chars gen / real", "words gen / real")


def render_eval_section(report: dict[str, Any]) -> str:
    """The `## Evaluation` section (with its markers) of an EvalReport's JSON."""
    voice = report.get("voice") or {}
    lines = [START, "## Evaluation", "",
             f"{report['samples']} tweets generated with `{report['variant']}` (seed {report['seed']}, "
             f"{'prompt ' + json.dumps(report['prompt'], ensure_ascii=False) if report['prompt'] else 'no prompt'}), "
             "measured against real tweets of the same people that the model never saw in training. "
             "Lengths are medians.", "",
             "| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    lines += ["| " + " | ".join(cells) + " |" for cells in _rows(report)]
    lines += ["", *_target_lines(report), "", _lengths_table(report), "", *_fluency_lines(report),
              "- *Voice*: the share of tweets that an author classifier (character 2-5-gram TF-IDF, linear SVM, "
              "trained on the real training tweets) gives to the user they were generated for; on real held-out "
              "tweets it is the ceiling." + (f" Chance: {voice['chance']:.0%}." if voice else ""),
              "- *Memorized*: repeats 8 or more consecutive words of a training tweet, or is a near-duplicate of "
              "one (character 5-gram Jaccard similarity of 0.8 or more).",
              "- *distinct-n*: unique word n-grams / all word n-grams, over as many real held-out tweets as were "
              "generated.", *[f"- {note}" for note in report.get("notes") or []], END]
    return "\n".join(lines)


def _rows(report: dict[str, Any]) -> list[list[str]]:
    """The cells of the per-user table: one row per user, then all users together."""
    voice = report.get("voice") or {}
    rows = [_row(f"@{user}", entry.get("perplexity"), entry.get("voice_generated"), entry.get("voice_real"),
                 (entry.get("memorization") or {}).get("share"), entry.get("generated") or {}, entry["real"])
            for user, entry in report["users"].items()]
    rows.append(_row("**all**", None, voice.get("generated"), voice.get("ceiling"),
                     report["memorization"]["share"], report["generated"], report["real"]))
    return rows


def _row(label: str, perplexity, voice_generated, voice_real, memorized, generated: dict, real: dict) -> list[str]:
    return [label, _num(perplexity, "{:.1f}"), _pct(voice_generated), _pct(voice_real), _pct(memorized, 1),
            _pair(generated.get("distinct_1"), real["distinct_1"]),
            _pair(generated.get("distinct_2"), real["distinct_2"]),
            _pair((generated.get("chars") or {}).get("median"), real["chars"]["median"], "{:.0f}"),
            _pair((generated.get("words") or {}).get("median"), real["words"]["median"], "{:.0f}")]


def _target_lines(report: dict[str, Any]) -> list[str]:
    targets, wanted, voice = report["targets"], report["target_values"], report.get("voice") or {}
    verdict = {True: "met", False: "**missed**", None: "not measured"}
    fraction, ratio = voice.get("fraction"), report.get("distinct_2_ratio")
    return [
        "Targets:", "",
        f"- voice at least {wanted['voice_fraction']:.0%} of the way from chance to the ceiling: "
        f"{_pct(fraction)} — {verdict[targets['voice']]}",
        f"- memorized under {wanted['memorized_below']:.0%}: {_pct(report['memorization']['share'], 1)} "
        f"({report['memorization']['memorized']} of {report['memorization']['checked']}) — "
        f"{verdict[targets['memorization']]}; real held-out tweets: "
        f"{_pct((report.get('real_memorization') or {}).get('share'), 1)} (people repeat their own phrases too)"
        + _unfiltered(report),
        f"- distinct-2 at least {wanted['distinct_2_ratio']:.0%} of the real tweets': {_pct(ratio)} — "
        f"{verdict[targets['distinct_2']]}",
        *_length_target_lines(report, verdict)]


def _length_target_lines(report: dict[str, Any], verdict: dict) -> list[str]:
    """The length and fluency targets, in reports that have them (older eval.json files do not)."""
    targets, wanted, lines = report["targets"], report["target_values"], []
    ratios = report.get("length_ratios")
    if ratios and "length_median" in targets:
        lines += [f"- median length (characters) within {wanted['length_median_within']:.0%} of the real tweets': "
                  f"{_num(ratios['median'], '{:.2f}')}x — {verdict[targets['length_median']]}",
                  f"- 90th percentile of length within {wanted['length_p90_within']:.0%} of the real tweets': "
                  f"{_num(ratios['p90'], '{:.2f}')}x — {verdict[targets['length_p90']]}"]
    if "fluency" in targets:
        judge = report.get("judge") or {}
        lines.append(f"- judge ratio (median perplexity, generated / real) at most "
                     f"{wanted['judge_ratio_at_most']:.2f}: {_num(judge.get('ratio'), '{:.3f}')} — {verdict[targets['fluency']]}")
    return lines


def _fluency_lines(report: dict[str, Any]) -> list[str]:
    """The judge's table (per user for a multi-voice model), and what it measures; nothing without a judge."""
    judge = report.get("judge")
    if not judge:
        return []
    lines = ["| fluency (judge perplexity) | median, generated | median, real | ratio |", "|---|---:|---:|---:|"]
    for label, entry in [*((f"@{u}", e) for u, e in judge["users"].items()), ("**all**", judge)]:
        lines.append(f"| {label} | {_num(entry['generated'], '{:.1f}')} | {_num(entry['real'], '{:.1f}')} | "
                     f"{_num(entry['ratio'], '{:.3f}')} |")
    return [*lines, "",
            f"- *Fluency*: each tweet's perplexity under an independent language model (`{judge['judge']}`), "
            f"{judge['generated_count']} generated and {judge['real_count']} real held-out tweets; the ratio of "
            "the medians is 1.00 when the bot reads as fluent as its people, higher when less.", ""]


def _unfiltered(report: dict[str, Any]) -> str:
    raw = report.get("unfiltered_memorization")
    if not raw:
        return ""
    return (f". These tweets were generated as tweetgen-run does, with the copy index drawing copies again; without "
            f"it (`--allow-copies`) {_pct(raw['share'], 1)} ({raw['memorized']} of {raw['checked']}) were memorized")


def _lengths_table(report: dict[str, Any]) -> str:
    lines = ["| length (all users) | mean | p10 | median | p90 |", "|---|---:|---:|---:|---:|"]
    for unit in ("chars", "words"):
        for side in ("generated", "real"):
            s = report[side][unit]
            lines.append(f"| {unit}, {side} | {s['mean']:.1f} | {s['p10']:.0f} | {s['median']:.0f} | {s['p90']:.0f} |")
    if report.get("lengths"):  # what the length targets compare
        for side, label in (("generated", "every generated tweet"),
                            ("real", "every held-out tweet, users weighted as generated")):
            s = report["lengths"][side]
            lines.append(f"| chars, {label} | {s['mean']:.1f} | {s['p10']:.0f} | {s['median']:.0f} | {s['p90']:.0f} |")
    return "\n".join(lines)


def _num(value, fmt: str = "{:.2f}") -> str:
    return "–" if value is None else fmt.format(value)


def _pct(value, digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}%}"


def _pair(generated, real, fmt: str = "{:.2f}") -> str:
    return f"{_num(generated, fmt)} / {_num(real, fmt)}"


def insert_section(card: str, section: str) -> str:
    """The card with `section` in place of its evaluation section, or inserted before "How to use" (or at the end)."""
    start, end = card.find(START), card.find(END)
    if start != -1 and end > start:
        return card[:start] + section + card[end + len(END):]
    at = card.find("\n" + INSERT_BEFORE)
    if at == -1:
        return card.rstrip("\n") + "\n\n" + section + "\n"
    return card[:at].rstrip("\n") + "\n\n" + section + "\n\n" + card[at + 1:]


def write_eval(folder: str | Path, report) -> Path:
    """Write `<folder>/eval.json` and put the evaluation section into `<folder>/README.md`, each atomically.

    Args:
        report: an EvalReport or its `to_json()`.

    Returns:
        The path of eval.json.
    """
    folder = Path(folder)
    data = report if isinstance(report, dict) else report.to_json()
    path = folder / "eval.json"
    _write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    card_path = folder / "README.md"
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
    _write_atomic(card_path, insert_section(card, render_eval_section(data)))
    return path


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def eval_table(report: dict[str, Any]):
    """The per-user table as a rich Table, for stderr."""
    from rich.table import Table

    table = Table(*COLUMNS, title=f"Evaluation of {report['model']} ({report['samples']} generated tweets)")
    for cells in _rows(report):
        table.add_row(*(cell.replace("**", "") for cell in cells))
    return table

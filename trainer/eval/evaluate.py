"""How good is a model folder? Does it sound like its people, on their real held-out tweets, without copying them?

`evaluate_model` generates `samples` tweets (spread over the voices of a multi-user model) and measures:
  - held-out perplexity per user (tweets the model never saw, scored the way training saw them);
  - voice: an author classifier trained on the real training tweets (tweetgen.trainer.eval.voice), its accuracy on the tweets
    generated for each user beside its accuracy on real held-out tweets (ceiling) and chance (floor);
  - memorization: the share of generated tweets that copy a training tweet (tweetgen.trainer.eval.memorization);
  - diversity (distinct-1/2) and lengths, generated against a same-size sample of real held-out tweets; the length
    targets set every generated tweet against every held-out tweet, each user's weighted as in the generated set;
  - with a judge model (`judge=`), fluency: median per-tweet perplexity, generated / real (tweetgen.trainer.eval.judge).
Targets (the default model's): voice at least 70% of the way from chance to the ceiling, memorization under 2%,
distinct-2 at least 90% of the real tweets', median length within 10% of the real tweets' and p90 within 15%, a judge
ratio of at most 1.25.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tweetgen.trainer.errors import DataError
from tweetgen.trainer.eval.judge import TARGET_RATIO, Judge, JudgeReport, judge_fluency
from tweetgen.trainer.eval.memorization import MemorizationIndex, MemorizationStats
from tweetgen.trainer.eval.textstats import Spread, TextStats, length_ratios
from tweetgen.trainer.eval.voice import VoiceScores, voice_scores

log = logging.getLogger(__name__)
BATCH = 25  # tweets generated per call (one batch decoded together)
PERPLEXITY_TWEETS = 300  # held-out tweets scored per user, at most
TARGET_VOICE_FRACTION = 0.7  # generated voice accuracy: at least this far from chance to the ceiling
TARGET_MEMORIZED = 0.02  # share of generated tweets that copy a training tweet: under this
TARGET_DISTINCT_2 = 0.9  # generated distinct-2: at least this share of the real tweets'
TARGET_MEDIAN_LENGTH = 0.10  # generated median characters: within this share of the real tweets'
TARGET_P90_LENGTH = 0.15  # generated 90th percentile of characters: within this share of the real tweets'


@dataclass(frozen=True)
class UserEval:
    """The measures of one user."""

    perplexity: float | None  # on up to PERPLEXITY_TWEETS held-out tweets; None without any
    perplexity_tokens: int  # tokens scored
    real: TextStats  # held-out tweets, as many as were generated for the user (or all there are)
    generated: TextStats | None = None  # tweets generated with user=...; None for a single-voice model
    memorization: MemorizationStats | None = None  # of those generated tweets
    voice_generated: float | None = None  # share of the generated tweets the classifier gives to this user
    voice_real: float | None = None  # the same on real held-out tweets

    def to_json(self) -> dict[str, Any]:
        return {"perplexity": self.perplexity, "perplexity_tokens": self.perplexity_tokens,
                "real": self.real.to_json(), "generated": self.generated.to_json() if self.generated else None,
                "memorization": self.memorization.to_json() if self.memorization else None,
                "voice_generated": self.voice_generated, "voice_real": self.voice_real}


@dataclass(frozen=True)
class EvalReport:
    """Everything `evaluate_model` measured; `to_json()` is what eval.json holds."""

    model: str  # the model folder
    variant: str  # the ONNX file that generated and was scored
    samples: int  # tweets generated in all
    seed: int
    prompt: str
    users: dict[str, UserEval]
    generated: TextStats  # all generated tweets
    real: TextStats  # a same-size sample of real held-out tweets
    memorization: MemorizationStats  # of all generated tweets
    real_memorization: MemorizationStats  # of the real sample: people repeat themselves too (a baseline)
    voice: VoiceScores | None  # None for a single-voice model (see notes)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each part
    notes: tuple[str, ...] = ()
    # of as many tweets generated again with the same seeds but allow_copies=True; None when the folder ships
    # no copy index (then `memorization` is already that)
    unfiltered_memorization: MemorizationStats | None = None
    judge: JudgeReport | None = None  # fluency, when a judge model was given
    # characters per tweet of every generated tweet, and of every held-out tweet with each user's weighted to count
    # as much as in the generated set: the lengths' targets compare these (a same-size sample's median moves by a
    # few characters from one sample to the next)
    lengths: dict[str, Spread] | None = None

    @property
    def length_ratios(self) -> dict[str, float | None]:
        """Characters per tweet, generated / real: of the median, p10 and p90."""
        if self.lengths is not None:
            return length_ratios(self.lengths["generated"], self.lengths["real"])
        return length_ratios(self.generated.chars, self.real.chars)

    @property
    def distinct_2_ratio(self) -> float | None:
        return self.generated.distinct_2 / self.real.distinct_2 if self.real.distinct_2 else None

    @property
    def targets(self) -> dict[str, bool | None]:
        """Each target of the issue: met (True), missed (False) or not measured (None)."""
        fraction = self.voice.fraction if self.voice else None
        ratio, lengths = self.distinct_2_ratio, self.length_ratios
        fluency = self.judge.overall.ratio if self.judge else None
        return {"voice": None if fraction is None else fraction >= TARGET_VOICE_FRACTION,
                "memorization": self.memorization.share < TARGET_MEMORIZED,
                "distinct_2": None if ratio is None else ratio >= TARGET_DISTINCT_2,
                "length_median": _within(lengths["median"], TARGET_MEDIAN_LENGTH),
                "length_p90": _within(lengths["p90"], TARGET_P90_LENGTH),
                "fluency": None if fluency is None else fluency <= TARGET_RATIO}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1, "model": self.model, "variant": self.variant, "samples": self.samples, "seed": self.seed,
            "prompt": self.prompt, "users": {u: e.to_json() for u, e in self.users.items()},
            "voice": self.voice.to_json() if self.voice else None, "memorization": self.memorization.to_json(),
            "real_memorization": self.real_memorization.to_json(),
            "copy_index": self.unfiltered_memorization is not None,
            "unfiltered_memorization": self.unfiltered_memorization.to_json() if self.unfiltered_memorization
            else None, "generated": self.generated.to_json(), "real": self.real.to_json(),
            "lengths": {k: asdict(v) for k, v in self.lengths.items()} if self.lengths else None,
            "distinct_2_ratio": self.distinct_2_ratio, "length_ratios": self.length_ratios,
            "judge": self.judge.to_json() if self.judge else None, "targets": self.targets,
            "target_values": {"voice_fraction": TARGET_VOICE_FRACTION, "memorized_below": TARGET_MEMORIZED,
                              "distinct_2_ratio": TARGET_DISTINCT_2, "length_median_within": TARGET_MEDIAN_LENGTH,
                              "length_p90_within": TARGET_P90_LENGTH, "judge_ratio_at_most": TARGET_RATIO},
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()}, "notes": list(self.notes)}


def evaluate_model(folder: str | Path, train_texts: dict[str, list[str]], heldout_texts: dict[str, list[str]], *,
                   samples: int = 500, seed: int = 0, prompt: str = "", precision: str = "auto",
                   device: str = "auto", judge=None) -> EvalReport:
    """Generate `samples` tweets with the model folder and measure them against real tweets.

    Args:
        folder: an exported model folder.
        train_texts: user -> the cleaned tweets (no "@user: " prefix) the model was trained on.
        heldout_texts: user -> cleaned tweets it never saw (the validation split).
        samples: tweets to generate in all, spread evenly over the voices of a multi-user model.
        seed: seeds the generation and the real-tweet samples.
        prompt: the start of every generated tweet ("" lets the model begin a tweet of its own).
        precision, device: as for `Generator.load`.
        judge: a `judge.Judge`, or the path of one (a .gguf file or a Hugging Face folder), to measure fluency;
            None: not measured.

    Raises:
        ValueError: samples < 1.
        DataError: no held-out tweets, or the model has voices that heldout_texts does not have.
        JudgeError: the judge path is not a .gguf file or a model folder, or does not load.
    """
    from tweetgen import Generator

    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, not {samples!r}")
    if not any(heldout_texts.values()):
        raise DataError("evaluate_model needs held-out tweets: heldout_texts is empty")
    seconds: dict[str, float] = {}
    if judge is not None and not isinstance(judge, Judge):  # a bad path fails before anything is generated
        judge = _timed(seconds, "judge_load", Judge, judge)
    generator = _timed(seconds, "load", Generator.load, folder, precision=precision, device=device)
    voices = generator.users
    unknown = [u for u in voices if u not in heldout_texts]
    if unknown:
        raise DataError(f"the model's voices {', '.join(unknown)} have no held-out tweets here (known: "
                        f"{', '.join(heldout_texts)}); evaluate with the work folder the model was trained from")
    generated = _timed(seconds, "generate", _generate, generator, voices, samples, seed, prompt)
    rng = np.random.default_rng(seed)
    # as many real tweets per user as were generated for them (a single-voice model: an even share)
    real = {u: _sample(ts, len(generated[u]) if voices else -(-samples // len(heldout_texts)), rng)
            for u, ts in heldout_texts.items()}
    everything = [t for ts in generated.values() for t in ts]
    real_all = _sample([t for ts in real.values() for t in ts], len(everything), rng)
    perplexities = _timed(seconds, "perplexity", _perplexities, generator, heldout_texts)
    voice, notes = None, []
    if len(voices) >= 2:
        voice = _timed(seconds, "voice", voice_scores, train_texts, heldout_texts, generated)
    else:
        notes.append("voice not measured: the model has " + ("one user" if voices else "a single voice"))
    fluency = None
    if judge is not None:
        fluency = _timed(seconds, "judge", judge_fluency, judge, generated, real if voices else {"": real_all})
    memorization, real_memorization = _timed(seconds, "memorization", _memorization, train_texts, generated,
                                             real_all)
    unfiltered = None
    if generator.copy_index is not None:  # what the model writes without the copy check, as a measure of it
        raw = _timed(seconds, "generate_unfiltered", _generate, generator, voices, samples, seed, prompt,
                     allow_copies=True)
        unfiltered = _total(_memorization(train_texts, raw, [])[0].values())
    clock = time.perf_counter()
    entries = {u: UserEval(
        perplexity=perplexities[u][0], perplexity_tokens=perplexities[u][1], real=TextStats.of(real[u]),
        generated=_matched_stats(generated[u], real[u], rng) if voices else None,
        memorization=memorization.get(u) if voices else None,
        voice_generated=voice.per_user_generated.get(u) if voice else None,
        voice_real=voice.per_user_real.get(u) if voice else None) for u in heldout_texts}
    if len(real_all) < len(everything):
        notes.append(f"diversity and lengths compare {len(real_all)} generated tweets with as many real ones: "
                     "there are fewer held-out tweets than generated ones")
    overall = _matched_stats(everything, real_all, rng), TextStats.of(real_all)
    lengths = {"generated": Spread.of([len(t) for t in everything]),
               "real": _real_lengths(heldout_texts, generated if voices else None)}
    seconds["text_stats"] = time.perf_counter() - clock
    report = EvalReport(
        model=str(folder), variant=generator.model_path.name, samples=len(everything), seed=seed, prompt=prompt,
        users=entries, generated=overall[0], real=overall[1], memorization=_total(memorization.values()),
        real_memorization=real_memorization, unfiltered_memorization=unfiltered, voice=voice, seconds=seconds,
        notes=tuple(notes), judge=fluency, lengths=lengths)
    log.info("evaluated %s: %s", folder, json.dumps(report.targets))
    return report


def _generate(generator, voices: list[str], samples: int, seed: int, prompt: str, allow_copies: bool = False
              ) -> dict[str, list[str]]:
    """voice -> its tweets ("" for a single-voice model); batches of BATCH, each with its own derived seed."""
    keys = voices or [""]
    counts = [samples // len(keys) + (i < samples % len(keys)) for i in range(len(keys))]
    out: dict[str, list[str]] = {}
    for k, (voice, count) in enumerate(zip(keys, counts)):
        texts: list[str] = []
        for b, start in enumerate(range(0, count, BATCH)):
            batch_seed = int(np.random.SeedSequence([seed, k, b]).generate_state(1)[0])
            batch = generator.generate(prompt, min(BATCH, count - start), seed=batch_seed, user=voice or None,
                                       max_chars=280, allow_copies=allow_copies)
            texts += [prompt + t for t in batch]
        out[voice] = texts
    return out


def _perplexities(generator, heldout: dict[str, list[str]]) -> dict[str, tuple[float | None, int]]:
    """user -> (perplexity, tokens) on up to PERPLEXITY_TWEETS held-out tweets, each with the user's prefix."""
    from tweetgen.trainer.eval.perplexity import perplexity

    out: dict[str, tuple[float | None, int]] = {}
    for user, texts in heldout.items():
        prefix = generator.folder.users.get(user, "")
        scored = [prefix + t for t in texts[:PERPLEXITY_TWEETS]]
        if not scored:
            out[user] = (None, 0)
            continue
        result = perplexity(generator.model_path, scored, folder=generator.folder.path)
        out[user] = (result.perplexity, result.tokens)
    return out


def _within(ratio: float | None, tolerance: float) -> bool | None:
    return None if ratio is None else abs(ratio - 1.0) <= tolerance


def _memorization(train: dict[str, list[str]], generated: dict[str, list[str]], real: list[str]
                  ) -> tuple[dict[str, MemorizationStats], MemorizationStats]:
    """Per voice for the generated tweets, and for the real held-out sample."""
    index = MemorizationIndex(train)
    return {v: MemorizationStats.of(index, texts) for v, texts in generated.items()}, MemorizationStats.of(index, real)


def _real_lengths(heldout: dict[str, list[str]], generated: dict[str, list[str]] | None) -> Spread:
    """Characters per tweet of every held-out tweet, each user's weighted so that the users count as much as they do
    in the generated set (`generated` None, a single-voice model: every tweet counts once)."""
    values, weights = [], []
    for user, texts in heldout.items():
        share = 1.0 if generated is None else len(generated.get(user, ())) / max(len(texts), 1)
        if share > 0:
            values += [len(t) for t in texts]
            weights += [share] * len(texts)
    return Spread.weighted(values, weights)


def _matched_stats(generated: list[str], real: list[str], rng: np.random.Generator) -> TextStats:
    """Stats of the generated tweets, on no more of them than there are real ones: distinct-n falls with size."""
    return TextStats.of(_sample(generated, len(real), rng))


def _sample(texts: list[str], count: int, rng: np.random.Generator) -> list[str]:
    if count >= len(texts):
        return list(texts)
    return [texts[i] for i in sorted(rng.choice(len(texts), count, replace=False))]


def _total(stats) -> MemorizationStats:
    stats = list(stats)
    return MemorizationStats(*(sum(getattr(s, f) for s in stats)
                               for f in ("checked", "verbatim", "near_duplicate", "memorized")))


def _timed(seconds: dict[str, float], name: str, function, *args, **kwargs):
    clock = time.perf_counter()
    result = function(*args, **kwargs)
    seconds[name] = time.perf_counter() - clock
    log.info("%s: %.1f s", name, seconds[name])
    return result

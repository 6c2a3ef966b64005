"""Diversity and length of a set of tweets, to set generated tweets beside real ones.

distinct-n = unique word n-grams / all word n-grams, over the whole set (the n-grams of one tweet do not cross
into the next). It falls as a set grows, so two sets are compared at the same size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tweetgen.trainer.eval.memorization import words


@dataclass(frozen=True)
class Spread:
    """Summary of a list of numbers."""

    mean: float
    median: float
    p10: float  # 10th percentile
    p90: float  # 90th percentile

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            return cls(0.0, 0.0, 0.0, 0.0)
        array = np.asarray(values, dtype=np.float64)
        p10, median, p90 = np.percentile(array, [10, 50, 90])
        return cls(float(array.mean()), float(median), float(p10), float(p90))

    @classmethod
    def weighted(cls, values: list[float], weights: list[float]) -> Spread:
        """Summary of values that each count as much as their weight (> 0): the mean, and percentiles of the
        weighted distribution (the smallest value whose weighted share at or below it reaches the percentile)."""
        if not values:
            return cls(0.0, 0.0, 0.0, 0.0)
        array, weight = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
        order = np.argsort(array, kind="stable")
        array, weight = array[order], weight[order]
        share = np.cumsum(weight) / weight.sum()
        p10, median, p90 = (float(array[min(int(np.searchsorted(share, q - 1e-12)), len(array) - 1)])
                            for q in (0.1, 0.5, 0.9))
        return cls(float(np.average(array, weights=weight)), median, p10, p90)


@dataclass(frozen=True)
class TextStats:
    """Diversity and length of one set of tweets."""

    count: int  # tweets
    distinct_1: float  # unique words / words
    distinct_2: float  # unique word pairs / word pairs
    chars: Spread  # characters per tweet
    words: Spread  # words per tweet (`memorization.words` tokens)

    @classmethod
    def of(cls, texts: list[str]) -> TextStats:
        tokens = [words(t) for t in texts]
        return cls(count=len(texts), distinct_1=distinct_n(tokens, 1), distinct_2=distinct_n(tokens, 2),
                   chars=Spread.of([len(t) for t in texts]), words=Spread.of([len(ws) for ws in tokens]))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def length_ratios(generated: Spread, real: Spread) -> dict[str, float | None]:
    """generated / real of the median, p10 and p90 (of characters, say): 1.0 is the people's own distribution."""
    return {key: (getattr(generated, key) / getattr(real, key) if getattr(real, key) else None)
            for key in ("median", "p10", "p90")}


def distinct_n(tokenized: list[list[str]], n: int) -> float:
    """Unique n-grams / all n-grams over tokenized texts (0.0 when there is none)."""
    if n < 1:
        raise ValueError(f"n must be 1 or more, not {n}")
    grams = [tuple(ws[i:i + n]) for ws in tokenized for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0

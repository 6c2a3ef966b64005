"""Choosing the next token from logits: pure functions over numpy arrays, with a caller-owned random generator.

The order of the steps is Hugging Face's: repetition penalty, temperature, top-k, top-p, min-p, then a draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. temperature 0 is greedy; top_k 0, top_p 1 and min_p 0 turn those filters off."""

    temperature: float = 1.0  # divides the logits; 0 picks the most likely token
    top_k: int = 50  # keep only the k most likely tokens (0: all)
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches top_p
    repetition_penalty: float = 1.0  # >1 makes tokens already in the prompt or output less likely
    min_p: float = 0.0  # keep only tokens at least min_p times as likely as the likeliest one (after temperature)

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_k, self.top_p, self.repetition_penalty, self.min_p)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def check_sampling(temperature: float, top_k: int, top_p: float, repetition_penalty: float,
                   min_p: float = 0.0) -> None:
    """Raise ValueError naming the first setting outside its allowed range."""
    if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a number >= 0 (0 is greedy), not {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 keeps every token), not {top_k!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), not {top_p!r}")
    if not (isinstance(repetition_penalty, (int, float)) and np.isfinite(repetition_penalty)
            and repetition_penalty > 0):
        raise ValueError(f"repetition_penalty must be a number > 0 (1 is none), not {repetition_penalty!r}")
    if isinstance(min_p, bool) or not (isinstance(min_p, (int, float)) and 0 <= min_p <= 1):
        raise ValueError(f"min_p must be in [0, 1] (0 keeps every token), not {min_p!r}")


def penalize_repeats(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """Make the tokens marked in `seen` less likely (Hugging Face's rule: divide positive logits, multiply negative).

    logits: (B, V) float; seen: (B, V) bool. Returns a new array.
    """
    if penalty == 1.0:
        return logits
    scaled = np.where(logits > 0, logits / penalty, logits * penalty)
    return np.where(seen, scaled, logits)


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> np.ndarray:
    """Pick one token id per row.

    logits: (B, V) float, already penalized. Returns (B,) int64.
    """
    if params.greedy:
        return np.argmax(logits, axis=-1).astype(np.int64)
    batch, vocab = logits.shape
    if 0 < params.top_k < vocab:
        # (B, k) candidates in no order, found on the raw logits (temperature keeps the ranking).
        candidates = top_k_indices(logits, params.top_k)
    elif params.min_p > 0:  # min-p (and any top-p) keep a few of the likeliest tokens: only those are ranked
        candidates, mass = min_p_candidates(logits, params)
        return draw(candidates, np.take_along_axis(logits, candidates, axis=-1), params, rng, mass=mass)
    elif params.top_p < 1.0:  # top-p alone: the nucleus is found without sorting the whole vocabulary
        candidates, mass = nucleus_candidates(logits, params)
        return draw(candidates, np.take_along_axis(logits, candidates, axis=-1), params, rng, mass=mass)
    else:
        candidates = _every_token(batch, vocab)
    return draw(candidates, np.take_along_axis(logits, candidates, axis=-1), params, rng)


def _every_token(batch: int, vocab: int) -> np.ndarray:
    return np.broadcast_to(np.arange(vocab), (batch, vocab))


def min_p_candidates(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray | None]:
    """(B, C) token ids holding every token that min-p keeps in each row (as many for every row: the most any row
    keeps, each row's likeliest), and, when top-p also filters, (B,) the share of each row's probability they hold
    (as nucleus_candidates); None when top-p is off (then the share changes no draw) or the ids are every token.
    After temperature, a token is at least min_p times as likely as the row's likeliest one when its scaled logit is
    at least the row's largest + log(min_p): one comparison finds how many a row keeps."""
    batch, vocab = logits.shape
    scaled = logits.astype(np.float64) / params.temperature
    with np.errstate(divide="ignore", invalid="ignore"):
        top = scaled.max(axis=-1, keepdims=True)
        keep = int((scaled >= top + np.log(params.min_p)).sum(axis=-1).max())
    if not 0 < keep < vocab // 4:  # NaN rows, or most of the vocabulary: every token
        return _every_token(batch, vocab), None
    candidates = np.sort(top_k_indices(logits, keep), axis=-1)  # by id: equal logits rank as in the whole vocabulary
    if params.top_p >= 1.0:
        return candidates, None
    with np.errstate(invalid="ignore"):
        weights = np.exp(scaled - top)
    return candidates, np.take_along_axis(weights, candidates, axis=-1).sum(axis=-1) / weights.sum(axis=-1)


NUCLEUS_BIN = 0.25  # nucleus_candidates: width of a histogram bin, in log-probability (nats)
NUCLEUS_BINS = 128  # bins from each row's likeliest token down; the last one holds everything below


def nucleus_candidates(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray | None]:
    """Each row's likeliest tokens, a few more than hold `top_p` of its probability (as many for every row): (B, C)
    candidates by token id and (B,) the share of each row's probability they hold; or every token and None when
    the nucleus is a large part of the vocabulary (sorting it all then costs about as much).

    Top-p sampling keeps the likeliest tokens until their mass reaches p. Sorting a 50k vocabulary costs ~3 ms a row
    (float64), and the nucleus of a trained model is usually a few hundred tokens. One pass over the row finds how
    many: a histogram of log-probabilities in NUCLEUS_BIN-wide bins, whose masses, summed from the top bin down,
    reach p at some bin; the tokens in the bins so far are the k likeliest (top_k_indices), and they hold the nucleus.
    """
    batch, vocab = logits.shape
    scaled = logits.astype(np.float64) / params.temperature
    with np.errstate(invalid="ignore"):  # inf - inf: such a row is ranked whole
        below = scaled.max(axis=-1, keepdims=True) - scaled  # (B, V) >= 0: how far under the row's likeliest token
    weights = np.exp(-below)
    total = weights.sum(axis=-1)
    if not np.isfinite(total).all():  # a NaN or +inf logit: ranking everything at least draws something
        return _every_token(batch, vocab), None
    bins = np.minimum(below / NUCLEUS_BIN, NUCLEUS_BINS - 1).astype(np.int64) + NUCLEUS_BINS * np.arange(batch)[:, None]
    size = batch * NUCLEUS_BINS
    mass = np.bincount(bins.ravel(), weights.ravel(), size).reshape(batch, NUCLEUS_BINS) / total[:, None]
    counts = np.bincount(bins.ravel(), None, size).reshape(batch, NUCLEUS_BINS)
    reached = np.cumsum(mass, axis=-1) >= params.top_p + 1e-9  # margin: rounding never decides which tokens stay
    last = np.argmax(reached, axis=-1)  # the bin where each row's nucleus ends
    k = int(np.take_along_axis(np.cumsum(counts, axis=-1), last[:, None], axis=-1).max())
    if not reached[:, -1].all() or k > vocab // 4:  # rounding, or a nucleus of most of the vocabulary
        return _every_token(batch, vocab), None
    # by token id: draw ranks equal logits in the given order, and the whole vocabulary gives them by id
    candidates = np.sort(top_k_indices(logits, k), axis=-1)
    share = np.take_along_axis(weights, candidates, axis=-1).sum(axis=-1) / total
    if not (share >= params.top_p + 1e-9).all():  # cannot happen but through rounding: take no chances
        return _every_token(batch, vocab), None
    return candidates, share


def draw(candidates: np.ndarray, values: np.ndarray, params: SamplingParams, rng: np.random.Generator, *,
         ranked: bool = False, mass: np.ndarray | None = None) -> np.ndarray:
    """Pick one of each row's candidate tokens: temperature, top-p, min-p, then a draw (top-k chose the candidates).

    candidates: (B, C) token ids; values: (B, C) their logits. Candidates with equal logits rank in the order they
    are given; `ranked` says they are given largest first already. `mass`: (B,) the share of each row's whole
    probability the candidates hold, when they are only its likeliest tokens (top-p then counts against the whole
    row, not against the candidates: nucleus_candidates); None: the candidates are all there is to draw from (the
    top-k ones, or the vocabulary). Returns (B,) int64.
    """
    batch = candidates.shape[0]
    values = values.astype(np.float64) / params.temperature
    if not ranked:
        order = np.argsort(-values, axis=-1, kind="stable")
        rows = np.arange(batch)[:, None]
        candidates, values = candidates[rows, order], values[rows, order]  # (B, C) most likely first
    probs = np.exp(values - values[:, :1])
    probs /= probs.sum(axis=-1, keepdims=True)
    if mass is not None:
        probs *= mass[:, None]  # shares of the whole row
    if params.top_p < 1.0:
        before = np.cumsum(probs, axis=-1) - probs  # probability mass of the tokens ranked above each one
        probs = np.where(before < params.top_p, probs, 0.0)  # the first token always stays
    if params.min_p > 0:  # relative to each row's likeliest token, the first: it always stays
        probs = np.where(probs >= params.min_p * probs[:, :1], probs, 0.0)
    cumulative = np.cumsum(probs, axis=-1)
    draws = rng.random(batch) * cumulative[:, -1]
    picked = np.minimum((cumulative <= draws[:, None]).sum(axis=-1), cumulative.shape[1] - 1)
    return candidates[np.arange(batch), picked].astype(np.int64)


BLOCK = 64  # top_k_indices: a group of logits per this many


def top_k_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """(B, k) indices of each row's k largest logits (ties: the lower index first), in no set order.
    logits: (B, V) with 0 < k < V.

    Partitioning a whole 50k vocabulary costs ~0.4 ms a row. Instead each row is cut into V // BLOCK groups (group j:
    columns j, j + groups, j + 2 * groups, ...; a strided cut whose maxima numpy takes fast), and the k-th largest
    group maximum is a threshold: the k groups with the largest maxima hold k logits at or above it, so each of the
    row's k largest logits is at or above it too. One comparison over the rows finds those few candidates (usually
    a little over k a row), and sorting only them gives the k largest. A k beyond the number of groups: the k-th
    largest logit as the threshold, ties at it broken the same way.
    """
    batch, vocab = logits.shape
    groups = vocab // BLOCK
    if groups > k:
        maxima = logits[:, :groups * BLOCK].reshape(batch, BLOCK, groups).max(axis=1)  # (B, groups)
        threshold = np.partition(maxima, groups - k, axis=-1)[:, groups - k]  # (B,) the k-th largest maximum
        flat = np.flatnonzero(logits >= threshold[:, None])  # candidates, row by row, by column within a row
        rows, columns = np.divmod(flat, vocab)
        counts = np.bincount(rows, minlength=batch)
        if counts.min() >= k:  # always, unless a row holds NaN
            order = np.lexsort((-logits.reshape(-1)[flat], rows))  # by row, then the largest first (stable)
            starts = np.cumsum(counts) - counts
            return columns[order[starts[:, None] + np.arange(k)]]
    # k too large for the groups: the k-th largest logit is the threshold; those above it, then the lowest-index
    # ones equal to it (argpartition alone takes any of those)
    threshold = np.partition(logits, vocab - k, axis=-1)[:, vocab - k:vocab - k + 1]  # (B, 1)
    above, level = logits > threshold, logits == threshold
    keep = above | (level & (np.cumsum(level, axis=-1) <= k - above.sum(axis=-1, keepdims=True)))
    if (keep.sum(axis=-1) == k).all():  # always, unless a row holds NaN
        return np.flatnonzero(keep).reshape(batch, k) % vocab
    return np.argpartition(logits, vocab - k, axis=-1)[:, vocab - k:]

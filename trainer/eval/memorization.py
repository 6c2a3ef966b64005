"""Does a generated tweet copy a training tweet? An index of the training tweets that answers in microseconds.

A text is memorized when either
  - it repeats 8 or more consecutive words of one training tweet (words: lowercased `words()` tokens), or
  - it is a near-duplicate of one: the Jaccard similarity of their character 5-gram sets (on the normalized
    words) is at least 0.8.

The 8-grams of every training tweet are kept as a sorted array of 64-bit hashes (stable across processes: each
word is hashed with blake2b, then 8 word hashes are combined by a polynomial), so an exported folder could ship
this array for the runtime to refuse copies without the trainer. Near-duplicate candidates are the training tweets
that hold at least 2 of the text's 3 rarest words (any near-duplicate holds most of the words) and have a
similar length; only those are compared character by character.

`generate_fresh` refuses copies at generation time by drawing them again. It lives here, in the trainer: the
runtime never imports the trainer (an app that has the training tweets can use it around any Generator).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from tweetgen.copies import NGRAM_WORDS, ngram_hashes, word_hash, words
from tweetgen.generator import redraw_copies

log = logging.getLogger(__name__)
NEAR_DUPLICATE_JACCARD = 0.8  # character 5-gram Jaccard similarity at or above which two tweets are near-duplicates
CHAR_NGRAM = 5
RARE_WORDS = 3  # a near-duplicate candidate must hold 2 of the text's 3 rarest known words (1 if it has only 1)


@dataclass(frozen=True)
class Match:
    """Why a text counts as memorized (or not)."""

    verbatim: bool  # shares NGRAM_WORDS consecutive words with a training tweet
    near_duplicate: bool  # character 5-gram Jaccard >= NEAR_DUPLICATE_JACCARD with a training tweet
    similarity: float  # the highest Jaccard found among the candidates (0.0 when none)

    @property
    def memorized(self) -> bool:
        return self.verbatim or self.near_duplicate


class MemorizationIndex:
    """The training tweets, indexed to tell whether a text copies one of them (see the module docstring)."""

    def __init__(self, train_texts: list[str] | dict[str, list[str]]) -> None:
        texts = [t for ts in train_texts.values() for t in ts] if isinstance(train_texts, dict) else list(train_texts)
        tokens = [words(t) for t in texts]
        self._normalized = [" ".join(ws) for ws in tokens]
        self._lengths = np.array([len(s) for s in self._normalized], dtype=np.int64)
        self._vocab: dict[str, int] = {}
        for ws in tokens:
            for w in ws:
                self._vocab.setdefault(w, len(self._vocab))
        self._hashes = np.array([word_hash(w) for w in self._vocab], dtype=np.uint64)  # (V,) by word id
        ids = np.fromiter((self._vocab[w] for ws in tokens for w in ws), dtype=np.int64)  # (N,) all words in a row
        tweet_of = np.repeat(np.arange(len(texts)), [len(ws) for ws in tokens])  # (N,) tweet of each word
        # a window of 8 words counts only when it starts and ends in the same tweet
        windows = ngram_hashes(self._hashes[ids])
        same = tweet_of[:len(windows)] == tweet_of[NGRAM_WORDS - 1:]
        self.ngram_hashes = _sorted_unique(windows[same])  # sorted (H,) uint64: what a runtime could ship
        self._build_postings(ids, tweet_of, len(texts))
        log.info("memorization index: %d tweets, %d distinct %d-grams, %d words", len(texts),
                 len(self.ngram_hashes), NGRAM_WORDS, len(self._vocab))

    def __len__(self) -> int:
        return len(self._normalized)

    def _build_postings(self, ids: np.ndarray, tweet_of: np.ndarray, count: int) -> None:
        """word id -> the training tweets holding it, as one CSR array: tweets[offsets[w]:offsets[w + 1]]."""
        pairs = _sorted_unique(ids * max(count, 1) + tweet_of)  # sorted by word, then tweet; each pair once
        word_ids, self._posting_tweets = np.divmod(pairs, max(count, 1))
        self._df = np.bincount(word_ids, minlength=len(self._vocab))  # tweets holding each word
        self._offsets = np.concatenate([[0], np.cumsum(self._df)])

    def match(self, text: str) -> Match:
        """How `text` relates to the training tweets: a shared 8-gram, a near-duplicate, and the best similarity."""
        tokens = words(text)
        known = [self._vocab.get(w) for w in tokens]
        verbatim = any(self._has_ngram(np.array(run, dtype=np.int64)) for run in _known_runs(known))
        similarity = self._best_similarity(" ".join(tokens), [k for k in known if k is not None])
        return Match(verbatim=verbatim, near_duplicate=similarity >= NEAR_DUPLICATE_JACCARD, similarity=similarity)

    def is_memorized(self, text: str) -> bool:
        """True when `text` repeats 8 consecutive words of a training tweet or is a near-duplicate of one."""
        return self.match(text).memorized

    def _has_ngram(self, ids: np.ndarray) -> bool:
        query = ngram_hashes(self._hashes[ids])
        if not len(query) or not len(self.ngram_hashes):
            return False
        found = np.minimum(np.searchsorted(self.ngram_hashes, query), len(self.ngram_hashes) - 1)
        return bool((self.ngram_hashes[found] == query).any())

    def _best_similarity(self, normalized: str, known: list[int]) -> float:
        if not normalized or not known:
            return 0.0
        rarest = sorted(set(known), key=lambda w: self._df[w])[:RARE_WORDS]
        postings = np.concatenate([self._posting_tweets[self._offsets[w]:self._offsets[w + 1]] for w in rarest])
        tweets, counts = np.unique(postings, return_counts=True)
        tweets = tweets[counts >= min(2, len(rarest))]
        # Jaccard >= J needs the smaller 5-gram set to be at least J times the larger one: lengths alike
        low = len(normalized) * NEAR_DUPLICATE_JACCARD - CHAR_NGRAM
        high = len(normalized) / NEAR_DUPLICATE_JACCARD + CHAR_NGRAM
        lengths = self._lengths[tweets]
        tweets = tweets[(lengths >= low) & (lengths <= high)]
        grams = _char_ngrams(normalized)
        best = 0.0
        for tweet in tweets.tolist():
            other = _char_ngrams(self._normalized[tweet])
            best = max(best, len(grams & other) / len(grams | other))
            if best == 1.0:
                break
        return best


@dataclass(frozen=True)
class MemorizationStats:
    """How many texts of a set copy a training tweet, by kind (a text can be both kinds)."""

    checked: int  # texts looked at
    verbatim: int  # sharing 8 consecutive words with a training tweet
    near_duplicate: int  # character 5-gram Jaccard >= 0.8 with a training tweet
    memorized: int  # either

    @property
    def share(self) -> float:
        return self.memorized / self.checked if self.checked else 0.0

    @classmethod
    def of(cls, index: MemorizationIndex, texts: list[str]) -> MemorizationStats:
        matches = [index.match(t) for t in texts]
        return cls(checked=len(texts), verbatim=sum(m.verbatim for m in matches),
                   near_duplicate=sum(m.near_duplicate for m in matches), memorized=sum(m.memorized for m in matches))

    def to_json(self) -> dict[str, Any]:
        return {"checked": self.checked, "verbatim": self.verbatim, "near_duplicate": self.near_duplicate,
                "memorized": self.memorized, "share": self.share}


def generate_fresh(generator, index: MemorizationIndex, prompt: str, n: int = 1, *, seed: int | None = None,
                   max_attempts: int = 5, **kwargs: Any) -> list[str]:
    """`generator.generate(prompt, n, seed=seed, **kwargs)`, with memorized outputs generated again.

    Each retry draws only as many texts as are still memorized, with a seed derived from `seed` and the attempt.

    Args:
        generator: a runtime Generator (or anything with its `generate`).
        index: the training tweets' MemorizationIndex.
        max_attempts: generations in all, the first included; outputs still memorized after them are dropped.
        kwargs: any other argument of Generator.generate (user, temperature, max_chars, ...).

    Returns:
        Up to n texts, none memorized; fewer than n when max_attempts ran out (logged).
    """
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an integer >= 1, not {max_attempts!r}")
    def draw(count: int, draw_seed: int | None) -> list[str]:
        return generator.generate(prompt, count, seed=draw_seed, **kwargs)

    fresh, dropped = redraw_copies(draw, draw(n, seed), index.is_memorized, n, seed, max_attempts)
    if dropped:
        log.warning("%d of %d texts still copied a training tweet after %d attempts: dropped", dropped, n,
                    max_attempts)
    return fresh


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy 2's hash-based np.unique is several times slower on millions of integers)."""
    values = np.sort(values)
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if len(values) else values


def _known_runs(known: list[int | None]) -> list[list[int]]:
    """The stretches of 8 or more words that all occur in training (None marks an unknown word: it breaks every
    8-gram that holds it)."""
    runs, current = [], []
    for k in known:
        if k is None:
            runs.append(current)
            current = []
        else:
            current.append(k)
    return [r for r in runs + [current] if len(r) >= NGRAM_WORDS]


def _char_ngrams(text: str) -> set[str]:
    if len(text) <= CHAR_NGRAM:
        return {text}
    return {text[i:i + CHAR_NGRAM] for i in range(len(text) - CHAR_NGRAM + 1)}

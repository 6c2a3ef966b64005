"""Telling a copy of a training tweet without the training tweets: a model folder may ship `copies.bin`.

A text copies a training tweet when it repeats NGRAM_WORDS (8) consecutive words of one (words: `words()`,
lowercased). The export hashes every 8-word window of the training tweets (each word with blake2b, the 8 word hashes
combined by a polynomial mod 2**64) and writes the top 32 bits of each, sorted and unique, as little-endian uint32:
about 4 bytes per distinct window (1M windows for 150k tweets: 4 MB), and no tweet can be read back from it. A
32-bit key matches a window it was not made from with odds of (windows / 2**32) per window looked up: for 1M windows
and a 30-word tweet, about 0.5%, and such a tweet is only drawn again.

The trainer's memorization measure (tweetgen.trainer.eval.memorization) uses the same words and hashes.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

FILE = "copies.bin"
NGRAM_WORDS = 8
_WORD = re.compile(r"[\w@#']+")
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant of the polynomial hash
_EMPTY = np.zeros(0, dtype=np.uint64)


def words(text: str) -> list[str]:
    """Lowercased word tokens: letters, digits, @names, #tags and apostrophes; punctuation and emoji dropped."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def word_hash(word: str) -> int:
    """A 64-bit hash of a word, the same in every process."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def ngram_hashes(hashes: np.ndarray) -> np.ndarray:
    """The hash of every run of NGRAM_WORDS consecutive words. hashes: (W,) uint64 word hashes -> (W - 7,)."""
    count = len(hashes) - NGRAM_WORDS + 1
    if count <= 0:
        return _EMPTY
    out = np.zeros(count, dtype=np.uint64)
    for k in range(NGRAM_WORDS):  # uint64 arithmetic wraps around: a polynomial hash mod 2**64
        out = out * _MULTIPLIER + hashes[k:k + count]
    return out


def keys_of(hashes: np.ndarray) -> np.ndarray:
    """The stored form of 8-word window hashes: their top 32 bits, sorted and unique."""
    return np.unique((np.asarray(hashes, dtype=np.uint64) >> np.uint64(32)).astype(np.uint32))


class CopyIndex:
    """The 8-word windows of a model's training tweets, as 32-bit keys (see the module docstring)."""

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = np.asarray(keys, dtype=np.uint32)
        if len(self.keys) > 1 and not (self.keys[1:] > self.keys[:-1]).all():
            raise ValueError("copy index keys must be sorted and unique")

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def load(cls, path: str | Path) -> CopyIndex:
        """Read a copies.bin (raises OSError when it cannot be read, ValueError when it is not one)."""
        data = Path(path).read_bytes()
        if len(data) % 4:
            raise ValueError(f"{path} is not a copy index: its size is not a multiple of 4 bytes")
        return cls(np.frombuffer(data, dtype="<u4"))

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.keys.astype("<u4").tobytes())

    @classmethod
    def of_texts(cls, texts: list[str]) -> CopyIndex:
        """The index of a set of tweets (windows never span two tweets)."""
        parts = [ngram_hashes(np.array([word_hash(w) for w in words(t)], dtype=np.uint64)) for t in texts]
        return cls(keys_of(np.concatenate(parts)) if parts else np.zeros(0, np.uint32))

    def copies(self, text: str) -> bool:
        """True when `text` holds 8 consecutive words that some training tweet holds too."""
        tokens = words(text)
        if len(tokens) < NGRAM_WORDS or not len(self.keys):
            return False
        hashes = np.fromiter((word_hash(w) for w in tokens), dtype=np.uint64, count=len(tokens))
        query = (ngram_hashes(hashes) >> np.uint64(32)).astype(np.uint32)
        found = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        return bool((self.keys[found] == query).any())

"""The training set: cleaned tweets per user, split by tweet, balanced across users, optionally tagged by user.

Training text format (what the training stage tokenizes): every tweet becomes

    prefix + text + eos

where `prefix` is `user_prefix(user)` = "@NAME: " when tweets are tagged with their user (else "") and `eos` is the
tokenizer's end-of-text token, `<|endoftext|>` for GPT-2; `join_tweets` concatenates them in that form. At run
time, asking for one user's voice means prepending exactly `user_prefix(user)` to the prompt.

The split is made per user, by tweet, with a seeded RNG, so validation holds each user's share of their own tweets.
Only the train split is balanced: "upsample" repeats a small user's tweets (at most `max_repeat` times each)
toward the largest user's count, "cap" samples every user down to the smallest user's count, "none" leaves it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tweetgen.trainer.data import cache
from tweetgen.trainer.errors import DataError

if TYPE_CHECKING:
    import datasets

EOS = "<|endoftext|>"
BALANCE_MODES = ("upsample", "cap", "none")


@dataclasses.dataclass(frozen=True)
class DatasetOptions:
    """How the cleaned tweets become the training set."""

    tag_users: bool = False  # prefix each tweet with "@NAME: " so the model learns each voice apart
    validation_fraction: float = 0.1  # share of each user's tweets held out for validation
    seed: int = 0  # seeds the split and the balancing
    balance: str = "upsample"  # across users in train: "upsample", "cap" or "none"
    max_repeat: int = 4  # upsample: the most times one tweet may appear in train

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), not {self.validation_fraction}")
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"balance must be one of {', '.join(BALANCE_MODES)}, not {self.balance!r}")
        if self.max_repeat < 1:
            raise ValueError(f"max_repeat must be 1 or more, not {self.max_repeat}")


def user_prefix(name: str) -> str:
    """The prefix that tags a tweet (in training) or a prompt (at run time) with its user's voice."""
    return f"@{name}: "


def join_tweets(texts: Iterable[str], eos: str = EOS) -> str:
    """The training text: each tweet followed by the end-of-text token."""
    return "".join(f"{text}{eos}" for text in texts)


def save_clean(workdir: Path, texts: dict[str, list[str]]) -> None:
    """Write each user's cleaned tweets to `<workdir>/clean/<user>.jsonl` as `{"user": ..., "text": ...}` lines."""
    for user, user_texts in texts.items():
        cache.write_jsonl(workdir / "clean" / f"{user}.jsonl", ({"user": user, "text": t} for t in user_texts))


def load_clean(workdir: Path, users: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Read back what `save_clean` wrote: every user in `<workdir>/clean/`, or only `users`."""
    folder = workdir / "clean"
    names = list(users) if users is not None else sorted(p.stem for p in folder.glob("*.jsonl"))
    missing = [n for n in names if not (folder / f"{n}.jsonl").exists()]
    if missing or not names:
        raise DataError(f"{folder}: no cleaned tweets for {', '.join(missing) or 'any user'}; "
                        "run `tweetgen-train clean` first")
    return {n: [row["text"] for row in cache.read_jsonl(folder / f"{n}.jsonl")] for n in names}


def split_user(texts: list[str], fraction: float, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Shuffle one user's tweets and hold out `fraction` of them (at least one when there are two or more)."""
    order = rng.permutation(len(texts))
    n_val = 0 if len(texts) < 2 or fraction == 0 else max(1, round(len(texts) * fraction))
    return [texts[i] for i in order[n_val:]], [texts[i] for i in order[:n_val]]


def balance(train: dict[str, list[str]], mode: str, rng: np.random.Generator, max_repeat: int = 4
            ) -> dict[str, list[str]]:
    """Give each user a comparable share of the train split (see the module docstring for the modes)."""
    sizes = [len(t) for t in train.values() if t]
    if mode == "none" or len(sizes) < 2:
        return train
    out = {}
    for user, texts in train.items():
        if mode == "cap":
            out[user] = [texts[i] for i in sorted(rng.choice(len(texts), min(sizes), replace=False))]
            continue
        target = min(max(sizes), len(texts) * max_repeat)
        whole, extra = divmod(target, len(texts))
        out[user] = texts * whole + [texts[i] for i in sorted(rng.choice(len(texts), extra, replace=False))]
    return out


@dataclasses.dataclass(frozen=True)
class Split:
    """The cleaned tweets split and balanced for one training config, untagged: rows are (user, text) pairs in the
    order the dataset shows them (train shuffled; validation by user)."""

    train_rows: list[tuple[str, str]]
    validation_rows: list[tuple[str, str]]
    tag_users: bool  # the dataset's text starts with user_prefix(user)

    def train_texts(self) -> dict[str, list[str]]:
        """user -> their training tweets, each once (balancing repeats some), untagged."""
        return _by_user(self.train_rows, unique=True)

    def validation_texts(self) -> dict[str, list[str]]:
        """user -> their held-out tweets, untagged."""
        return _by_user(self.validation_rows, unique=False)

    def tagged(self, rows: list[tuple[str, str]]) -> list[str]:
        """The texts of `rows` as the model sees them (with the user's prefix when tweets are tagged)."""
        return [user_prefix(u) + t for u, t in rows] if self.tag_users else [t for _, t in rows]

    def dataset(self) -> datasets.DatasetDict:
        """The "train" and "validation" splits: one row per tweet, columns "text" (prefix + tweet) and "user"."""
        import datasets  # heavy: only the trainer's dataset step needs it

        features = datasets.Features({"text": datasets.Value("string"), "user": datasets.Value("string")})
        return datasets.DatasetDict({
            split: datasets.Dataset.from_dict({"text": self.tagged(rows), "user": [u for u, _ in rows]},
                                              features=features)
            for split, rows in (("train", self.train_rows), ("validation", self.validation_rows))})


def split_tweets(texts: dict[str, list[str]], options: DatasetOptions = DatasetOptions()) -> Split:
    """Split each user's tweets, balance the train split, shuffle it (see the module docstring).

    Raises:
        DataError: no tweets at all.
    """
    if not any(texts.values()):
        raise DataError("no tweets to build a dataset from; run `tweetgen-train clean` and check its counts")
    rng = np.random.default_rng(options.seed)
    train, validation = {}, {}
    for user, user_texts in texts.items():
        train[user], validation[user] = split_user(user_texts, options.validation_fraction, rng)
    train = balance(train, options.balance, rng, options.max_repeat)
    train_rows = [(u, t) for u, ts in train.items() for t in ts]
    train_rows = [train_rows[i] for i in rng.permutation(len(train_rows))]
    return Split(train_rows=train_rows, validation_rows=[(u, t) for u, ts in validation.items() for t in ts],
                 tag_users=options.tag_users)


def build_dataset(texts: dict[str, list[str]], options: DatasetOptions = DatasetOptions()
                  ) -> datasets.DatasetDict:
    """The training set of `split_tweets(texts, options)`."""
    return split_tweets(texts, options).dataset()


def _by_user(rows: list[tuple[str, str]], *, unique: bool) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for user, text in rows:
        out.setdefault(user, []).append(text)
    return {u: list(dict.fromkeys(ts)) for u, ts in out.items()} if unique else out

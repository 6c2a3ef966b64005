"""The training set: prefix, join, split by tweet with a seed, balancing, tags, and the clean/ files."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from tweetgen.trainer.data.dataset import (DatasetOptions, balance, build_dataset, join_tweets, load_clean, save_clean, split_user,
                             user_prefix)
from tweetgen.trainer.errors import DataError


def texts(user: str, n: int) -> list[str]:
    return [f"{user} tweet {i}" for i in range(n)]


def test_prefix_and_join():
    assert user_prefix("dril") == "@dril: "
    assert join_tweets(["a b", "c"]) == "a b<|endoftext|>c<|endoftext|>"
    assert join_tweets(["x"], eos="</s>") == "x</s>"


def test_split_is_by_tweet_seeded_and_disjoint():
    data = texts("a", 100)
    train, val = split_user(data, 0.1, np.random.default_rng(3))
    assert len(val) == 10 and sorted(train + val) == sorted(data)
    assert split_user(data, 0.1, np.random.default_rng(3)) == (train, val)
    assert split_user(data, 0.1, np.random.default_rng(4)) != (train, val)
    assert split_user(["only"], 0.1, np.random.default_rng(0)) == (["only"], [])
    assert len(split_user(texts("b", 3), 0.1, np.random.default_rng(0))[1]) == 1


def test_balance_modes():
    rng = np.random.default_rng(0)
    train = {"big": texts("big", 100), "small": texts("small", 10), "tiny": texts("tiny", 30)}
    up = balance(train, "upsample", rng, max_repeat=4)
    assert {u: len(t) for u, t in up.items()} == {"big": 100, "small": 40, "tiny": 100}
    assert collections.Counter(up["small"]).most_common(1)[0][1] == 4 and set(up["small"]) == set(train["small"])
    cap = balance(train, "cap", rng)
    assert {u: len(t) for u, t in cap.items()} == {"big": 10, "small": 10, "tiny": 10}
    assert set(cap["big"]) <= set(train["big"])
    assert balance(train, "none", rng) == train
    assert balance({"one": texts("one", 5)}, "upsample", rng) == {"one": texts("one", 5)}


def test_build_dataset_tags_balances_train_only_and_is_seeded():
    pytest.importorskip("datasets")  # build_dataset returns a datasets.DatasetDict
    data = {"alice": texts("alice", 200), "bob": texts("bob", 20)}
    ds = build_dataset(data, DatasetOptions(tag_users=True, seed=1))
    assert set(ds) == {"train", "validation"} and ds["train"].column_names == ["text", "user"]
    train_users = collections.Counter(ds["train"]["user"])
    val_users = collections.Counter(ds["validation"]["user"])
    assert val_users == {"alice": 20, "bob": 2}  # validation keeps each user's own share
    assert train_users == {"alice": 180, "bob": 72}  # bob up-sampled 4x
    assert all(t.startswith(user_prefix(u)) for t, u in zip(ds["train"]["text"], ds["train"]["user"]))
    val = {t.removeprefix(user_prefix(u)) for t, u in zip(ds["validation"]["text"], ds["validation"]["user"])}
    train = {t.removeprefix(user_prefix(u)) for t, u in zip(ds["train"]["text"], ds["train"]["user"])}
    assert not val & train  # no tweet in both splits
    again = build_dataset(data, DatasetOptions(tag_users=True, seed=1))
    assert again["train"]["text"] == ds["train"]["text"]
    untagged = build_dataset(data, DatasetOptions(seed=1, balance="none"))
    assert not any(t.startswith("@") for t in untagged["train"]["text"]) and untagged["train"].num_rows == 198


def test_build_dataset_errors():
    with pytest.raises(DataError, match="no tweets"):
        build_dataset({"a": []})
    with pytest.raises(ValueError, match="balance"):
        DatasetOptions(balance="equal")
    with pytest.raises(ValueError, match="validation_fraction"):
        DatasetOptions(validation_fraction=1.0)


def test_save_and_load_clean(tmp_path):
    save_clean(tmp_path, {"a": ["x y z", "line\nbreak"], "b": ["w"]})
    assert (tmp_path / "clean" / "a.jsonl").read_text().count("\n") == 2
    assert load_clean(tmp_path) == {"a": ["x y z", "line\nbreak"], "b": ["w"]}
    assert load_clean(tmp_path, ["b"]) == {"b": ["w"]}
    with pytest.raises(DataError, match="no cleaned tweets for c"):
        load_clean(tmp_path, ["c"])

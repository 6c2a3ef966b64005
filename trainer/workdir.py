"""The work folder (`--workdir`): its layout is known here and nowhere else in the pipeline.

    raw/<user>.jsonl        fetched tweets, one cache per user (tweetgen.trainer.data.cache)
    clean/<user>.jsonl      cleaned tweets (tweetgen.trainer.data.dataset.save_clean)
    stats.json              the last clean's per-user counts and options
    runs/<name>/            a training run: checkpoints/, model/, train_config.json, metrics.json, loss.png

A `WorkDir` reads stats.json, a run's train_config.json and metrics.json, and builds a config's split, each once;
the stages get what they need from it (texts, configs, paths) and never open the work folder themselves.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any

from tweetgen.errors import TweetgenError
from tweetgen.trainer.data.dataset import DatasetOptions, Split, load_clean, split_tweets
from tweetgen.trainer.train.config import TrainConfig

STATS = "stats.json"
RUNS = "runs"
TRAIN_CONFIG = "train_config.json"
METRICS = "metrics.json"


class WorkDir:
    """One work folder, read lazily and at most once per file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._configs: dict[str, TrainConfig] = {}
        self._splits: dict[str, Split] = {}

    def run_dir(self, name: str) -> Path:
        return self.path / RUNS / name

    @cached_property
    def users(self) -> dict[str, dict[str, int]]:
        """The users of the last `clean`, with their counts (stats.json)."""
        path = self.path / STATS
        if not path.is_file():
            raise TweetgenError(f"{self.path} has no cleaned tweets (no {STATS}): give SOURCES, or run "
                                "`tweetgen-train clean SOURCES --workdir DIR` first")
        data = _read_json(path)
        users = data.get("users")
        if not isinstance(users, dict) or not all(isinstance(c, dict) for c in users.values()):
            raise TweetgenError(f"{path} has no per-user counts (a \"users\" object); run `tweetgen-train clean` "
                                "again to rewrite it")
        return users

    def tagging(self, config: TrainConfig) -> bool:
        """Tag tweets with their user when asked, or by default when there are several users."""
        return len(self.users) > 1 if config.tag_users is None else config.tag_users

    def run_config(self, name: str) -> TrainConfig:
        """The resolved TrainConfig of the finished or running run `name` (its train_config.json)."""
        if name not in self._configs:
            path = self.run_dir(name) / TRAIN_CONFIG
            if not path.is_file():
                raise TweetgenError(f"{path} is missing: give the --name of a trained run, or leave --name out")
            try:
                self._configs[name] = TrainConfig(**_read_json(path))
            except TypeError as exc:
                raise TweetgenError(f"{path} is not a training config this tweetgen reads: {exc}") from None
        return self._configs[name]

    def has_run(self, name: str) -> bool:
        return (self.run_dir(name) / TRAIN_CONFIG).is_file()

    def metrics(self, name: str) -> dict[str, Any]:
        path = self.run_dir(name) / METRICS
        if not path.is_file():
            raise TweetgenError(f"{self.run_dir(name)} holds no finished training run: run `tweetgen-train train` "
                                "first")
        return _read_json(path)

    def split(self, config: TrainConfig) -> Split:
        """The cleaned tweets split as `config` splits them; built once per config."""
        key = json.dumps(asdict(config), sort_keys=True)
        if key not in self._splits:
            texts = load_clean(self.path, list(self.users))
            options = DatasetOptions(tag_users=self.tagging(config), validation_fraction=config.validation_fraction,
                                     seed=config.seed, balance=config.balance)
            self._splits[key] = split_tweets(texts, options)
        return self._splits[key]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TweetgenError(f"cannot read {path}: {exc}; it may be damaged (run the stage that writes it again)"
                            ) from None
    if not isinstance(data, dict):
        raise TweetgenError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data

"""The work folder (`--workdir`): its layout is known here and nowhere else in the pipeline.

    raw/<user>.jsonl        fetched tweets, one cache per user (tweetgen.trainer.data.cache)
    clean/<user>.jsonl      cleaned tweets (tweetgen.trainer.data.dataset.save_clean)
    stats.json              the last clean's per-user counts and options
    runs/<name>/            a training run: checkpoints/, model/, train_config.json, metrics.json, loss.png

A `WorkDir` reads stats.json, a run's train_config.json and metrics.json, and builds a config's split, each once;
the stages get what they need from it (texts, configs, paths) and never open the work folder themselves.

One command at a time writes to a work folder: `lock` takes an OS lock on `.lock` in it (exclusive to write, shared
to read), which the OS releases when the process ends, however it ends. A second command refuses at once, naming the
process that holds the folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any

from tweetgen.errors import TweetgenError
from tweetgen.trainer.data.dataset import DatasetOptions, Split, load_clean, split_tweets
from tweetgen.trainer.train.config import TrainConfig

LOCK = ".lock"
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


@contextmanager
def lock(path: str | Path, *, shared: bool = False) -> Iterator[None]:
    """Hold the work folder `path` (made if missing) for this process: exclusively to write, shared to read.

    Raises:
        TweetgenError: another process holds it in a way that conflicts; nothing was done.
    """
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock (documented in the README)
        yield
        return
    folder = Path(path)
    if (shared and not folder.is_dir()) or int(os.environ.get("LOCAL_RANK", "0")) != 0:
        # nothing there to protect (the stage says what is missing); or a torchrun worker, whose launcher's first
        # process holds the folder for all of them
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise TweetgenError(f"another tweetgen-train (pid {holder}) is using the work folder {folder}; wait for "
                                "it to end, or give this command another --workdir") from None
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock; so does the process's end


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TweetgenError(f"cannot read {path}: {exc}; it may be damaged (run the stage that writes it again)"
                            ) from None
    if not isinstance(data, dict):
        raise TweetgenError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data

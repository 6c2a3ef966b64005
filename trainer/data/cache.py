"""The workdir's files: raw tweets per user (`raw/<user>.jsonl`) and which sources are already in them.

Every file is written to a temporary file beside it and moved into place with `os.replace`, so an interrupted run
leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tweetgen.trainer.errors import DataError
from tweetgen.trainer.data.records import Tweet

SOURCES_INDEX = "sources.json"  # in raw/: fingerprint of each source already cached -> the users it gave
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file and `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write one JSON object a line, atomically."""
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a bad line is a DataError naming the file and the line."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {number} column {e.colno} is not JSON: {e.msg}") from None
    return rows


def raw_path(workdir: Path, user: str) -> Path:
    """Where a user's raw tweets are cached."""
    return workdir / "raw" / f"{user}.jsonl"


def load_raw(workdir: Path, user: str) -> list[Tweet]:
    """The user's cached raw tweets, or an empty list when nothing is cached."""
    path = raw_path(workdir, user)
    return [Tweet.from_json(row) for row in read_jsonl(path)] if path.exists() else []


def merge_raw(workdir: Path, user: str, tweets: Iterable[Tweet]) -> int:
    """Add `tweets` to the user's cache, keeping each tweet id once; returns how many the cache now holds."""
    merged = {t.id: t for t in load_raw(workdir, user)}
    for tweet in tweets:
        merged.setdefault(tweet.id, tweet)
    write_jsonl(raw_path(workdir, user), (t.to_json() for t in merged.values()))
    return len(merged)


def load_index(workdir: Path) -> dict[str, list[str]]:
    """Fingerprints of the sources already cached, each with the users it gave."""
    path = workdir / "raw" / SOURCES_INDEX
    if not path.exists():
        return {}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # a damaged index only costs a re-read of the sources
    return index if isinstance(index, dict) else {}


def record_source(workdir: Path, fingerprint: str, users: list[str]) -> None:
    """Remember that the source with this fingerprint is cached and gave `users`."""
    index = load_index(workdir)
    index[fingerprint] = users
    write_json(workdir / "raw" / SOURCES_INDEX, index)

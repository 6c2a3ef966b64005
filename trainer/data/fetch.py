"""Fill the workdir's cache from every source, reading or downloading only what is not cached yet.

Each source has a fingerprint (a path with its files' sizes and times, or an X username); `raw/sources.json`
remembers which fingerprints are cached and which users they gave, so a second run reads nothing. An X API download
keeps its progress in `raw/<user>.partial.json` after every page, so an interrupted one resumes at the next page.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tweetgen.trainer.data import cache
from tweetgen.trainer.errors import DataError
from tweetgen.trainer.data.records import Tweet, check_user_name
from tweetgen.trainer.data.sources import archive, files, xapi

log = logging.getLogger(__name__)

KINDS = ("archive", "user", "file")


@dataclasses.dataclass(frozen=True)
class Source:
    """One place tweets come from, as the command line named it."""

    kind: str  # "archive" (zip, folder or .js), "user" (X API) or "file" (CSV, JSONL, JSON, TXT)
    value: str  # the path, or the X username
    name: str | None = None  # the user to file its tweets under, instead of the one the source gives
    text_column: str | None = None  # files: the column holding the text, instead of guessing
    user_column: str | None = None  # files: the column holding the user, instead of guessing

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Source kind {self.kind!r} is not one of {KINDS}")


def fetch(sources: list[Source], workdir: Path, *, report: xapi.Report | None = None,
          client_factory: Callable[..., xapi.XApiClient] = xapi.XApiClient.from_env,
          client_options: dict[str, Any] | None = None) -> dict[str, list[Tweet]]:
    """Make sure every source is cached and return each user's raw tweets, in the order users first appear.

    Args:
        sources: what to read; several sources may give the same user (their tweets are merged by id).
        workdir: the cache lives in `workdir/raw/`.
        report: receives progress lines (downloads, rate-limit waits).
        client_factory: builds the X API client (tests pass a factory pointed at a fake server).
        client_options: more keyword arguments for it (max_wait, deadline: see XApiClient).

    Raises:
        DataError: a source cannot be read (ArchiveError, XApiError and file errors are DataErrors).
    """
    if not sources:
        raise DataError("no sources: give at least one --archive PATH, --user NAME or --file PATH")
    users: dict[str, None] = {}
    client: xapi.XApiClient | None = None
    for source in sources:
        fingerprint = _fingerprint(source)
        cached = cache.load_index(workdir).get(fingerprint)
        if cached is not None and all(cache.raw_path(workdir, u).exists() for u in cached):
            log.info("%s %s: already cached (%s)", source.kind, source.value, ", ".join(cached))
            users.update(dict.fromkeys(cached))
            continue
        if source.kind == "user":
            client = client or client_factory(report=report, **(client_options or {}))
            user, tweets = download_user(source.value, workdir, client, name=source.name, report=report)
            got = {user: tweets}
        else:
            got = _read_local(source)
            for user, tweets in got.items():
                total = cache.merge_raw(workdir, user, tweets)
                log.info("%s: %d tweets from %s (%d cached)", user, len(tweets), source.value, total)
        cache.record_source(workdir, fingerprint, list(got))
        users.update(dict.fromkeys(got))
    return {user: cache.load_raw(workdir, user) for user in users}


def _read_local(source: Source) -> dict[str, list[Tweet]]:
    path = Path(source.value).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    is_js = path.suffix.lower() in (".js", ".zip") or path.is_dir()
    if source.kind == "archive" or is_js:
        user, tweets = archive.read_archive(path, name=source.name)
        return {user: tweets}
    return files.read_file(path, name=source.name, text_column=source.text_column, user_column=source.user_column)


def _fingerprint(source: Source) -> str:
    options = f"{source.name}|{source.text_column}|{source.user_column}"
    if source.kind == "user":
        return f"user:{source.value.lower()}|{options}"
    path = Path(source.value).expanduser().resolve()
    digest = hashlib.sha256()
    entries = [path] if not path.is_dir() else sorted(p for p in path.rglob("*") if p.is_file())
    for entry in entries:
        try:
            st = entry.stat()
        except OSError:
            continue  # a missing path fails later with a clear error when it is read
        digest.update(f"{entry}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return f"{source.kind}:{path}|{options}|{digest.hexdigest()[:16]}"


def download_user(username: str, workdir: Path, client: xapi.XApiClient, *, name: str | None = None,
                  report: xapi.Report | None = None) -> tuple[str, list[Tweet]]:
    """Download a user's timeline (up to the 3,200 cap) into the cache, resuming from `raw/<user>.partial.json`.

    The partial file is rewritten atomically after each page and removed once the tweets are in the cache.

    Returns:
        The user name the tweets are filed under (`name` or `username`) and the tweets.
    """
    report = report or (lambda line: None)
    username = xapi.check_username(username)
    user = check_user_name(name or username, where="--user")
    partial = workdir / "raw" / f"{user}.partial.json"
    state = _load_partial(partial)
    user_id = state.get("user_id") or xapi.lookup_user(client, username)
    tweets = {t["id"]: Tweet.from_json(t) for t in state.get("tweets", [])}
    if tweets:
        log.info("@%s: resuming after %d tweets", username, len(tweets))
    page_token = state.get("next_token")
    if not state or page_token:
        for page, page_token in xapi.timeline_pages(client, user_id, username, page_token):
            for tweet in page:
                tweets.setdefault(tweet.id, dataclasses.replace(tweet, user=user))
            done = not page_token or len(tweets) >= xapi.TIMELINE_CAP
            cache.write_json(partial, {"user_id": user_id, "next_token": None if done else page_token,
                                       "tweets": [t.to_json() for t in tweets.values()]})
            report(f"@{username}: {len(tweets)} tweets downloaded")
            if done:
                break
    result = list(tweets.values())[: xapi.TIMELINE_CAP]
    total = cache.merge_raw(workdir, user, result)
    partial.unlink(missing_ok=True)
    log.info("%s: %d tweets from the X API (%d cached)", user, len(result), total)
    return user, result


def _load_partial(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        log.warning("%s: unreadable, starting the download again", path)
        os.replace(path, path.with_suffix(".bad"))
        return {}

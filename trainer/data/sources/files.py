"""Tweets from plain files: CSV, JSONL, a JSON array (e.g. the Trump Twitter Archive), or text one tweet a line.

Which column holds the text (and the user, id, date) is named by the caller or guessed from common names; the
guess is logged so the user sees which column was used. The user is the file's stem (`elonmusk.csv` ->
elonmusk) unless a user column or the caller's `name` says otherwise.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tweetgen.trainer.errors import DataError
from tweetgen.trainer.data.records import Tweet, check_user_name, looks_like_retweet, to_iso, user_from_stem
from tweetgen.trainer.data.sources.jsfile import decode_utf8, parse_json_text

log = logging.getLogger(__name__)

SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json", ".txt")
# Guesses, most specific first; matched without regard to case, spaces or underscores.
TEXT_COLUMNS = ("full_text", "text", "tweet", "tweet_text", "content", "body", "message")
USER_COLUMNS = ("username", "screen_name", "screenname", "user_screen_name", "user", "author", "name")
ID_COLUMNS = ("id_str", "tweet_id", "id", "status_id")
MAX_FILE_BYTES = 1 << 30  # the largest tweets file read (all of one person's tweets are a few hundred MB at most)
DATE_COLUMNS = ("created_at", "created", "datetime", "date", "time", "timestamp")
REPLY_COLUMNS = ("in_reply_to_status_id_str", "in_reply_to_status_id", "in_reply_to_user_id_str",
                 "in_reply_to_user_id", "in_reply_to_screen_name")


def read_file(path: Path, *, name: str | None = None, text_column: str | None = None,
              user_column: str | None = None) -> dict[str, list[Tweet]]:
    """Read the tweets of one file, grouped by user.

    Args:
        path: a .csv, .jsonl/.ndjson, .json (an array of objects, or {"data": [...]}) or .txt file.
        name: put every tweet under this user (overrides the stem and any user column).
        text_column: the column (key) holding the text; guessed when None.
        user_column: the column holding the user; guessed when None, and only used when `name` is None.

    Raises:
        DataError: unknown suffix, not UTF-8, malformed JSON, no rows, or no text column.
    """
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown file type {suffix!r}; use one of {', '.join(SUFFIXES)}, or --archive for .js")
    text = decode_utf8(_read_regular_file(path), str(path))
    default_user = check_user_name(name or user_from_stem(path.stem), where=str(path))
    if suffix == ".txt":
        rows: list[dict[str, Any]] = [{"text": line} for line in text.splitlines() if line.strip()]
    elif suffix == ".csv":
        rows = _csv_rows(text, path)
    elif suffix == ".json":
        rows = _json_rows(parse_json_text(text, str(path)), path)
    else:
        rows = [_jsonl_row(line, number, path) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not rows:
        raise DataError(f"{path}: holds no tweets (no rows)")
    rows = [r.get("tweet", r) if isinstance(r, dict) and isinstance(r.get("tweet"), dict) else r for r in rows]
    columns = _columns(rows)
    text_key = _pick(columns, text_column, TEXT_COLUMNS, "text", path, required=True)
    user_key = None if name else _pick(columns, user_column, USER_COLUMNS, "user", path, required=False)
    grouped: dict[str, list[Tweet]] = {}
    occurrences: dict[str, int] = {}  # content id -> rows seen with it (a tweet written twice stays twice)
    for number, row in enumerate(rows, 1):
        tweet = _tweet(row, number, text_key, user_key, default_user, columns, path)
        if tweet is None:
            continue
        if not tweet.id:
            key = content_id(tweet.user, tweet.created_at, tweet.text)
            occurrences[key] = occurrences.get(key, 0) + 1
            tweet = dataclasses.replace(tweet, id=f"{key}.{occurrences[key]}")
        grouped.setdefault(tweet.user, []).append(tweet)
    if not grouped:
        raise DataError(f"{path}: column {text_key!r} is empty in every row")
    return grouped


def _csv_rows(text: str, path: Path) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return list(reader)
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num} is not valid CSV: {e}") from None


def _json_rows(data: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]  # an X API v2 response saved to a file
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a JSON array of tweet objects (or {{\"data\": [...]}})")
    return data


def _jsonl_row(line: str, number: int, path: Path) -> dict[str, Any]:
    row = parse_json_text(line, f"{path} line {number}")
    if not isinstance(row, dict):
        raise DataError(f"{path}: line {number} is not a JSON object")
    return row


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows[:1000]:
        seen.update(dict.fromkeys(k for k in row if k is not None))
    return list(seen)


def _norm(key: str) -> str:
    return key.lower().replace(" ", "").replace("_", "")


def _pick(columns: list[str], asked: str | None, guesses: Iterable[str], what: str, path: Path,
          *, required: bool) -> str | None:
    """The column the caller asked for, else the first guess present; says which one was chosen."""
    if asked is not None:
        if asked not in columns:
            raise DataError(f"{path}: no column {asked!r}; its columns are {', '.join(map(repr, columns))}")
        return asked
    by_norm = {_norm(c): c for c in reversed(columns)}
    for guess in guesses:
        if _norm(guess) in by_norm:
            chosen = by_norm[_norm(guess)]
            log.info("%s: using column %r as the %s", path.name, chosen, what)
            return chosen
    if required:
        raise DataError(f"{path}: no {what} column found among {', '.join(map(repr, columns)) or 'no columns'}; "
                        f"name it with --{what}-column")
    return None


def _tweet(row: dict[str, Any], number: int, text_key: str, user_key: str | None, default_user: str,
           columns: list[str], path: Path) -> Tweet | None:
    text = row.get(text_key)
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    text = str(text)
    user = default_user
    if user_key and row.get(user_key):
        user = check_user_name(str(row[user_key]), where=f"{path} row {number}")
    tweet_id = _first(row, columns, ID_COLUMNS)
    kind = str(row.get("type") or "")  # tweety CSVs: "" tweet, "rt:<id>" retweet, "r:<user id>" reply
    retweet = row.get("is_retweet")
    return Tweet(
        id=str(tweet_id) if tweet_id not in (None, "") else "",  # no id column: read_file gives one from content
        user=user,
        text=text,
        created_at=to_iso(_first(row, columns, DATE_COLUMNS)),
        is_retweet=kind.startswith("rt:") or _truthy(retweet) or bool(row.get("retweeted_status"))
        or looks_like_retweet(text),
        is_reply=kind.startswith("r:") or any(_present(row.get(k)) for k in REPLY_COLUMNS)
        or _replied_to(row.get("referenced_tweets")),
    )


def content_id(user: str, created_at: str | None, text: str) -> str:
    """The id of a tweet whose file gives none: from what the tweet is (its user, date and text), never from where
    it sits, so that the same tweet read again (a file grown at its top, a second file of the same name) keeps its id
    and a different one never takes it."""
    digest = hashlib.sha256(f"{user}\x00{created_at or ''}\x00{text}".encode("utf-8", "surrogatepass"))
    return "c" + digest.hexdigest()[:24]


def _read_regular_file(path: Path) -> bytes:
    """The file's bytes, refusing what is not a regular file (a FIFO, a device such as /dev/zero) and anything over
    MAX_FILE_BYTES, so that reading can neither hang nor fill the memory."""
    try:
        info = path.stat()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path}: not a regular file (a pipe, device or folder); give a .csv, .jsonl, .json or .txt "
                        "file")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise DataError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MB, the most a tweets file is read to; split it")
    return data


def _first(row: dict[str, Any], columns: list[str], guesses: Iterable[str]) -> Any:
    by_norm = {_norm(c): c for c in reversed(columns)}
    for guess in guesses:
        key = by_norm.get(_norm(guess))
        if key is not None and _present(row.get(key)):
            return row[key]
    return None


def _present(value: Any) -> bool:
    return value not in (None, "", "null", "None", "nan")


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def _replied_to(refs: Any) -> bool:
    return isinstance(refs, list) and any(isinstance(r, dict) and r.get("type") == "replied_to" for r in refs)

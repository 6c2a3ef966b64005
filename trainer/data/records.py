"""The tweet record every source produces, and the small normalisations they share (dates, user names)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Any

from tweetgen.trainer.errors import DataError

_TWITTER_DATE = "%a %b %d %H:%M:%S %z %Y"  # v1.1 and archives: "Wed Oct 19 20:07:25 +0000 2022"
_USER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclasses.dataclass(frozen=True)
class Tweet:
    """One tweet as its source gave it; the cleaner decides what is kept."""

    id: str  # the tweet's id as a string (X ids overflow float64), or a row number for files without ids
    user: str  # the screen name (or the name the user chose) whose voice this is
    text: str  # raw text, as the source gave it: entities escaped, URLs and mentions still in it
    created_at: str | None  # ISO 8601 in UTC when the source says when, else None
    is_retweet: bool  # the source marks it a retweet, or its text starts "RT @"
    is_reply: bool  # the source marks it a reply (in_reply_to_*, referenced_tweets replied_to, "r:" type)

    def __post_init__(self) -> None:
        # A lone surrogate (an emoji cut in half by the old 140-character limit, "\ud83d" in JSON) cannot be written
        # as UTF-8: it becomes U+FFFD, and the tweet and the rest of its file are kept.
        for name in ("id", "user", "text"):
            value = getattr(self, name)
            if isinstance(value, str) and _SURROGATE.search(value):
                object.__setattr__(self, name, _SURROGATE.sub("\ufffd", value))

    def to_json(self) -> dict[str, Any]:
        """The record as the dict stored on one line of `<workdir>/raw/<user>.jsonl`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Tweet:
        """Read back a record written by `to_json`."""
        return cls(
            id=str(obj["id"]),
            user=str(obj["user"]),
            text=str(obj["text"]),
            created_at=obj.get("created_at"),
            is_retweet=bool(obj.get("is_retweet", False)),
            is_reply=bool(obj.get("is_reply", False)),
        )


def looks_like_retweet(text: str) -> bool:
    """True for the text of an old-style or archived retweet ("RT @name: ..."): archives never flag them otherwise."""
    return text.lstrip().startswith("RT @")


def to_iso(value: Any) -> str | None:
    """Normalise a tweet date to ISO 8601 UTC, or None when it is absent or unreadable.

    Accepts the v1.1/archive form ("Wed Oct 19 20:07:25 +0000 2022"), ISO strings ("2015-02-28T05:27:32.000Z",
    "2022-11-07 02:32:45+00:00") and epoch seconds (int, float or digits).
    """
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        try:  # NaN, infinities and epochs outside the calendar: no date
            when = dt.datetime.fromtimestamp(float(value), tz=dt.timezone.utc)
        except (OverflowError, ValueError, OSError):
            return None
        return when.isoformat().replace("+00:00", "Z")
    text = str(value).strip()
    for parse in (lambda s: dt.datetime.strptime(s, _TWITTER_DATE), _parse_iso):
        try:
            when = parse(text)
        except ValueError:
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        try:
            return when.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
        except (OverflowError, ValueError):  # a year 1 or 9999 date pushed out of range by its offset
            return None
    return None


def _parse_iso(text: str) -> dt.datetime:
    # Python 3.10's fromisoformat rejects "Z" and fractional seconds of 3 digits with Z.
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def check_user_name(name: str, *, where: str) -> str:
    """Return `name` if it is usable as a user name and a file name, else raise DataError naming `where`."""
    name = name.strip().lstrip("@")
    if not _USER_NAME.match(name):
        raise DataError(
            f"{where}: user name {name!r} is not usable; use letters, digits, '_', '.' or '-' "
            "(at most 64, not starting with '.' or '-'), or give one with --name"
        )
    return name


def user_from_stem(stem: str) -> str:
    """Turn a file stem into a user name: "smithjd_tweets" -> "smithjd", "my tweets" -> "my_tweets"."""
    base = re.sub(r"[_\-. ]tweets?$", "", stem, flags=re.IGNORECASE) or stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip(".-") or "user"

"""Clean tweets the way huggingtweets did, and a little better, counting what was dropped and why.

Per user, in this order: retweets are dropped, then replies (only if asked), then short tweets (fewer than
`min_words` words once words containing "http", "@" or "#" are left out), then exact duplicates of a tweet already
kept. The text of what is kept has its HTML entities unescaped, its URLs removed and its whitespace collapsed.
"""
from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tweetgen.trainer.data import cache
from tweetgen.trainer.errors import DataError
from tweetgen.trainer.data.records import Tweet, looks_like_retweet

_URL = re.compile(r"(?:https?://|www\.|pic\.twitter\.com/)\S*", re.IGNORECASE)
_MENTION = re.compile(r"(?<![\w@])@\w{1,15}\b:?")
_BORING = ("http", "@", "#")  # huggingtweets: words containing these are not counted as words
# Scripts written without spaces (Chinese, Japanese kana, Thai): two characters count as one word there.
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0e7f]")


@dataclasses.dataclass(frozen=True)
class CleanOptions:
    """How tweets are cleaned; the defaults are huggingtweets' rules plus exact-duplicate removal."""

    drop_retweets: bool = True  # drop retweets: the source marks them, or the text starts "RT @"
    drop_replies: bool = False  # drop replies: the source marks them, or the text starts with an @mention
    min_words: int = 3  # drop tweets with fewer words than this, not counting words with http, @ or #
    remove_urls: bool = True  # remove links (http://, https://, www., pic.twitter.com/)
    keep_mentions: bool = True  # keep @names in the text; False removes them
    keep_newlines: bool = False  # keep line breaks (runs of blank lines become one); False flattens to spaces
    drop_duplicates: bool = True  # drop a tweet whose cleaned text is the same as one already kept for the user

    def __post_init__(self) -> None:
        if self.min_words < 0:
            raise ValueError(f"min_words must be 0 or more, not {self.min_words}")


@dataclasses.dataclass(frozen=True)
class UserStats:
    """What happened to one user's tweets; downloaded = retweets + replies + short + duplicates + kept."""

    downloaded: int  # tweets the sources gave
    retweets: int  # dropped as retweets
    short: int  # dropped as too short (or empty once cleaned)
    duplicates: int  # dropped as exact duplicates of a kept tweet
    kept: int  # in the training set
    replies: int = 0  # dropped as replies (only with drop_replies)

    def to_json(self, *, with_replies: bool = False) -> dict[str, int]:
        """The counts as stored in stats.json; replies only when they were dropped."""
        out = {k: getattr(self, k) for k in ("downloaded", "retweets", "short", "duplicates", "kept")}
        if with_replies:
            out["replies"] = self.replies
        return out


def clean_tweet(text: str, options: CleanOptions = CleanOptions()) -> str:
    """The text of one tweet as it goes into training: entities unescaped, URLs removed, whitespace collapsed."""
    text = html.unescape(text)
    if options.remove_urls:
        text = _URL.sub(" ", text)
    if not options.keep_mentions:
        text = _MENTION.sub(" ", text)
    if options.keep_newlines:
        lines = (" ".join(line.split()) for line in text.splitlines())
        return re.sub(r"\n{2,}", "\n", "\n".join(lines)).strip()
    return " ".join(text.split())


def is_short(text: str, min_words: int) -> bool:
    """huggingtweets' "boring tweet": fewer than `min_words` words that contain neither http, @ nor #.

    In scripts written without spaces (Chinese, Japanese, Thai) every two such characters count as a word, so a
    Japanese sentence is not "one word".
    """
    words = [w for w in html.unescape(text).split() if not any(b in w.lower() for b in _BORING)]
    return sum(max(1, len(_UNSPACED.findall(w)) // 2) for w in words) < min_words


def clean_user(tweets: Iterable[Tweet], options: CleanOptions = CleanOptions()) -> tuple[list[str], UserStats]:
    """Clean one user's tweets.

    Returns:
        The kept texts, cleaned, in the source's order, and the counts of what was dropped and why.
    """
    kept: list[str] = []
    seen: set[str] = set()
    counts = dict.fromkeys(("downloaded", "retweets", "replies", "short", "duplicates"), 0)
    for tweet in tweets:
        counts["downloaded"] += 1
        if options.drop_retweets and (tweet.is_retweet or looks_like_retweet(tweet.text)):
            counts["retweets"] += 1
            continue
        if options.drop_replies and (tweet.is_reply or tweet.text.lstrip().startswith("@")):
            counts["replies"] += 1
            continue
        text = clean_tweet(tweet.text, options)
        if not text or is_short(tweet.text, options.min_words):
            counts["short"] += 1
            continue
        if options.drop_duplicates and text in seen:
            counts["duplicates"] += 1
            continue
        seen.add(text)
        kept.append(text)
    return kept, UserStats(kept=len(kept), **counts)


def clean_all(raw: dict[str, list[Tweet]], options: CleanOptions = CleanOptions()
              ) -> tuple[dict[str, list[str]], dict[str, UserStats]]:
    """Clean every user's tweets; a DataError with everyone's counts if any user is left with nothing."""
    texts, stats = {}, {}
    for user, tweets in raw.items():
        texts[user], stats[user] = clean_user(tweets, options)
    empty = [user for user, s in stats.items() if s.kept == 0]
    if empty:
        counts = {u: s.to_json(with_replies=options.drop_replies) for u, s in stats.items()}
        table = "; ".join(f"{u}: {', '.join(f'{k} {v}' for k, v in c.items())}" for u, c in counts.items())
        raise DataError(f"nothing left to train on for {', '.join(empty)} after cleaning ({table}); "
                        "give more tweets or loosen the cleaning (e.g. --min-words 1, --keep-retweets)")
    return texts, stats


def stats_json(stats: dict[str, UserStats], options: CleanOptions) -> dict[str, Any]:
    """`{"users": {NAME: counts}}`, the form printed by --json and kept for the model card."""
    return {"users": {u: s.to_json(with_replies=options.drop_replies) for u, s in stats.items()}}


def save_stats(workdir: Path, stats: dict[str, UserStats], options: CleanOptions) -> Path:
    """Write `<workdir>/stats.json`: the per-user counts and the cleaning options that produced them."""
    path = workdir / "stats.json"
    cache.write_json(path, {**stats_json(stats, options), "options": dataclasses.asdict(options)})
    return path

"""Cleaning: huggingtweets' rules, the options, the counts, and the error when nothing is left."""
from __future__ import annotations

import json

import pytest

from tweetgen.trainer.data.clean import CleanOptions, UserStats, clean_all, clean_tweet, clean_user, is_short, save_stats
from tweetgen.trainer.errors import DataError
from tweetgen.trainer.data.records import Tweet


def tw(text: str, i: int = 0, *, retweet: bool = False, reply: bool = False, user: str = "u") -> Tweet:
    return Tweet(id=str(i), user=user, text=text, created_at=None, is_retweet=retweet, is_reply=reply)


@pytest.mark.parametrize("raw, expected", [
    ("bread &amp; butter &lt;3 &gt; all &quot;ok&quot; &#39;", "bread & butter <3 > all \"ok\" '"),
    ("look https://t.co/abc123 at this http://x.y/z?a=1", "look at this"),
    ("https://t.co/abc starts with a link", "starts with a link"),
    ("www.example.com and pic.twitter.com/xyz too", "and too"),
    ("  lots   of\tspace \n\n and lines  ", "lots of space and lines"),
    ("@alice thanks for #python tips", "@alice thanks for #python tips"),
])
def test_clean_tweet_defaults(raw, expected):
    assert clean_tweet(raw) == expected


def test_clean_tweet_options():
    text = "@alice @bob: first line\n\n\nsecond  line https://t.co/x"
    assert clean_tweet(text, CleanOptions(keep_newlines=True)) == "@alice @bob: first line\nsecond line"
    assert clean_tweet(text, CleanOptions(keep_mentions=False)) == "first line second line"
    assert clean_tweet(text, CleanOptions(remove_urls=False)).endswith("line https://t.co/x")
    assert clean_tweet("mail me at me@example.com", CleanOptions(keep_mentions=False)) == "mail me at me@example.com"


@pytest.mark.parametrize("text, short", [
    ("one two three", False),
    ("one two", True),
    ("one two @three #four http://five", True),
    ("@a @b only two https://t.co/x", True),
    ("&amp; &amp; &amp;", False),  # three words once unescaped ("&" counts as a word, as in huggingtweets)
    ("今日はとても良い天気でした", False),  # Japanese: no spaces, but plenty of words
    ("雪", True),
])
def test_is_short(text, short):
    assert is_short(text, 3) is short


def test_clean_user_counts_each_reason_once():
    tweets = [
        tw("a normal tweet here", 1),
        tw("RT @x: some retweet text here", 2),
        tw("a flagged retweet with words", 3, retweet=True),
        tw("@friend a reply with words", 4, reply=True),
        tw("too short", 5),
        tw("a normal tweet here", 6),  # duplicate of 1
        tw("a normal  tweet here https://t.co/z", 7),  # duplicate once cleaned
        tw("https://t.co/only", 8),
        tw("another fine tweet here", 9),
    ]
    kept, stats = clean_user(tweets)
    assert kept == ["a normal tweet here", "@friend a reply with words", "another fine tweet here"]
    assert stats == UserStats(downloaded=9, retweets=2, short=2, duplicates=2, kept=3, replies=0)
    kept, stats = clean_user(tweets, CleanOptions(drop_replies=True, drop_duplicates=False, drop_retweets=False))
    assert stats == UserStats(downloaded=9, retweets=0, short=2, duplicates=0, kept=6, replies=1)
    assert stats.downloaded == stats.retweets + stats.replies + stats.short + stats.duplicates + stats.kept


def test_drop_replies_also_drops_tweets_starting_with_a_mention():
    _, stats = clean_user([tw("@x unmarked reply with words"), tw("plain words here ok")],
                          CleanOptions(drop_replies=True))
    assert (stats.replies, stats.kept) == (1, 1)
    assert stats.to_json(with_replies=True)["replies"] == 1
    assert "replies" not in stats.to_json()


def test_nothing_left_is_an_error_with_everyones_counts():
    raw = {"good": [tw("plenty of words here", user="good")], "bad": [tw("RT @x: y z w", user="bad"), tw("hi")]}
    with pytest.raises(DataError) as info:
        clean_all(raw)
    message = str(info.value)
    assert "nothing left to train on for bad" in message
    assert "good: downloaded 1, retweets 0, short 0, duplicates 0, kept 1" in message
    assert "bad: downloaded 2, retweets 1, short 1, duplicates 0, kept 0" in message


def test_save_stats(tmp_path):
    texts, stats = clean_all({"a": [tw("plenty of words here")]})
    path = save_stats(tmp_path, stats, CleanOptions())
    saved = json.loads(path.read_text())
    assert saved["users"] == {"a": {"downloaded": 1, "retweets": 0, "short": 0, "duplicates": 0, "kept": 1}}
    assert saved["options"]["min_words"] == 3
    assert texts == {"a": ["plenty of words here"]}


def test_bad_options():
    with pytest.raises(ValueError, match="min_words"):
        CleanOptions(min_words=-1)

import pytest
from tokenizers import Tokenizer

from conftest import TINY_GPT2
from tweetgen.text import TweetText, cut_to_limit

EMOJI_TEXT = " Launch 🚀🎉 over 日本 and the café ❤️ tonight 👍🏽 🔥🔥"


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_file(str(TINY_GPT2 / "tokenizer.json"))


def feed(tokenizer, text, **options):
    tweet = TweetText(tokenizer, **{"max_chars": None, "stop_at_newline": False, **options})
    pieces = []
    for token in tokenizer.encode(text).ids:
        if tweet.done:
            break
        tweet.add(token)
        pieces.append(tweet.release())
    tweet.finish()
    pieces.append(tweet.release())
    return tweet, pieces


def test_emoji_split_across_tokens_never_stream_half_a_character(tokenizer):
    ids = tokenizer.encode(EMOJI_TEXT).ids
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids), "the test text must split characters across tokens"
    tweet, pieces = feed(tokenizer, EMOJI_TEXT)
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == tweet.text == EMOJI_TEXT.rstrip()


def test_stream_releases_whole_words_while_running(tokenizer):
    _, pieces = feed(tokenizer, " one two three four")
    assert [p for p in pieces if p] == [" one", " two", " three", " four"]


@pytest.mark.parametrize("text, limit, want", [
    ("short", 280, "short"),
    ("one two three", 7, "one two"),
    ("one two three", 8, "one two"),
    ("one two three", 9, "one two"),
    ("abcdefghij", 4, "abcd"),
    (" abcdefghij", 4, " abc"),
    ("one two", None, "one two"),
])
def test_cut_to_limit_cuts_on_a_word_boundary(text, limit, want):
    assert cut_to_limit(text, limit) == want


def test_character_limit_stops_the_sample_and_streams_the_same_text(tokenizer):
    text = " the moon and mars rockets launch today we build cars solar energy future people"
    tweet, pieces = feed(tokenizer, text, max_chars=30)
    assert tweet.text == " the moon and mars rockets"
    assert "".join(pieces) == tweet.text
    assert len(tweet.text) <= 30


def test_newline_stop(tokenizer):
    tweet, pieces = feed(tokenizer, " first line\nsecond line", stop_at_newline=True)
    assert tweet.text == " first line"
    assert "".join(pieces) == tweet.text
    kept, _ = feed(tokenizer, " first line\nsecond line")
    assert kept.text == " first line\nsecond line"


@pytest.mark.parametrize("limit", [1, 5, 30, 61])
def test_the_limit_ends_the_sample_at_the_first_token_past_it(tokenizer, limit):
    ids = tokenizer.encode(" the moon and mars rockets 🚀 launch today we build cars solar energy future").ids
    first_past = next(n for n in range(1, len(ids) + 1)
                      if len(tokenizer.decode(ids[:n]).rstrip("\ufffd")) > limit)
    tweet = TweetText(tokenizer, max_chars=limit, stop_at_newline=False)
    added = 0
    while not tweet.done:
        tweet.add(ids[added])
        added += 1
    assert added == first_past


def test_the_newline_ends_the_sample_at_its_token(tokenizer):
    ids = tokenizer.encode(" first line\nsecond line").ids
    tweet = TweetText(tokenizer, max_chars=None, stop_at_newline=True)
    added = 0
    while not tweet.done:
        tweet.add(ids[added])
        added += 1
    assert "\n" in tokenizer.decode(ids[:added]) and "\n" not in tokenizer.decode(ids[:added - 1])

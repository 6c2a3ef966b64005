"""File source: CSV, JSONL, JSON array, TXT; column guessing; bad files; every real CSV and JSON file."""
from __future__ import annotations

import csv
import json

import pytest
from conftest import shared_data

from tweetgen.trainer.errors import DataError
from tweetgen.trainer.data.sources.files import read_file


def _csv(path, rows, header):
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_guesses_the_text_column_and_says_so(tmp_path, caplog):
    path = _csv(tmp_path / "alice.csv", [["1", "hello there world", "rt:5"], ["2", "second, with a comma", ""]],
                ["tweet_id", "Text", "type"])
    with caplog.at_level("INFO"):
        got = read_file(path)
    assert list(got) == ["alice"]
    assert [(t.id, t.text, t.is_retweet) for t in got["alice"]] == [("1", "hello there world", True),
                                                                   ("2", "second, with a comma", False)]
    assert "using column 'Text' as the text" in caplog.text


def test_csv_user_column_splits_users_and_name_overrides(tmp_path):
    path = _csv(tmp_path / "many.csv", [["1", "a", "one two three"], ["2", "b", "four five six"],
                                        ["3", "a", "seven eight"]], ["id", "username", "text"])
    got = read_file(path)
    assert {u: [t.id for t in ts] for u, ts in got.items()} == {"a": ["1", "3"], "b": ["2"]}
    assert list(read_file(path, name="me")) == ["me"]


def test_named_text_column(tmp_path):
    path = _csv(tmp_path / "x.csv", [["the words", "other words"]], ["body", "mine"])
    assert read_file(path, text_column="mine")["x"][0].text == "other words"
    with pytest.raises(DataError, match="no column 'nope'"):
        read_file(path, text_column="nope")


def test_tweety_style_types_and_epoch_dates(tmp_path):
    path = _csv(tmp_path / "bob.csv", [["1", "1355094803", "", "plain words here"],
                                       ["2", "1355094804", "r:123", "@x a reply here"]],
                ["tweet_id", "time", "type", "text"])
    tweets = read_file(path)["bob"]
    assert tweets[0].created_at == "2012-12-09T23:13:23Z"
    assert [t.is_reply for t in tweets] == [False, True]


def test_jsonl_and_json_array_and_txt(tmp_path):
    (tmp_path / "j.jsonl").write_text("\n".join(json.dumps({"id": i, "full_text": f"line {i}",
                                                            "in_reply_to_status_id": None}) for i in range(3)))
    (tmp_path / "trump.json").write_text(json.dumps([
        {"id_str": "7", "text": "words &amp; words", "created_at": "Wed Jul 10 13:36:42 +0000 2013",
         "is_retweet": False, "in_reply_to_user_id_str": "99"},
        {"id_str": "8", "text": "RT @x: hi", "created_at": "Wed Jul 10 13:36:43 +0000 2013", "is_retweet": True}]))
    (tmp_path / "plain.txt").write_text("first tweet\n\n  \nsecond tweet\n")
    assert [t.id for t in read_file(tmp_path / "j.jsonl")["j"]] == ["0", "1", "2"]
    trump = read_file(tmp_path / "trump.json")["trump"]
    assert [(t.is_retweet, t.is_reply, t.created_at) for t in trump] == [
        (False, True, "2013-07-10T13:36:42Z"), (True, False, "2013-07-10T13:36:43Z")]
    assert [t.text for t in read_file(tmp_path / "plain.txt")["plain"]] == ["first tweet", "second tweet"]


def test_empty_csv_and_missing_text_column_are_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="no rows"):
        read_file(tmp_path / "empty.csv")
    (tmp_path / "header_only.csv").write_text("id,text\n")
    with pytest.raises(DataError, match="no rows"):
        read_file(tmp_path / "header_only.csv")
    _csv(tmp_path / "nums.csv", [["1", "2"]], ["id", "count"])
    with pytest.raises(DataError, match=r"no text column found among 'id', 'count'; name it with --text-column"):
        read_file(tmp_path / "nums.csv")


def test_non_utf8_and_malformed_json_name_file_and_position(tmp_path):
    (tmp_path / "latin.csv").write_bytes("id,text\n1,caf\u00e9 ol\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv: not UTF-8 text \(line 2, byte 13"):
        read_file(tmp_path / "latin.csv")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": "broken}\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 2: malformed JSON at line 1 column 10"):
        read_file(tmp_path / "bad.jsonl")
    (tmp_path / "bad.json").write_text('[{"text": "a"},\n {"text": }]')
    with pytest.raises(DataError, match=r"bad.json: malformed JSON at line 2 column 11"):
        read_file(tmp_path / "bad.json")


def test_unknown_suffix_and_bad_user_names(tmp_path):
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(DataError, match="unknown file type"):
        read_file(tmp_path / "x.xlsx")
    path = _csv(tmp_path / "u.csv", [["../../etc", "some words here"]], ["user", "text"])
    with pytest.raises(DataError, match="not usable"):
        read_file(path)


@pytest.mark.shared_data
def test_every_real_tweety_csv():
    folder = shared_data("tweets", "tweety")
    paths = sorted(p for p in folder.glob("*.csv") if p.name != "global_metadata.csv")
    assert len(paths) == 77
    for path in paths:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        got = read_file(path)
        assert list(got) == [path.stem]
        tweets = got[path.stem]
        assert len(tweets) == sum(1 for r in rows if r["text"].strip()), path.name
        assert sum(t.is_retweet for t in tweets) >= sum(r["type"].startswith("rt:") for r in rows), path.name
        assert sum(t.is_reply for t in tweets) == sum(r["type"].startswith("r:") for r in rows), path.name
    with pytest.raises(DataError, match="no text column"):  # the user list beside them holds no tweets
        read_file(folder / "global_metadata.csv")


@pytest.mark.shared_data
def test_real_celebrity_faceoff_has_six_users():
    got = read_file(shared_data("tweets", "celebrity_faceoff", "raw_tweets.csv"))
    assert {u: len(t) for u, t in got.items()} == {u: 1500 for u in (
        "hadleywickham", "wesmckinn", "fchollet", "KimKardashian", "khloekardashian", "kourtneykardash")}


@pytest.mark.shared_data
def test_real_dril():
    got = read_file(shared_data("tweets", "dril", "dril_tweets.csv"))
    assert list(got) == ["dril"] and len(got["dril"]) == 10515


@pytest.mark.shared_data
def test_real_trump_condensed_json():
    paths = sorted(shared_data("tweets", "trump_archive_condensed").glob("condensed_*.json"))
    total = retweets = 0
    for path in paths:
        rows = json.loads(path.read_text(encoding="utf-8"))
        tweets = read_file(path, name="realDonaldTrump")["realDonaldTrump"]
        assert len(tweets) == len(rows)
        total += len(tweets)
        # a retweet is flagged by the archive (is_retweet, from 2016 on) or, before that, only by its "RT @" text
        expected = [row["is_retweet"] or row["text"].lstrip().startswith("RT @") for row in rows]
        assert [t.is_retweet for t in tweets] == expected, path.name
        retweets += sum(expected)
    assert total == 30930 and retweets == 255


def test_broken_csv_is_an_error(tmp_path):
    (tmp_path / "big.csv").write_text('id,text\n1,"' + "x" * 200_000 + '"\n')
    with pytest.raises(DataError, match="big.csv: line .* not valid CSV"):
        read_file(tmp_path / "big.csv")

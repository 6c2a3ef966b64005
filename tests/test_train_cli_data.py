"""tweetgen-train fetch / clean: JSON on stdout, table on stderr, cache reuse, exit codes, the fake API."""
from __future__ import annotations

import csv
import json

import pytest
from conftest import archive_tweet, shared_data, write_archive

from tweetgen.trainer import cli
from tweetgen.trainer.data import fetch


def _csv(path, texts, header=("id", "text")):
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([str(i), t] for i, t in enumerate(texts))
    return path


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def run(capsys, *argv):
    pytest.importorskip("rich")  # the command's logging and tables
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_clean_json_table_and_files(tmp_path, capsys):
    path = _csv(tmp_path / "alice.csv", ["hello there my friends", "RT @x: retweeted words here", "short one",
                                         "hello there my friends", "another day &amp; another tweet"])
    code, out, err = run(capsys, "clean", "--file", path, "--workdir", tmp_path / "w", "--json")
    assert code == 0
    assert json.loads(out) == {"users": {"alice": {"downloaded": 5, "retweets": 1, "short": 1, "duplicates": 1,
                                                   "kept": 2}}}
    assert "Tweets per user" in err and "alice" in err and "using column 'text'" in err
    clean = [json.loads(line) for line in (tmp_path / "w" / "clean" / "alice.jsonl").read_text().splitlines()]
    assert [c["text"] for c in clean] == ["hello there my friends", "another day & another tweet"]
    assert json.loads((tmp_path / "w" / "stats.json").read_text())["users"] == json.loads(out)["users"]
    assert len((tmp_path / "w" / "raw" / "alice.jsonl").read_text().splitlines()) == 5


def test_second_run_reads_no_source(tmp_path, capsys, monkeypatch):
    folder = write_archive(tmp_path / "a", [archive_tweet(i) for i in range(5)], username="zed")
    argv = ["clean", "--archive", folder, "--workdir", tmp_path / "w", "--json"]
    first = run(capsys, *argv)
    monkeypatch.setattr(fetch.archive, "read_archive", lambda *a, **k: pytest.fail("read the archive again"))
    second = run(capsys, *argv)
    assert first[0] == second[0] == 0 and first[1] == second[1]
    assert json.loads(first[1])["users"]["zed"]["kept"] == 5


def test_several_sources_names_and_options(tmp_path, capsys):
    a = _csv(tmp_path / "a.csv", ["first tweet of mine", "@bob replying to you now"])
    b = tmp_path / "b.txt"
    b.write_text("a line from the text file\nfirst tweet of mine\n")
    code, out, _ = run(capsys, "clean", "--file", a, "--as", "me", "--file", b, "--as", "me",
                       "--file", _csv(tmp_path / "other.csv", ["someone else entirely here"]),
                       "--drop-replies", "--workdir", tmp_path / "w", "--json")
    assert code == 0
    assert json.loads(out)["users"] == {
        "me": {"downloaded": 4, "retweets": 0, "short": 0, "duplicates": 1, "kept": 2, "replies": 1},
        "other": {"downloaded": 1, "retweets": 0, "short": 0, "duplicates": 0, "kept": 1, "replies": 0}}


def test_fetch_stops_after_the_cache(tmp_path, capsys):
    path = _csv(tmp_path / "bob.csv", ["words words words"])
    code, out, _ = run(capsys, "fetch", "--file", path, "--workdir", tmp_path / "w")
    assert code == 0 and out == ""
    assert (tmp_path / "w" / "raw" / "bob.jsonl").exists() and not (tmp_path / "w" / "stats.json").exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: _csv(p / "x.csv", ["hi", "RT @a: b c d"]), "nothing left to train on for x"),
    (lambda p: _write(p / "e.csv", b""), "e.csv: holds no tweets"),
    (lambda p: _csv(p / "n.csv", ["1"], header=("id", "count")), "no text column"),
    (lambda p: _write(p / "l.txt", b"caf\xe9 tweet here\n"), "not UTF-8 text"),
    (lambda p: p / "missing.csv", "no such file"),
])
def test_bad_input_is_error_exit_1_without_traceback(tmp_path, capsys, make, message):
    path = make(tmp_path)
    code, out, err = run(capsys, "clean", "--file", path, "--workdir", tmp_path / "w", "--json")
    assert code == 1 and out == ""
    assert err.splitlines()[-1].startswith("Error: ") and message in err and "Traceback" not in err
    assert not list((tmp_path / "w").rglob("*.tmp"))


def test_usage_errors_exit_2(tmp_path, capsys):
    assert run(capsys, "clean", "--workdir", tmp_path)[0] == 2  # no source
    assert run(capsys, "clean", "--file", "x.csv")[0] == 2  # no workdir
    assert run(capsys, "clean", "--file", "x.csv", "--workdir", tmp_path, "--min-words", "many")[0] == 2
    assert run(capsys)[0] == 2
    assert run(capsys, "clean", "--help")[0] == 0


def test_ctrl_c_exits_130(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "fetch", interrupted)
    code, _, err = run(capsys, "fetch", "--file", tmp_path / "x.csv", "--workdir", tmp_path)
    assert code == 130 and "resume" in err


def test_user_through_the_fake_api_with_a_rate_limit(fake_api, tmp_path, capsys):
    fake_api.add_user("alice", 130, retweet_every=13)
    fake_api.rate_limited = {2}
    fake_api.reset_in = 0
    fake_api.failures = {4: 503}
    code, out, err = run(capsys, "clean", "--user", "@alice", "--workdir", tmp_path / "w", "--json")
    assert code == 0, err
    assert json.loads(out)["users"]["alice"] == {"downloaded": 130, "retweets": 10, "short": 0, "duplicates": 0,
                                                 "kept": 120}
    assert "rate limit" in err and fake_api.token not in out + err


def test_api_errors_are_clear(fake_api, tmp_path, capsys, monkeypatch):
    code, _, err = run(capsys, "fetch", "--user", "nobody", "--workdir", tmp_path)
    assert code == 1 and "Error: X has no user @nobody" in err
    monkeypatch.delenv("X_BEARER_TOKEN")
    code, _, err = run(capsys, "fetch", "--user", "nobody", "--workdir", tmp_path)
    assert code == 1 and "X_BEARER_TOKEN" in err


@pytest.mark.shared_data
@pytest.mark.parametrize("parts, users, retweets", [
    (("x_archive", "smithjd_tweets.js"), {"smithjd": 1758}, {"smithjd": 128}),
    (("x_archive", "dsajgiouawj_old_tweet_js"), {"E31415926": 1163}, {"E31415926": 29}),
    (("dril", "dril_tweets.csv"), {"dril": 10515}, {"dril": 0}),
])
def test_real_sources_through_the_command(tmp_path, capsys, parts, users, retweets):
    path = shared_data("tweets", *parts)
    option = "--archive" if "x_archive" in parts else "--file"
    code, out, err = run(capsys, "clean", option, path, "--workdir", tmp_path, "--json")
    assert code == 0, err
    stats = json.loads(out)["users"]
    assert {u: s["downloaded"] for u, s in stats.items()} == users
    assert {u: s["retweets"] for u, s in stats.items()} == retweets
    for s in stats.values():
        assert s["downloaded"] == s["retweets"] + s["short"] + s["duplicates"] + s["kept"]

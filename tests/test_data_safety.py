"""Nothing lost: tweet ids come from what a tweet is, never from where it sits; one command at a time writes to a
work folder; a tweets "file" that is a pipe or a device is refused instead of read forever."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tweetgen.trainer.data.fetch import Source, fetch
from tweetgen.trainer.data.sources.files import read_file
from tweetgen.trainer.errors import DataError
from tweetgen.trainer.workdir import lock

LINES = [f"tweet number {i} has a handful of words" for i in range(10)]


def test_two_files_of_the_same_name_under_one_user_keep_every_tweet(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "tweets.txt").write_text("\n".join(LINES[:5]) + "\n")
    (tmp_path / "b" / "tweets.txt").write_text("\n".join(LINES[5:]) + "\n")
    got = fetch([Source("file", str(tmp_path / "a" / "tweets.txt"), name="me"),
                 Source("file", str(tmp_path / "b" / "tweets.txt"), name="me")], tmp_path / "work")
    assert sorted(t.text for t in got["me"]) == sorted(LINES)


def test_new_tweets_at_the_top_of_a_file_read_again_are_kept(tmp_path):
    path = tmp_path / "me.txt"
    path.write_text("\n".join(LINES[3:]) + "\n")
    fetch([Source("file", str(path))], tmp_path / "work")
    path.write_text("\n".join(LINES) + "\n")  # three new tweets above the old ones
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new fingerprint even on a coarse clock
    got = fetch([Source("file", str(path))], tmp_path / "work")
    assert sorted(t.text for t in got["me"]) == sorted(LINES)


def test_the_same_tweet_twice_in_one_file_stays_twice_for_the_duplicate_count(tmp_path):
    path = tmp_path / "me.txt"
    path.write_text(f"{LINES[0]}\n{LINES[1]}\n{LINES[0]}\n")
    tweets = read_file(path)["me"]
    assert len(tweets) == 3 and len({t.id for t in tweets}) == 3
    assert tweets[0].id.rsplit(".", 1)[0] == tweets[2].id.rsplit(".", 1)[0]  # the same content, counted apart


def test_a_pipe_or_a_device_is_refused_not_read(tmp_path):
    fifo = tmp_path / "tweets.txt"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.txt"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero):
        result = []
        worker = threading.Thread(target=lambda p=path: result.append(_error_of(p)), daemon=True)
        worker.start()
        worker.join(10)
        assert result and "not a regular file" in result[0]


def _error_of(path: Path) -> str:
    try:
        read_file(path)
    except DataError as exc:
        return str(exc)
    return "read"


def test_a_second_writer_refuses_at_once_and_the_lock_goes_with_its_process(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from tweetgen.trainer.workdir import lock
            with lock({str(tmp_path)!r}):
                print("held", flush=True)
                time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match=f"pid {holder.pid}.*another --workdir"):
            with lock(tmp_path):
                pass
        with pytest.raises(Exception, match="another tweetgen-train"):
            with lock(tmp_path, shared=True):  # a reader waits for no writer either: it refuses
                pass
    finally:
        holder.kill()  # as a crash would end it
        holder.wait()
    with lock(tmp_path):  # the OS released it with the process
        pass
    with lock(tmp_path, shared=True), lock(tmp_path, shared=True):  # readers share
        pass


def test_four_cleans_at_once_lose_nothing(tmp_path):
    """The afternoon's case: concurrent `clean` runs on one folder. Each either refuses or finishes; the cache then
    holds every tweet of every file that was cleaned."""
    pytest.importorskip("rich")  # the command's logging and tables
    files = []
    for k in range(4):
        path = tmp_path / f"user{k}.txt"
        path.write_text("\n".join(f"{line} from file {k}" for line in LINES) + "\n")
        files.append(path)
    runs = [subprocess.Popen([sys.executable, "-m", "tweetgen.trainer.cli", "clean", "--file", str(path),
                              "--workdir", str(tmp_path / "work")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for path in files]
    outcomes = [(run.wait(120), run.stderr.read()) for run in runs]
    done = [k for k, (code, _) in enumerate(outcomes) if code == 0]
    assert all(code == 0 or "another tweetgen-train" in err for code, err in outcomes)
    assert done
    for k in done:
        cached = (tmp_path / "work" / "raw" / f"user{k}.jsonl").read_text().count("\n")
        assert cached == len(LINES)


def test_a_lone_surrogate_keeps_its_tweet_and_the_rest_of_the_file(tmp_path):
    path = tmp_path / "me.jsonl"
    path.write_text('{"text": "half an emoji \\ud83d at the cut of 140 chars"}\n'
                    '{"text": "and the next tweet is fine too"}\n')
    got = fetch([Source("file", str(path))], tmp_path / "work")
    texts = sorted(t.text for t in got["me"])
    assert texts == ["and the next tweet is fine too", "half an emoji \ufffd at the cut of 140 chars"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10 ** 30, "99999999999999999999", -10 ** 20,
                                   "0001-01-01T00:00:00+14:00", "not a date", True, [1, 2]])
def test_dates_out_of_range_or_not_numbers_are_no_date(value):
    from tweetgen.trainer.data.records import to_iso

    assert to_iso(value) is None


def test_deeply_nested_json_is_a_clear_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="nested too deeply"):
        read_file(path)


def test_odd_but_valid_looking_account_and_manifest_files_are_read_around(tmp_path):
    from tweetgen.trainer.data.sources.archive import read_archive

    data = tmp_path / "arch" / "data"
    data.mkdir(parents=True)
    (data / "account.js").write_text('window.YTD.account.part0 = [{"account": [1, 2]}]')
    (data / "manifest.js").write_text('window.__THAR_CONFIG = {"dataTypes": "odd", "userInfo": ["x"]}')
    (data / "tweets.js").write_text("window.YTD.tweets.part0 = " + json.dumps(
        [{"tweet": {"id_str": str(i), "full_text": t}} for i, t in enumerate(LINES)]))
    user, tweets = read_archive(tmp_path / "arch")
    assert user == "arch" and len(tweets) == len(LINES)


def test_an_archive_with_damaged_compressed_data_is_a_clear_error(tmp_path):
    import zipfile

    from tweetgen.trainer.data.sources.archive import read_archive

    path = tmp_path / "damaged.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data/tweets.js", "window.YTD.tweets.part0 = " + json.dumps(
            [{"tweet": {"id_str": str(i), "full_text": t * 20}} for i, t in enumerate(LINES)]))
    data = bytearray(path.read_bytes())
    data[80:120] = b"\x00" * 40  # inside the deflated tweets.js
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="damaged.zip"):
        read_archive(path)


def test_a_tweets_file_that_is_a_symlink_is_read_through_it(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("\n".join(LINES) + "\n")
    (tmp_path / "link.txt").symlink_to(real)
    assert [t.text for tweets in read_file(tmp_path / "link.txt").values() for t in tweets] == LINES


@pytest.mark.parametrize("index", ["[not json", "[1, 2]", "\udcff"])
def test_a_corrupt_sources_index_costs_a_re_read_and_loses_nothing(tmp_path, index):
    pytest.importorskip("rich")  # the command's logging and tables
    source = tmp_path / "tweets.txt"
    source.write_text("\n".join(LINES) + "\n")
    work = tmp_path / "work"
    (work / "raw").mkdir(parents=True)
    (work / "raw" / "sources.json").write_bytes(index.encode("utf-8", "surrogateescape"))
    result = subprocess.run([sys.executable, "-m", "tweetgen.trainer.cli", "clean", "--file", str(source),
                             "--workdir", str(work)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    cleaned = (work / "clean" / "tweets.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["text"] for line in cleaned) == sorted(LINES)
    assert isinstance(json.loads((work / "raw" / "sources.json").read_text()), dict)  # rewritten whole

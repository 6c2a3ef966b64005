"""X archive source: zip, folder and lone .js; parts and manifest; bad and hostile archives; real archives."""
from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest
from conftest import archive_tweet, js_file, shared_data, write_archive

from tweetgen.trainer.errors import ArchiveError, DataError
from tweetgen.trainer.data.sources.archive import read_archive

FIXTURE = Path(__file__).parent / "fixtures" / "data" / "synthetic_tweets.js"


def _zip_folder(folder: Path, target: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return target


def test_lone_tweets_js_fixture():
    user, tweets = read_archive(FIXTURE)
    assert user == "synthetic"  # "synthetic_tweets.js" with no account.js beside it: the stem without "_tweets"
    assert [t.id for t in tweets] == ["1000000000000000003", "1000000000000000002", "1000000000000000001"]
    assert [t.is_retweet for t in tweets] == [False, True, False]
    assert [t.is_reply for t in tweets] == [False, False, True]
    assert tweets[0].created_at == "2022-10-19T20:07:25Z"
    assert tweets[0].text.startswith("Synthetic fixture: bread &amp; butter")  # raw, as the archive gave it


@pytest.mark.parametrize("layout", ["folder", "zip", "zip_in_subfolder", "lone_js"])
def test_layouts_give_the_same_tweets(tmp_path, layout):
    folder = write_archive(tmp_path / "archive", [archive_tweet(i) for i in range(7)], username="alice")
    path = {"folder": folder, "lone_js": folder / "data" / "tweets.js",
            "zip": _zip_folder(folder, tmp_path / "a.zip"),
            "zip_in_subfolder": _zip_folder(folder, tmp_path / "b.zip", prefix="twitter-2024/")}[layout]
    user, tweets = read_archive(path)
    assert user == "alice"
    assert [t.id for t in tweets] == [str(900 + i) for i in range(7)]


def test_multi_part_archive_reads_every_part_from_the_manifest(tmp_path):
    folder = write_archive(tmp_path / "a", [archive_tweet(i) for i in range(10)], parts=3)
    assert (folder / "data" / "tweets-part2.js").exists()
    _, tweets = read_archive(_zip_folder(folder, tmp_path / "a.zip"))
    assert sorted(int(t.id) for t in tweets) == list(range(900, 910))


def test_parts_found_by_name_without_a_manifest(tmp_path):
    folder = write_archive(tmp_path / "a", [archive_tweet(i) for i in range(10)], parts=2)
    (folder / "data" / "manifest.js").unlink()
    _, tweets = read_archive(folder)
    assert len(tweets) == 10


def test_old_layout_tweet_js(tmp_path):
    folder = write_archive(tmp_path / "a", [archive_tweet(i) for i in range(4)], old_layout=True, username="bob")
    (folder / "data" / "deleted-tweets.js").write_text(js_file("YTD.deleted_tweets.part0", [archive_tweet(99)]))
    user, tweets = read_archive(folder)
    assert (user, len(tweets)) == ("bob", 4)


def test_name_overrides_the_account(tmp_path):
    folder = write_archive(tmp_path / "a", [archive_tweet(0)], username="alice")
    assert read_archive(folder, name="carol")[0] == "carol"


def test_archive_without_tweets_is_a_clear_error(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "like.js").write_text(js_file("YTD.like.part0", []))
    with pytest.raises(ArchiveError, match="no tweets.js or tweet.js"):
        read_archive(tmp_path)


def test_manifest_listing_a_missing_part_is_an_error(tmp_path):
    folder = write_archive(tmp_path / "a", [archive_tweet(i) for i in range(4)], parts=2)
    (folder / "data" / "tweets-part1.js").unlink()
    with pytest.raises(ArchiveError, match="tweets-part1.js"):
        read_archive(folder)


def test_malformed_js_names_the_file_and_position(tmp_path):
    bad = tmp_path / "tweets.js"
    bad.write_text('window.YTD.tweets.part0 = [\n  {"tweet": {"id_str": "1",, "full_text": "x"}}\n]')
    with pytest.raises(DataError, match=r"tweets.js: malformed JSON at line 2 column 28"):
        read_archive(bad)


def test_not_an_assignment_is_an_error(tmp_path):
    bad = tmp_path / "tweets.js"
    bad.write_text("alert('hello')")
    with pytest.raises(DataError, match="not an X archive file"):
        read_archive(bad)


def test_non_utf8_is_an_error(tmp_path):
    bad = tmp_path / "tweets.js"
    bad.write_bytes(js_file("YTD.tweets.part0", [archive_tweet(0, "caf\u00e9 au lait")]).encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_archive(bad)


def test_entry_that_is_not_a_tweet_is_an_error(tmp_path):
    bad = tmp_path / "tweets.js"
    bad.write_text(js_file("YTD.tweets.part0", [{"like": {"tweetId": "1"}}]))
    with pytest.raises(DataError, match="entry 0 is not a tweet"):
        read_archive(bad)


def test_hostile_zip_writes_nothing_and_skips_unsafe_members(tmp_path):
    good = js_file("YTD.tweets.part0", [archive_tweet(i) for i in range(3)])
    evil = js_file("YTD.tweets.part0", [archive_tweet(i) for i in range(50, 60)])
    target = tmp_path / "hostile.zip"
    with zipfile.ZipFile(target, "w") as zf:
        zf.writestr("data/tweets.js", good)
        zf.writestr("../../escape/tweets-part1.js", evil)
        zf.writestr("/abs/data/tweets-part2.js", evil)
        zf.writestr("C:/win/tweets-part3.js", evil)
        link = zipfile.ZipInfo("data/tweets-part4.js")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path.parent))
    _, tweets = read_archive(target)
    assert sorted(int(t.id) for t in tweets) == [900, 901, 902]
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path.parent))) == before
    assert not Path("/abs").exists() and not (tmp_path.parent.parent / "escape").exists()


def test_zip_bomb_is_refused_without_reading_it_whole(tmp_path):
    target = tmp_path / "bomb.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/tweets.js", "window.YTD.tweets.part0 = [" + " " * (8 << 20) + "]")
    assert target.stat().st_size < 64 << 10
    with pytest.raises(ArchiveError, match="zip bomb"):
        read_archive(target, limit=1 << 20)


def test_zip_bomb_lying_about_its_size_is_stopped_while_reading(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/tweets.js", "window.YTD.tweets.part0 = [" + " " * (3 << 20) + "]")
    target = tmp_path / "liar.zip"
    target.write_bytes(buffer.getvalue())
    with zipfile.ZipFile(target) as zf:
        info = zf.getinfo("data/tweets.js")
    # Rewrite the declared uncompressed size (central directory) to something innocent.
    data = bytearray(target.read_bytes())
    true_size = info.file_size.to_bytes(4, "little")
    cd = data.rindex(b"PK\x01\x02")
    data[cd:] = data[cd:].replace(true_size, (1000).to_bytes(4, "little"), 1)
    target.write_bytes(bytes(data))
    with pytest.raises(ArchiveError):
        read_archive(target, limit=1 << 20)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(ArchiveError, match="no such file or folder"):
        read_archive(tmp_path / "nope.zip")


@pytest.mark.shared_data
def test_real_smithjd_tweets_js():
    user, tweets = read_archive(shared_data("tweets", "x_archive", "smithjd_tweets.js"))
    assert user == "smithjd"
    assert len(tweets) == 1758
    assert sum(t.is_retweet for t in tweets) == 128
    assert len({t.id for t in tweets}) == 1758


@pytest.mark.shared_data
def test_real_old_layout_archive_folder_and_zip(tmp_path):
    folder = shared_data("tweets", "x_archive", "dsajgiouawj_old_tweet_js")
    for path in (folder, _zip_folder(folder, tmp_path / "old.zip", prefix="data/")):
        user, tweets = read_archive(path)
        assert user == "E31415926"
        assert len(tweets) == 1163
        assert sum(t.is_retweet for t in tweets) == 29


@pytest.mark.shared_data
def test_real_archive_without_its_tweets_js_says_so():
    with pytest.raises(ArchiveError, match="data/tweets.js"):
        read_archive(shared_data("tweets", "x_archive", "ethereumclassic"))

"""X's "Download your data" archive: the .zip, the unpacked folder, or a lone tweets.js / tweet.js.

The zip is read in place, member by member, and never extracted: members whose names climb out of the archive
(`..`, absolute paths, drive letters) and symbolic links are skipped, and a member is read in chunks up to
`MAX_MEMBER_BYTES` and refused past a compression ratio no real archive has, so a zip bomb costs neither disk
nor memory. Which files hold tweets comes from manifest.js when there is one (multi-part archives list
`tweets-part1.js`, ...), else from the file names; the user name from account.js, then manifest.js.
"""
from __future__ import annotations

import logging
import os
import posixpath
import re
import stat
import zipfile
import zlib
from pathlib import Path
from typing import Any

from tweetgen.trainer.errors import ArchiveError, DataError
from tweetgen.trainer.data.records import Tweet, check_user_name, looks_like_retweet, to_iso, user_from_stem
from tweetgen.trainer.data.sources.jsfile import parse_js

log = logging.getLogger(__name__)

MAX_MEMBER_BYTES = 512 * 1024 * 1024  # largest archive file we read: a 100,000-tweet tweets.js is ~150 MB
MAX_RATIO = 100  # uncompressed / compressed size past which a member is a zip bomb (tweets.js compresses ~10x)
_CHUNK = 1 << 20
_TWEETS_FILE = re.compile(r"(?:^|/)tweets?(?:-part(\d+))?\.js$")


class _Tree:
    """The files of an archive as relative POSIX paths, read with a size limit: a folder, a zip, or one file."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path, self.limit = path, limit
        self.zip: zipfile.ZipFile | None = None
        self.members: dict[str, Any] = {}
        self.lone: str | None = None  # the file itself when the user gave one .js file
        if path.is_dir():
            self._scan_dir(path)
        elif zipfile.is_zipfile(path):
            self._scan_zip(path)
        else:  # a lone .js file: it alone, plus the account.js and manifest.js beside it for the name
            self.lone = path.name
            for sibling in (path, path.with_name("account.js"), path.with_name("manifest.js")):
                if sibling.is_file() and not sibling.is_symlink():
                    self.members[sibling.name] = sibling

    def _scan_dir(self, root: Path) -> None:
        for folder, _, files in os.walk(root):  # os.walk does not follow linked folders
            for name in files:
                full = Path(folder, name)
                if not full.is_symlink():
                    self.members[full.relative_to(root).as_posix()] = full

    def _scan_zip(self, path: Path) -> None:
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise ArchiveError(f"{path}: not a readable zip file ({e})") from None
        for info in self.zip.infolist():
            name = info.filename.replace("\\", "/")
            parts = name.split("/")
            unsafe = name.startswith("/") or ".." in parts or re.match(r"^[A-Za-z]:", name)
            is_link = stat.S_ISLNK(info.external_attr >> 16)
            if unsafe or is_link:
                log.warning("%s: skipping unsafe member %r", path, info.filename)
            elif not info.is_dir():
                self.members[posixpath.normpath(name)] = info

    def read(self, name: str) -> bytes:
        """The bytes of one member, refusing anything larger than the limit or compressed like a bomb."""
        member, where = self.members[name], f"{self.path}:{name}"
        if isinstance(member, Path):
            if member.stat().st_size > self.limit:
                raise ArchiveError(f"{where}: larger than {self.limit} bytes; not a tweets file we can read")
            return member.read_bytes()
        assert self.zip is not None
        if member.file_size > self.limit or member.file_size > MAX_RATIO * max(member.compress_size, _CHUNK):
            raise ArchiveError(f"{where}: declared {member.file_size} bytes from {member.compress_size}: "
                               "refusing a member this large or this compressed (a zip bomb?)")
        chunks, total = [], 0
        try:
            with self.zip.open(member) as f:
                while chunk := f.read(_CHUNK):
                    total += len(chunk)
                    if total > self.limit or total > MAX_RATIO * max(member.compress_size, _CHUNK):
                        raise ArchiveError(f"{where}: unpacks past its declared size: refusing it (a zip bomb?)")
                    chunks.append(chunk)
        except (zipfile.BadZipFile, zlib.error, RuntimeError, OSError, EOFError) as e:  # zlib.error: damaged data
            raise ArchiveError(f"{where}: cannot be read from the zip, it is damaged ({e}); download the archive "
                               "again") from None
        return b"".join(chunks)

    def find(self, basename: str) -> str | None:
        """The shallowest member with this file name."""
        hits = [n for n in self.members if posixpath.basename(n) == basename]
        return min(hits, key=lambda n: (n.count("/"), n)) if hits else None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def read_archive(path: Path, *, name: str | None = None, limit: int = MAX_MEMBER_BYTES) -> tuple[str, list[Tweet]]:
    """Read every tweet of an X archive.

    Args:
        path: the .zip, the unpacked folder, or a tweets.js / tweet.js file.
        name: the user name to give the tweets; by default the archive's own (account.js, manifest.js).
        limit: the largest member read, in bytes.

    Returns:
        The user name and the tweets, in the archive's order.

    Raises:
        ArchiveError: no tweets file, a listed part missing, a member too large; DataError for malformed JS.
    """
    if not path.exists():
        raise ArchiveError(f"{path}: no such file or folder; give an X archive .zip, its folder or its tweets.js")
    tree = _Tree(path, limit)
    try:
        manifest = _read_optional(tree, "manifest.js")
        files = _tweet_files(tree, manifest)
        user = name or _archive_user(tree, manifest) or _user_from_path(path)
        user = check_user_name(user, where=str(path))
        tweets: list[Tweet] = []
        for member in files:
            where = str(path) if tree.lone else f"{path}:{member}"
            tweets.extend(_tweets_of(parse_js(tree.read(member), where), user, where))
    finally:
        tree.close()
    log.debug("%s: %d tweets of %s from %s", path, len(tweets), user, ", ".join(files))
    return user, tweets


def _user_from_path(path: Path) -> str:
    """"smithjd_tweets.js" -> smithjd; ".../alice/data/tweets.js" -> alice; "twitter-2024.zip" -> twitter-2024."""
    if path.is_file() and _TWEETS_FILE.search(path.name):
        folder = path.parent.parent if path.parent.name == "data" else path.parent
        return user_from_stem(folder.resolve().name)
    return user_from_stem(path.stem)


def _read_optional(tree: _Tree, basename: str) -> Any:
    member = tree.find(basename)
    return parse_js(tree.read(member), f"{tree.path}:{member}") if member else None


def _tweet_files(tree: _Tree, manifest: Any) -> list[str]:
    """The members holding tweets, in part order: from the manifest when it lists them, else by name."""
    if tree.lone:
        return [tree.lone]
    listed = _manifest_files(manifest)
    if listed:
        base = posixpath.dirname(tree.find("manifest.js") or "")
        root = posixpath.dirname(base) if posixpath.basename(base) == "data" else base
        found, missing = [], []
        for file_name in listed:
            candidates = [posixpath.normpath(posixpath.join(root, file_name)),
                          posixpath.normpath(posixpath.join(base, posixpath.basename(file_name)))]
            hit = next((c for c in candidates if c in tree.members), None)
            (found if hit else missing).append(hit or file_name)
        if missing:
            raise ArchiveError(f"{tree.path}: manifest.js lists tweets in {', '.join(missing)}, "
                               "which the archive does not contain; give the complete archive")
        return found
    hits = [(m.group(1), n) for n in tree.members if (m := _TWEETS_FILE.search(n))]
    if not hits:
        raise ArchiveError(f"{tree.path}: no tweets.js or tweet.js in this archive; give the archive X sent you "
                           "(the .zip, its folder, or data/tweets.js)")
    depth = min(n.count("/") for _, n in hits)
    return [n for part, n in sorted((int(p or 0), n) for p, n in hits if n.count("/") == depth)]


def _manifest_files(manifest: Any) -> list[str]:
    if not isinstance(manifest, dict):
        return []
    types = manifest.get("dataTypes")
    for key in ("tweets", "tweet"):
        entry = types.get(key) if isinstance(types, dict) else None
        files = entry.get("files") if isinstance(entry, dict) else None
        if isinstance(files, list) and files:
            return [str(f["fileName"]) for f in files if isinstance(f, dict) and f.get("fileName")]
    return []


def _archive_user(tree: _Tree, manifest: Any) -> str | None:
    account = _read_optional(tree, "account.js")
    if isinstance(account, list) and account and isinstance(account[0], dict):
        entry = account[0].get("account")
        username = entry.get("username") if isinstance(entry, dict) else None
        if isinstance(username, str) and username:
            return username
    info = manifest.get("userInfo") if isinstance(manifest, dict) else None
    name = info.get("userName") if isinstance(info, dict) else None
    return name if isinstance(name, str) and name else None


def _tweets_of(entries: Any, user: str, where: str) -> list[Tweet]:
    if not isinstance(entries, list):
        raise DataError(f"{where}: expected a JSON array of tweets, found {type(entries).__name__}")
    tweets = []
    for index, entry in enumerate(entries):
        raw = entry.get("tweet", entry) if isinstance(entry, dict) else None
        tweet_id = raw.get("id_str") or raw.get("id") if isinstance(raw, dict) else None
        text = raw.get("full_text", raw.get("text")) if isinstance(raw, dict) else None
        if tweet_id is None or not isinstance(text, str):
            raise DataError(f"{where}: entry {index} is not a tweet (no id_str/id and full_text)")
        tweets.append(Tweet(
            id=str(tweet_id), user=user, text=text, created_at=to_iso(raw.get("created_at")),
            is_retweet="retweeted_status" in raw or looks_like_retweet(text),
            is_reply=bool(raw.get("in_reply_to_status_id_str") or raw.get("in_reply_to_status_id")
                          or raw.get("in_reply_to_user_id_str") or raw.get("in_reply_to_user_id")),
        ))
    return tweets

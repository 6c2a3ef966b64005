"""Shared test helpers: the committed tiny models, where ../shared/data is, synthetic archives, the fake X API."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests import xapi_fake, helpers and conftest's helpers by name

from helpers import FIXTURES, TINY_GPT2, TINY_LLAMA  # noqa: E402,F401  (tests import these from conftest too)
from xapi_fake import FakeXApi  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def gpt2():
    from tweetgen import Generator

    return Generator.load(TINY_GPT2, device="cpu")


@pytest.fixture(scope="session")
def llama():
    from tweetgen import Generator

    return Generator.load(TINY_LLAMA, device="cpu")


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or a skip when it is absent (a fresh clone has no real data)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


def archive_tweet(i: int, text: str | None = None, **extra: Any) -> dict[str, Any]:
    """One element of a tweets.js array as X writes it: every number a string, `retweeted` always false."""
    tweet = {"retweeted": False, "entities": {"hashtags": [], "user_mentions": [], "urls": []},
             "id_str": str(900 + i), "id": str(900 + i), "created_at": "Wed Oct 19 20:07:25 +0000 2022",
             "full_text": text if text is not None else f"synthetic tweet number {i} has enough words",
             "lang": "en", **extra}
    return {"tweet": tweet}


def js_file(global_name: str, data: Any) -> str:
    """An archive .js file: `window.YTD.<global_name> = <JSON>`, pretty-printed like X's."""
    return f"window.{global_name} = " + json.dumps(data, indent=2, ensure_ascii=False).replace('": ', '" : ')


def write_archive(root: Path, tweets: list[dict[str, Any]], *, username: str = "synthetic_user",
                  parts: int = 1, old_layout: bool = False) -> Path:
    """An unpacked archive folder: data/tweets.js (or tweets-partN.js, or old data/tweet.js), account, manifest."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    kind = "tweet" if old_layout else "tweets"
    chunks = [tweets[i::parts] for i in range(parts)]
    files = []
    for n, chunk in enumerate(chunks):
        name = f"{kind}.js" if n == 0 else f"{kind}-part{n}.js"
        (data / name).write_text(js_file(f"YTD.{kind}.part{n}", chunk), encoding="utf-8")
        files.append({"fileName": f"data/{name}", "globalName": f"YTD.{kind}.part{n}", "count": str(len(chunk))})
    (data / "account.js").write_text(js_file("YTD.account.part0", [{"account": {"username": username,
                                                                                   "accountId": "1"}}]))
    manifest = {"userInfo": {"accountId": "1", "userName": username}, "dataTypes": {kind: {"files": files}}}
    (data / "manifest.js").write_text("window.__THAR_CONFIG = " + json.dumps(manifest, indent=2))
    return root


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch):
    """A fake X API on 127.0.0.1, with X_BEARER_TOKEN and TWEETGEN_X_API_URL pointing the client at it."""
    fake = FakeXApi()
    url = fake.start()
    monkeypatch.setenv("X_BEARER_TOKEN", fake.token)
    monkeypatch.setenv("TWEETGEN_X_API_URL", url)
    yield fake
    fake.stop()

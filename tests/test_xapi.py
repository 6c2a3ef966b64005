"""X API v2 source against the local fake: pages, cap, rate limits, retries, resume, every error, the token."""
from __future__ import annotations

import json
import logging

import pytest
from conftest import shared_data

from tweetgen.trainer.errors import XApiError
from tweetgen.trainer.data.fetch import Source, download_user, fetch
from tweetgen.trainer.data.sources import xapi


class Sleeps(list):
    """An injectable sleep that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps():
    return Sleeps()


def client(sleeps, **kwargs):
    return xapi.XApiClient.from_env(sleep=sleeps, timeout=2.0, **kwargs)


def test_timeline_in_pages_of_100_with_fields(fake_api, sleeps, tmp_path):
    fake_api.add_user("alice", 250, retweet_every=10, reply_every=7)
    user, tweets = download_user("alice", tmp_path, client(sleeps))
    assert user == "alice" and len(tweets) == 250 and len({t.id for t in tweets}) == 250
    assert sum(t.is_retweet for t in tweets) == 25
    assert sum(t.is_reply for t in tweets) == len([i for i in range(250) if i % 10 and i % 7 == 0])
    assert tweets[0].created_at == "2022-10-01T12:00:00Z"
    pages = fake_api.timeline_requests()
    assert [p.get("pagination_token") is not None for p in pages] == [False, True, True]
    assert all(p["max_results"] == "100" and "referenced_tweets" in p["tweet.fields"] for p in pages)
    assert not (tmp_path / "raw" / "alice.partial.json").exists()
    assert len((tmp_path / "raw" / "alice.jsonl").read_text().splitlines()) == 250
    assert sleeps == []


def test_the_3200_cap(fake_api, sleeps, tmp_path):
    fake_api.add_user("prolific", 3500)
    _, tweets = download_user("prolific", tmp_path, client(sleeps))
    assert len(tweets) == 3200 and len({t.id for t in tweets}) == 3200
    assert len(fake_api.timeline_requests()) == 32


def test_rate_limit_waits_until_reset_and_says_so(fake_api, sleeps, tmp_path):
    fake_api.add_user("alice", 150)
    fake_api.rate_limited = {1, 3}  # the lookup and the second page
    fake_api.reset_in = 30
    lines = []
    _, tweets = download_user("alice", tmp_path, client(sleeps, report=lines.append), report=lines.append)
    assert len(tweets) == 150
    assert len(sleeps) == 2 and all(29 <= s <= 32 for s in sleeps)
    assert sum("rate-limited by X: waiting until" in line for line in lines) == 2


def test_server_errors_and_dropped_connections_are_retried(fake_api, sleeps, tmp_path):
    fake_api.add_user("alice", 450)
    fake_api.failures = {1: 503, 2: "drop", 4: 500, 5: 500, 7: "drop"}
    _, tweets = download_user("alice", tmp_path, client(sleeps))
    assert len(tweets) == 450 and len({t.id for t in tweets}) == 450
    assert sleeps == [1.0, 2.0, 1.0, 2.0, 1.0]  # backoff restarts for each request


def test_too_many_failures_then_resume_where_it_stopped(fake_api, sleeps, tmp_path):
    fake_api.add_user("alice", 450)
    fake_api.failures = {n: 500 for n in range(4, 10)}  # page 3 fails past the 5 retries
    with pytest.raises(XApiError, match="did not answer"):
        download_user("alice", tmp_path, client(sleeps))
    state = json.loads((tmp_path / "raw" / "alice.partial.json").read_text())
    assert len(state["tweets"]) == 200 and state["next_token"]
    assert not (tmp_path / "raw" / "alice.jsonl").exists()
    fake_api.failures = {}
    fake_api.requests.clear()
    _, tweets = download_user("alice", tmp_path, client(sleeps))
    assert len(tweets) == 450 and len({t.id for t in tweets}) == 450
    assert [p.get("pagination_token") for p in fake_api.timeline_requests()][0] == state["next_token"]
    assert not any(path.endswith("/username/alice") for path, _ in fake_api.requests)  # the id was kept


def test_second_fetch_asks_nothing(fake_api, sleeps, tmp_path):
    fake_api.add_user("alice", 120)
    factory = lambda **kw: client(sleeps, **kw)  # noqa: E731
    first = fetch([Source("user", "alice")], tmp_path, client_factory=factory)
    count = len(fake_api.requests)
    second = fetch([Source("user", "alice")], tmp_path, client_factory=factory)
    assert first == second and len(first["alice"]) == 120 and len(fake_api.requests) == count


@pytest.mark.parametrize("setup, username, message", [
    (lambda f: None, "nobody", "X has no user @nobody"),
    (lambda f: f.add_user("gone", 5, suspended=True), "gone", "@gone is suspended"),
    (lambda f: f.add_user("secret", 5, protected=True), "secret", "@secret's tweets are protected"),
    (lambda f: None, "not a name!", "is not an X username"),
    (lambda f: None, "waytoolongusername123", "is not an X username"),
    (lambda f: setattr(f, "usage_capped", True), "alice", "usage cap is exhausted"),
    (lambda f: setattr(f, "token", "another-token"), "alice", "refused the bearer token \\(401"),
])
def test_clear_errors(fake_api, sleeps, tmp_path, setup, username, message):
    fake_api.add_user("alice", 5)
    setup(fake_api)
    with pytest.raises(XApiError, match=message):
        download_user(username, tmp_path, client(sleeps))
    assert sleeps == []  # none of these is worth waiting or retrying for


def test_protected_timeline_answered_with_200_errors(fake_api, sleeps):
    user = fake_api.add_user("alice", 5)
    user.protected = True
    pages = xapi.timeline_pages(client(sleeps), user.id, "alice")
    with pytest.raises(XApiError, match="protected"):
        next(pages)


def test_server_400_for_a_bad_name_is_reported(fake_api, sleeps):
    with pytest.raises(XApiError, match="HTTP 400.*invalid"):
        client(sleeps).get("/2/users/by/username/bad-name", {})


def test_missing_or_malformed_token(monkeypatch):
    monkeypatch.delenv("X_BEARER_TOKEN", raising=False)
    with pytest.raises(XApiError, match="set X_BEARER_TOKEN"):
        xapi.XApiClient.from_env()
    monkeypatch.setenv("X_BEARER_TOKEN", "abc def\u00e9")
    with pytest.raises(XApiError) as info:
        xapi.XApiClient.from_env()
    assert "abc" not in str(info.value)


def test_the_token_appears_nowhere(fake_api, sleeps, tmp_path, caplog, monkeypatch):
    secret = "AAAASECRETtoken%2Fxyz123"
    fake_api.token = secret
    monkeypatch.setenv("X_BEARER_TOKEN", secret)
    fake_api.add_user("alice", 230)
    fake_api.failures = {2: 500, 3: "drop"}
    fake_api.rate_limited = {4}
    errors = []
    with caplog.at_level(logging.DEBUG):
        c = client(sleeps, report=errors.append)
        download_user("alice", tmp_path, c)
        errors.append(repr(c))
        for name in ("nobody", "bad name"):
            with pytest.raises(XApiError) as info:
                download_user(name, tmp_path, c)
            errors.append(str(info.value))
        monkeypatch.setenv("X_BEARER_TOKEN", secret + "x")
        with pytest.raises(XApiError) as info:
            download_user("alice", tmp_path / "other", client(sleeps))
        errors.append(str(info.value))
    files = [p.read_text(encoding="utf-8") for p in tmp_path.rglob("*") if p.is_file()]
    assert files and caplog.records and len(errors) > 3
    for text in [caplog.text, *(r.getMessage() for r in caplog.records), *files, *errors]:
        assert secret not in text and "SECRET" not in text


@pytest.mark.shared_data
def test_fake_answers_like_the_recorded_responses(fake_api, sleeps):
    folder = shared_data("x_api_v2", "tweepy_cassettes_decoded")
    user_rec = json.loads((folder / "test_client_get_user.0.json").read_text())
    tweets_rec = json.loads((folder / "test_client_get_users_tweets.0.json").read_text())
    fake_api.add_user("Twitter", 150)
    c = client(sleeps)
    user = c.get("/2/users/by/username/Twitter", {})
    assert set(user["data"]) == set(user_rec["body"]["data"])
    page = c.get(f"/2/users/{user['data']['id']}/tweets", {"max_results": 100})
    assert set(page) == set(tweets_rec["body"]) and set(page["meta"]) == set(tweets_rec["body"]["meta"])
    assert set(page["data"][0]) == set(tweets_rec["body"]["data"][0])
    status, headers, _ = c._request(f"{c.base_url}/2/users/by/username/Twitter")
    assert status == 200
    for name in tweets_rec["headers"]:
        if name != "date":
            assert name in headers, name

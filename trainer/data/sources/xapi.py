"""A user's tweets from the X API v2: user lookup, then the timeline in pages of 100 up to the 3,200 cap.

The bearer token comes from `X_BEARER_TOKEN` and goes only into the Authorization header: never into a message,
a log record or a file. The base URL is `TWEETGEN_X_API_URL` (default https://api.x.com), so tests can point it at
a local fake. The token is sent to that origin only: redirects are never followed, and every message is scrubbed
of it. A 429 waits until `x-rate-limit-reset`, but never longer than the longest wait; 5xx answers and timeouts are
retried with backoff; one answer must arrive whole within its timeout (a body that drips in counts as a timeout); the
whole download ends by its deadline; a next-page token seen before, or empty pages that keep pointing on, end it too.
Anything else that is wrong (unknown, suspended or protected user, bad name, 401, usage cap) is an XApiError saying
so; what was downloaded stays cached, and the same command resumes.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from tweetgen.trainer.errors import XApiError
from tweetgen.trainer.data.records import Tweet, looks_like_retweet, to_iso

log = logging.getLogger(__name__)

TOKEN_ENV = "X_BEARER_TOKEN"
URL_ENV = "TWEETGEN_X_API_URL"
DEFAULT_URL = "https://api.x.com"
TIMELINE_CAP = 3200  # the API serves only a user's 3,200 most recent tweets
PAGE_SIZE = 100  # max_results: the API allows 5..100
MAX_WAIT = 20 * 60.0  # seconds: the longest rate-limit wait (X's windows are 15 minutes)
DEADLINE = 2 * 3600.0  # seconds: a whole download, waits included
MAX_BODY = 16 << 20  # bytes: the largest answer read (a page of 100 tweets is ~100 KB)
EMPTY_PAGES = 3  # empty pages in a row that still point to a next one before the download stops
TWEET_FIELDS = "created_at,referenced_tweets,in_reply_to_user_id,note_tweet"
_USERNAME = re.compile(r"^[A-Za-z0-9_]{1,15}$")

Report = Callable[[str], None]  # receives one line of progress for the display


def token_from_env() -> str:
    """The bearer token from X_BEARER_TOKEN; an XApiError (that never echoes the value) when unset or malformed."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise XApiError(f"--user needs an X API bearer token: set {TOKEN_ENV} "
                        "(developer.x.com, your app, Keys and tokens), or use --archive / --file instead")
    if not all(33 <= ord(c) < 127 for c in token):
        raise XApiError(f"{TOKEN_ENV} holds characters no bearer token has (spaces, quotes or non-ASCII); "
                        "copy the token again")
    return token


class XApiClient:
    """GET requests to the X API v2 with retries; one instance per download.

    Args:
        token: the bearer token.
        base_url: where the API is; requests go to `{base_url}/2/...`.
        timeout: seconds to wait for one answer.
        retries: how many times a 5xx answer or a timeout is retried (backoff 1, 2, 4, ... s, at most 60).
        rate_waits: how many 429 waits in a row before giving up.
        max_wait: the longest rate-limit wait, in seconds; a later reset is an error saying when to run again.
        deadline: seconds the client may spend in all (requests and waits) before it stops with an error.
        sleep, clock: injectable for tests.
        report: receives progress lines (a rate-limit wait says until when).
    """

    def __init__(self, token: str, base_url: str = DEFAULT_URL, *, timeout: float = 30.0, retries: int = 5,
                 rate_waits: int = 20, max_wait: float = MAX_WAIT, deadline: float = DEADLINE,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time,
                 report: Report | None = None) -> None:
        for name, value in (("timeout", timeout), ("max_wait", max_wait), ("deadline", deadline)):
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise XApiError(f"{name} must be a number of seconds > 0, not {value!r}")
        self._token = token
        self.base_url = base_url.rstrip("/")
        self.timeout, self.retries, self.rate_waits = timeout, retries, rate_waits
        self.max_wait, self.sleep, self.clock = max_wait, sleep, clock
        self.ends = clock() + deadline
        self.report = report or (lambda line: None)
        self._opener = urllib.request.build_opener(_NoRedirects)
        self.last_failure = "no answer"  # why the last request got no answer (for the error message)

    def __repr__(self) -> str:  # never show the token
        return f"XApiClient(base_url={self.base_url!r})"

    @classmethod
    def from_env(cls, **kwargs: Any) -> XApiClient:
        """A client with the token from X_BEARER_TOKEN and the URL from TWEETGEN_X_API_URL."""
        return cls(token_from_env(), os.environ.get(URL_ENV) or DEFAULT_URL, **kwargs)

    def scrub(self, text: str) -> str:
        """`text` without the token (a server may echo the Authorization header back)."""
        return text.replace(self._token, "[token]") if self._token else text

    def get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        """The JSON body of a 200 answer, after waiting out rate limits and retrying server errors."""
        try:
            return self._get(path, params)
        except XApiError as exc:
            raise XApiError(self.scrub(str(exc))) from None

    def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        failures = waits = 0
        while True:
            if self.clock() >= self.ends:
                raise XApiError("the download reached its deadline (--deadline); what was downloaded is cached: "
                                "run the same command again to go on")
            status, headers, body = self._request(url)
            if status == 200 and isinstance(body, dict):
                return body
            if status == 429 and not _is_usage_cap(body) and waits < self.rate_waits:
                waits += 1
                self._wait_for_reset(headers)
                continue
            if status == 200 and body is None and failures < self.retries:  # malformed JSON: a glitch, retried
                status = None
            if (status is None or status >= 500) and failures < self.retries:
                delay = min(2.0 ** failures, 60.0)
                failures += 1
                what = f"HTTP {status}" if status else "no answer"
                log.warning("X API %s on %s; retry %d of %d in %.0f s", what, path, failures, self.retries, delay)
                self.report(f"X API {what}: retrying in {delay:.0f} s")
                self.sleep(delay)
                continue
            if status == 429 and not _is_usage_cap(body):
                raise XApiError(f"the X API kept answering 429 Too Many Requests after {waits} waits: the rate "
                                "limit did not clear; run the same command later to resume")
            if status is None:
                raise XApiError(f"the X API did not answer {path} after {failures} retries ({self.last_failure}); "
                                "try later: the same command resumes")
            raise _error_for(status, body, path)

    def _request(self, url: str) -> tuple[int | None, Any, Any]:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self._token}",
                                                       "User-Agent": "tweetgen"})
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                return answer.status, answer.headers, _json_or_none(self._read(answer))
        except urllib.error.HTTPError as e:
            return e.code, e.headers, _json_or_none(self._read(e))
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout, TimeoutError,
                ConnectionError) as e:
            reason = getattr(e, "reason", e)
            what = "connection refused" if isinstance(reason, ConnectionRefusedError) else type(reason).__name__
            log.warning("X API request failed: %s", what)
            self.last_failure = what
            return None, {}, None

    def _read(self, answer: Any) -> bytes:
        """The whole body within `timeout` seconds and MAX_BODY bytes; a body that drips in is a timeout."""
        ends = time.monotonic() + self.timeout
        chunks, size = [], 0
        while True:
            chunk = answer.read1(65536) if hasattr(answer, "read1") else answer.read(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BODY:
                raise http.client.HTTPException(f"an answer over {MAX_BODY} bytes")
            if time.monotonic() > ends:
                raise TimeoutError("the answer did not arrive within the timeout")

    def _wait_for_reset(self, headers: Any) -> None:
        reset = headers.get("x-rate-limit-reset") if headers else None
        retry_after = headers.get("retry-after") if headers else None
        now = self.clock()
        if reset and str(reset).isdigit():
            until = float(reset)
        else:  # no reset time: Retry-After if given, else a minute
            until = now + (float(retry_after) if retry_after and str(retry_after).isdigit() else 60.0)
        delay = max(until - now, 0.0) + 1.0
        clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(min(until, now + 10 * 365 * 86400)))
        if delay > self.max_wait or now + delay > self.ends:
            raise XApiError(f"the X API rate limit resets at {clock}, in {delay:,.0f} s: longer than the longest wait "
                            f"({self.max_wait:,.0f} s, --max-wait) or past the deadline; what was downloaded is "
                            "cached: run the same command again after then")
        log.info("X API rate limit reached: waiting %.0f s, until %s", delay, clock)
        self.report(f"rate-limited by X: waiting until {clock} ({delay:.0f} s)")
        self.sleep(delay)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are answered as they are, never followed: the Authorization header goes to base_url only."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 (urllib's signature)
        return None


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _is_usage_cap(body: Any) -> bool:
    return isinstance(body, dict) and "usage-capped" in str(body.get("type", ""))


def _error_for(status: int | None, body: Any, path: str) -> XApiError:
    """A clear error for an answer that retrying will not fix; built from the body, never from the request."""
    detail = ""
    if isinstance(body, dict):
        first = (body.get("errors") or [{}])[0] if isinstance(body.get("errors"), list) else {}
        detail = str(body.get("detail") or first.get("detail") or first.get("message") or body.get("title") or "")
    if status is None or (status >= 500):
        return XApiError(f"the X API did not answer {path} after several retries ({status or 'timeout'}); try later")
    if status == 401:
        return XApiError(f"the X API refused the bearer token (401 Unauthorized): check {TOKEN_ENV}")
    if status == 429:
        return XApiError(f"the X API usage cap is exhausted ({detail or 'usage capped'}); "
                         "wait for the next period or use an archive")
    if status is not None and 300 <= status < 400:
        return XApiError(f"the X API answered {path} with a redirect (HTTP {status}), which tweetgen does not follow "
                         "with your token; check TWEETGEN_X_API_URL")
    if status == 403:
        return XApiError(f"the X API forbids this request (403: {detail or 'Forbidden'}); "
                         "your app's access level may not include user timelines")
    return XApiError(f"the X API answered HTTP {status} for {path}: {detail or 'no detail'}")


def check_username(username: str) -> str:
    """`username` without a leading "@", or an XApiError if X would refuse it."""
    name = username.strip().removeprefix("@")
    if not _USERNAME.match(name):
        raise XApiError(f"{username!r} is not an X username: 1 to 15 letters, digits or '_'")
    return name


def lookup_user(client: XApiClient, username: str) -> str:
    """The numeric id of `username`, with a clear XApiError for a bad, unknown, suspended or protected user."""
    username = check_username(username)
    body = client.get(f"/2/users/by/username/{username}", {"user.fields": "protected"})
    user = body.get("data")
    if not isinstance(user, dict) or not user.get("id"):
        raise _user_problem(username, body)
    if user.get("protected"):
        raise XApiError(f"@{username}'s tweets are protected: only approved followers can read them; "
                        "ask them for their archive and use --archive")
    return str(user["id"])


def _user_problem(username: str, body: dict[str, Any]) -> XApiError:
    errors = body.get("errors") if isinstance(body.get("errors"), list) else [{}]
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    detail = str(first.get("detail") or first.get("message") or "")
    if "suspend" in detail.lower():
        return XApiError(f"@{username} is suspended: X serves none of their tweets")
    if "not-authorized" in str(first.get("type", "")):
        return XApiError(f"@{username}'s tweets are protected: use their archive with --archive")
    if "resource-not-found" in str(first.get("type", "")) or "could not find" in detail.lower():
        return XApiError(f"X has no user @{username}: check the spelling")
    return XApiError(f"X API lookup of @{username} failed: {detail or 'no user in the answer'}")


def timeline_pages(client: XApiClient, user_id: str, username: str,
                   token: str | None = None) -> Iterator[tuple[list[Tweet], str | None]]:
    """Yield each page of the user's timeline with the pagination token of the next one (None after the last).

    Starts at `token` to resume an interrupted download.
    """
    seen: set[str] = {token} if token else set()
    empty = 0
    while True:
        params: dict[str, Any] = {"max_results": PAGE_SIZE, "tweet.fields": TWEET_FIELDS}
        if token:
            params["pagination_token"] = token
        body = client.get(f"/2/users/{user_id}/tweets", params)
        if "data" not in body and body.get("errors"):
            raise _user_problem(username, body)
        data, meta = body.get("data") or [], body.get("meta") or {}
        if not isinstance(data, list) or not isinstance(meta, dict):
            raise XApiError(f"the X API's timeline page for @{username} is malformed (data is not a list or meta "
                            "not an object); run the same command later to resume")
        tweets = [tweet for raw in data if (tweet := _tweet(raw, username)) is not None]
        token = meta.get("next_token")
        token = str(token) if token else None
        empty = 0 if tweets else empty + 1
        yield tweets, token
        if not token:
            return
        if token in seen:
            raise XApiError(f"the X API sent the next-page token {token!r} for @{username} a second time: the "
                            "pages would loop; what was downloaded is cached")
        if empty >= EMPTY_PAGES:
            raise XApiError(f"the X API sent {empty} empty pages in a row for @{username} that still point to a "
                            "next one; stopping there, what was downloaded is cached")
        seen.add(token)


def _tweet(raw: Any, username: str) -> Tweet | None:
    """A Tweet from one element of `data`; None (logged) for an element without an id or text."""
    if not isinstance(raw, dict) or not raw.get("id") or not isinstance(raw.get("text", ""), str):
        log.warning("@%s: a timeline element without an id or text, skipped", username)
        return None
    refs = {r.get("type") for r in raw.get("referenced_tweets") or [] if isinstance(r, dict)}
    note = raw.get("note_tweet")
    text = note["text"] if isinstance(note, dict) and isinstance(note.get("text"), str) else str(raw.get("text", ""))
    return Tweet(
        id=str(raw["id"]), user=username, text=text, created_at=to_iso(raw.get("created_at")),
        is_retweet="retweeted" in refs or looks_like_retweet(text),
        is_reply="replied_to" in refs or bool(raw.get("in_reply_to_user_id")),
    )

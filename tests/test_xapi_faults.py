"""The X API client under a hostile or broken server: the token goes to the API's origin only and shows nowhere,
and every download ends (repeated or empty pages, far-away rate-limit resets, dripping bodies)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tweetgen.trainer.data.fetch import Source, fetch
from tweetgen.trainer.data.sources import xapi
from tweetgen.trainer.errors import XApiError

TOKEN = "AAAAsecret-bearer-token-0123456789"


class Server:
    """A local HTTP server whose every GET is answered by `respond(handler)`; it records each request's headers."""

    def __init__(self, respond):
        self.respond = respond
        self.seen: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.seen.append({k.lower(): v for k, v in self.headers.items()})
                server.respond(self)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def send(handler, status, body, headers=None):
    data = json.dumps(body).encode() if not isinstance(body, bytes) else body
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@pytest.fixture
def servers():
    made = []
    yield lambda respond: made.append(Server(respond)) or made[-1]
    for server in made:
        server.close()


def client(url, **options):
    options.setdefault("sleep", lambda seconds: None)
    return xapi.XApiClient(TOKEN, url, timeout=2.0, **options)


def test_a_redirect_to_another_origin_never_gets_the_token(servers):
    elsewhere = servers(lambda h: send(h, 200, {"data": {"id": "1", "username": "alice"}}))
    api = servers(lambda h: send(h, 302, b"", {"Location": elsewhere.url + "/2/users/by/username/alice"}))
    with pytest.raises(XApiError, match="redirect") as error:
        xapi.lookup_user(client(api.url), "alice")
    assert elsewhere.seen == [] and api.seen[0]["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in str(error.value)


def test_an_error_that_echoes_the_header_does_not_print_the_token(servers, caplog):
    api = servers(lambda h: send(h, 400, {"title": "Invalid Request",
                                          "detail": f"bad header Authorization: {h.headers['Authorization']}"}))
    with pytest.raises(XApiError) as error:
        xapi.lookup_user(client(api.url), "alice")
    assert "bad header" in str(error.value) and TOKEN not in str(error.value) + caplog.text


def _timeline(pages):
    """A server answering the user lookup, then the timeline pages in turn (the last one again and again)."""
    answered = []

    def respond(handler):
        if "/users/by/username/" in handler.path:
            return send(handler, 200, {"data": {"id": "7", "username": "alice"}})
        page = pages[min(len(answered), len(pages) - 1)]
        answered.append(handler.path)
        send(handler, 200, page)
    return respond


def _page(start, count, next_token):
    data = [{"id": str(start + i), "text": f"tweet {start + i} says a few words"} for i in range(count)]
    return {"data": data, "meta": {"result_count": count, **({"next_token": next_token} if next_token else {})}}


@pytest.mark.parametrize("pages, message", [
    ([_page(1, 5, "A"), _page(6, 5, "B"), _page(11, 5, "A")], "a second time"),  # a token that repeats
    ([_page(1, 5, "A"), {"meta": {"result_count": 0, "next_token": "X1"}}, {"meta": {"result_count": 0,
      "next_token": "X2"}}, {"meta": {"result_count": 0, "next_token": "X3"}}, {"meta": {"next_token": "X4"}}],
     "empty pages"),
    ([_page(1, 5, "A"), {"data": {"id": "1"}, "meta": {}}], "malformed"),
    ([_page(1, 5, "A"), {"data": [], "meta": ["next_token", "B"]}], "malformed"),
])
def test_a_timeline_that_would_loop_ends_with_what_it_had_cached(servers, tmp_path, pages, message):
    api = servers(_timeline(pages))
    with pytest.raises(XApiError, match=message):
        fetch([Source("user", "alice")], tmp_path, client_factory=lambda **k: client(api.url, **k))
    partial = json.loads((tmp_path / "raw" / "alice.partial.json").read_text())
    assert len(partial["tweets"]) >= 5  # kept for the next run to resume from
    assert len(api.seen) <= 6


def test_elements_without_an_id_are_skipped_not_a_traceback(servers, tmp_path):
    page = {"data": [{"text": "no id here at all"}, "not even an object", {"id": "9", "text": "a fine tweet here"}],
            "meta": {"result_count": 3}}
    api = servers(_timeline([page]))
    got = fetch([Source("user", "alice")], tmp_path, client_factory=lambda **k: client(api.url, **k))
    assert [t.id for t in got["alice"]] == ["9"]


@pytest.mark.parametrize("headers", [{"x-rate-limit-reset": str(int(time.time()) + 365 * 86400)},
                                     {"retry-after": str(10 ** 9)}])
def test_a_rate_limit_reset_far_away_is_an_error_not_a_wait(servers, headers):
    api = servers(lambda h: send(h, 429, {"title": "Too Many Requests", "type": "about:blank"}, headers))
    waited = []
    with pytest.raises(XApiError, match="longest wait"):
        xapi.lookup_user(client(api.url, sleep=waited.append), "alice")
    assert waited == []


def test_a_429_that_never_clears_says_so(servers):
    api = servers(lambda h: send(h, 429, {"title": "Too Many Requests"}, {"retry-after": "1"}))
    with pytest.raises(XApiError, match="did not clear") as error:
        xapi.lookup_user(client(api.url, rate_waits=3), "alice")
    assert "usage cap" not in str(error.value) and len(api.seen) == 4


def test_the_deadline_ends_a_download_that_keeps_waiting(servers):
    now = [1000.0]
    api = servers(lambda h: send(h, 429, {"title": "Too Many Requests"}, {"retry-after": "30"}))
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    with pytest.raises(XApiError, match="deadline"):
        xapi.lookup_user(client(api.url, sleep=sleep, clock=lambda: now[0], deadline=100.0, rate_waits=50), "alice")
    assert sum(slept) <= 100.0


def test_a_body_that_drips_in_is_a_timeout_and_is_retried_then_reported(servers):
    def drip(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        try:
            for _ in range(1000):
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass

    api = servers(drip)
    started = time.monotonic()
    with pytest.raises(XApiError, match="did not answer"):
        xapi.lookup_user(xapi.XApiClient(TOKEN, api.url, timeout=0.3, retries=1, sleep=lambda s: None), "alice")
    assert time.monotonic() - started < 10


def test_a_200_with_malformed_json_is_retried(servers):
    answers = iter([b"{not json", json.dumps({"data": {"id": "5", "username": "alice"}}).encode()])
    api = servers(lambda h: send(h, 200, next(answers)))
    assert xapi.lookup_user(client(api.url), "alice") == "5" and len(api.seen) == 2


def test_connection_refused_is_not_called_a_timeout(caplog):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(XApiError, match="connection refused") as error:
        xapi.lookup_user(client(f"http://127.0.0.1:{port}", retries=0), "alice")
    assert "timeout" not in str(error.value).lower() + caplog.text.lower()

"""A local fake of the X API v2 user lookup and user timeline, faithful to the recorded responses in
../shared/data/x_api_v2/ (bodies, headers, the HTTP 200 "not found", 429 with x-rate-limit-reset, the 3,200 cap).

Tests toggle scenarios on the instance: `rate_limited` and `failures` are keyed by request number (1-based), so a
test says exactly which request is refused or fails and every other request is answered normally.
"""
from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CAP = 3200
_USERNAME = re.compile(r"^[A-Za-z0-9_]{1,15}$")
PROBLEM = "https://api.twitter.com/2/problems/"


@dataclass
class FakeUser:
    id: str
    username: str
    tweets: list[dict[str, Any]]  # newest first, full objects; fields are filtered per request
    protected: bool = False
    suspended: bool = False


@dataclass
class FakeXApi:
    token: str = "fake-bearer-token"
    users: dict[str, FakeUser] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    rate_limited: set[int] = field(default_factory=set)  # request numbers answered 429
    failures: dict[int, Any] = field(default_factory=dict)  # request number -> 500/503 or "drop" (close, no answer)
    usage_capped: bool = False
    reset_in: int = 1  # x-rate-limit-reset = now + this (seconds)

    def add_user(self, username: str, n_tweets: int, *, retweet_every: int = 0, reply_every: int = 0,
                 protected: bool = False, suspended: bool = False) -> FakeUser:
        """A user with `n_tweets` tweets, newest first; every k-th is a retweet or a reply when asked."""
        user_id = str(1000 + len(self.users))
        tweets = []
        for i in range(n_tweets):
            tweet_id = str(1_600_000_000_000_000_000 - i * 1000 - len(self.users))
            tweet: dict[str, Any] = {"edit_history_tweet_ids": [tweet_id], "id": tweet_id,
                                     "text": f"tweet number {i} from {username} with words",
                                     "created_at": f"2022-10-{1 + i % 28:02d}T12:00:00.000Z"}
            if retweet_every and i % retweet_every == 0:
                tweet["text"] = f"RT @someone: retweeted text {i} …"
                tweet["referenced_tweets"] = [{"type": "retweeted", "id": "42"}]
            elif reply_every and i % reply_every == 0:
                tweet["text"] = f"@friend a reply number {i} here"
                tweet["referenced_tweets"] = [{"type": "replied_to", "id": "43"}]
                tweet["in_reply_to_user_id"] = "77"
            tweets.append(tweet)
        user = FakeUser(user_id, username, tweets, protected, suspended)
        self.users[username.lower()] = user
        return user

    def start(self) -> str:
        """Serve on 127.0.0.1 at a free port; returns the base URL."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                fake._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def timeline_requests(self) -> list[dict[str, str]]:
        return [params for path, params in self.requests if path.endswith("/tweets")]

    # --- answering ---------------------------------------------------------------------------------------------

    def _handle(self, http: BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlsplit(http.path)
        params = dict(urllib.parse.parse_qsl(parsed.query))
        self.requests.append((parsed.path, params))
        number = len(self.requests)
        if http.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(http, 401, {"title": "Unauthorized", "type": "about:blank", "status": 401,
                                          "detail": "Unauthorized"})
        failure = self.failures.get(number)
        if failure == "drop":
            http.close_connection = True
            return
        if failure:
            return self._send(http, failure, {"title": "Service Unavailable", "type": "about:blank",
                                              "status": failure, "detail": "Service Unavailable"})
        if self.usage_capped:
            return self._send(http, 429, {"title": "UsageCapExceeded", "detail": "Usage cap exceeded: Monthly "
                                          "product cap", "type": PROBLEM + "usage-capped", "period": "Monthly",
                                          "scope": "Product"})
        if number in self.rate_limited:
            return self._send(http, 429, {"title": "Too Many Requests", "detail": "Too Many Requests",
                                          "type": "about:blank", "status": 429}, remaining=0)
        if m := re.fullmatch(r"/2/users/by/username/([^/]+)", parsed.path):
            return self._send(http, *self._lookup(urllib.parse.unquote(m.group(1)), params))
        if m := re.fullmatch(r"/2/users/(\d+)/tweets", parsed.path):
            return self._send(http, *self._timeline(m.group(1), params))
        return self._send(http, 404, {"title": "Not Found Error", "type": "about:blank", "status": 404})

    def _lookup(self, name: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if not _USERNAME.match(name):
            return 400, {"errors": [{"parameters": {"username": [name]}, "message": f"The `username` query "
                                     f"parameter value [{name}] does not match ^[A-Za-z0-9_]{{1,15}}$"}],
                         "title": "Invalid Request", "detail": "One or more parameters to your request was invalid.",
                         "type": PROBLEM + "invalid-request"}
        user = self.users.get(name.lower())
        if user is None or user.suspended:
            detail = (f"User has been suspended: [{name}]." if user else
                      f"Could not find user with username: [{name}].")
            return 200, {"errors": [{"value": name, "detail": detail, "title": "Forbidden" if user else
                                     "Not Found Error", "resource_type": "user", "parameter": "username",
                                     "resource_id": name, "type": PROBLEM + "resource-not-found"}]}
        data: dict[str, Any] = {"id": user.id, "name": user.username.title(), "username": user.username}
        if "protected" in params.get("user.fields", "").split(","):
            data["protected"] = user.protected
        return 200, {"data": data}

    def _timeline(self, user_id: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        user = next((u for u in self.users.values() if u.id == user_id), None)
        size = int(params.get("max_results", "10"))
        if not 5 <= size <= 100:
            return 400, {"errors": [{"parameters": {"max_results": [str(size)]}, "message": "The `max_results` "
                                     "query parameter value [%d] is not between 5 and 100" % size}],
                         "title": "Invalid Request", "detail": "One or more parameters to your request was invalid.",
                         "type": PROBLEM + "invalid-request"}
        if user is None or user.protected:
            return 200, {"errors": [{"detail": f"Sorry, you are not authorized to see the user with id: [{user_id}].",
                                     "parameter": "id", "resource_id": user_id, "resource_type": "user",
                                     "section": "data", "title": "Authorization Error",
                                     "type": PROBLEM + "not-authorized-for-resource"}]}
        start = int(params["pagination_token"][3:], 16) if "pagination_token" in params else 0
        reachable = user.tweets[:CAP]
        page = reachable[start:start + size]
        if not page:
            return 200, {"meta": {"result_count": 0}}
        fields = set(params.get("tweet.fields", "").split(","))
        keep = {"id", "text", "edit_history_tweet_ids"} | fields
        meta: dict[str, Any] = {"result_count": len(page), "newest_id": page[0]["id"], "oldest_id": page[-1]["id"]}
        if start + size < len(reachable):
            meta["next_token"] = f"7m4{start + size:x}"
        return 200, {"data": [{k: v for k, v in t.items() if k in keep} for t in page], "meta": meta}

    def _send(self, http: BaseHTTPRequestHandler, status: int, body: dict[str, Any], remaining: int = 1499) -> None:
        data = json.dumps(body).encode()
        http.send_response(status)
        http.send_header("content-type", "application/json; charset=utf-8")
        http.send_header("content-length", str(len(data)))
        http.send_header("api-version", "2.52")
        http.send_header("x-rate-limit-limit", "1500")
        http.send_header("x-rate-limit-remaining", str(remaining))
        http.send_header("x-rate-limit-reset", str(int(time.time()) + self.reset_in))
        http.end_headers()
        http.wfile.write(data)

"""tweetgen-serve --ray: two replicas on this machine behind Ray Serve's proxy (skips where Ray is not installed)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from helpers import TINY_GPT2_FUSED  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _call(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 60) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body, {"Content-Type": "application/json"} if body is not None else {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def ray_server():
    pytest.importorskip("ray.serve")
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen([sys.executable, "-m", "tweetgen.serve", "--ray", "--replicas", "2", "--threads", "1",
                                "-m", str(TINY_GPT2_FUSED), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(process.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    try:
        while True:
            assert process.poll() is None, "tweetgen-serve --ray exited:\n" + "".join(log[-40:])
            try:
                status, _ = _call(port, "GET", "/health", timeout=5)
                if status == 200:
                    break
            except (OSError, http.client.HTTPException, ValueError):
                pass
            assert time.monotonic() < deadline, "Ray Serve did not answer within 300 s:\n" + "".join(log[-40:])
            time.sleep(1.0)
        yield port, process, log
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_two_replicas_answer_through_rays_proxy(ray_server):
    port, _, _ = ray_server
    # the first replica may answer before the second has loaded: ask until both have, for a bounded time
    pids: set[int] = set()
    deadline = time.monotonic() + 120
    while len(pids) < 2 and time.monotonic() < deadline:
        pids |= {_call(port, "GET", "/health")[1]["pid"] for _ in range(10)}
    assert len(pids) == 2, f"health checks over 120 s reached {len(pids)} replica(s): {pids}"

    status, models = _call(port, "GET", "/v1/models")
    assert status == 200 and models["data"][0]["id"] == "tiny_gpt2_fused"

    answers: list[tuple[int, dict]] = []

    def ask(seed: int) -> None:
        answers.append(_call(port, "POST", "/v1/completions", json.dumps(
            {"prompt": "My dream is", "max_tokens": 8, "min_tokens": 8, "n": 2, "seed": seed}).encode()))

    threads = [threading.Thread(target=ask, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for status, _ in answers] == [200] * 8
    for _, body in answers:
        assert len(body["choices"]) == 2
        assert body["usage"]["completion_tokens"] == 16
        assert all(choice["finish_reason"] == "length" for choice in body["choices"])


def test_bad_input_through_the_proxy_is_the_servers_own_error(ray_server):
    port, _, _ = ray_server
    status, body = _call(port, "POST", "/v1/completions", b'{"prompt": "x", "n": 1000}')
    assert status == 422 and body["error"]["param"] == "n" and "from 1 to" in body["error"]["message"]
    status, body = _call(port, "POST", "/v1/completions", b'{"prompt": "My')
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert _call(port, "GET", "/health")[0] == 200


def test_sigterm_stops_the_replicas_and_ray(ray_server):
    port, process, log = ray_server
    process.send_signal(signal.SIGTERM)
    assert process.wait(120) == 0, "".join(log[-40:])
    with pytest.raises(OSError):
        _call(port, "GET", "/health", timeout=5)


def test_ray_options_without_ray_or_with_bad_counts_are_refused(monkeypatch, capsys):
    from tweetgen.serve import main

    assert main(["--replicas", "2", "-m", str(TINY_GPT2_FUSED)]) == 1
    assert "--replicas needs --ray" in capsys.readouterr().err
    assert main(["--ray", "--replicas", "0", "-m", str(TINY_GPT2_FUSED)]) == 1
    assert "--replicas must be from 1 to 256" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    assert main(["--ray", "-m", str(TINY_GPT2_FUSED)]) == 1
    assert 'pip install "tweetgen[ray]"' in capsys.readouterr().err

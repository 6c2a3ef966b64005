"""Load test of tweetgen-serve: continuous batching on against off, closed-loop clients on 127.0.0.1.

    PYTHONPATH=. python -m benchmarks.serve_load                         # exported/tweety, 1/8/32 clients
    PYTHONPATH=. python -m benchmarks.serve_load -m DIR --clients 1 8 32 --requests 4 --new-tokens 64

Two fresh `tweetgen-serve` processes, batching on and off, are started on free ports of 127.0.0.1, and loaded in
turn (alternating over --rounds, so that a shared machine's slow spells fall on both). At each concurrency C, C
client threads each send requests one after another (closed loop: a client sends its next
request when its last one is answered) until C x --requests requests are answered or --max-seconds pass. Every
request asks for one tweet of exactly --new-tokens tokens (min_tokens = max_tokens; no character cut), so the two
modes decode the same amount of work. Reported: tweets/s, p50 and p95 latency, the server's peak RSS and its CPU
use while idle (a batching loop must not spin), the ratios on/off at each concurrency, and the latency of
Generator.generate called directly in this process (no server) as the 1-client baseline.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # never anything else: the script loads only a server of its own


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def post(port: int, body: dict, timeout: float = 600) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def proc_times(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """A tweetgen-serve process of our own on 127.0.0.1."""

    def __init__(self, model: str, batching: bool, threads: int | None) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "tweetgen.serve", "-m", model, "--host", HOST, "--port", str(self.port),
                   "--max-queue", "256", "--device", "cpu"]
        if not batching:
            command.append("--no-batching")
        if threads:
            command += ["--threads", str(threads)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while True:  # a fresh process: nothing to wait on but its port
            if self.process.poll() is not None:
                raise SystemExit(f"tweetgen-serve exited: {self.process.stderr.read()}")
            try:
                connection = http.client.HTTPConnection(HOST, self.port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("tweetgen-serve did not start within 120 s") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def load(port: int, clients: int, requests: int, max_seconds: float, new_tokens: int, prompt: str,
         voice: str | None) -> dict:
    """C closed-loop clients; latencies of the answered requests, wall time, status counts."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    left = [clients * requests]
    deadline = time.monotonic() + max_seconds

    def client(index: int) -> None:
        count = 0
        while time.monotonic() < deadline:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            body = {"prompt": prompt, "max_tokens": new_tokens, "min_tokens": new_tokens, "seed": index * 1000 + count}
            if voice:
                body["voice"] = voice
            start = time.perf_counter()
            status, _ = post(port, body)
            took = time.perf_counter() - start
            count += 1
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(took)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    latencies.sort()
    return {"clients": clients, "answered": len(latencies), "seconds": wall, "statuses": statuses,
            "latencies": list(latencies),
            "tweets_per_s": len(latencies) / wall if wall else 0.0,
            "p50_s": statistics.median(latencies) if latencies else float("nan"),
            "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else float("nan")}


MALFORMED = [b'{"prompt": "My', b"[1, 2]", b"\xff\xfe", b'{"prompt": 5}', b'{"prompt": "x", "n": "3"}',
             b'{"prompt": "x", "n": 0}', b'{"prompt": "x", "n": 1000}', b'{"prompt": "x", "max_tokens": -1}',
             b'{"prompt": "x", "max_tokens": 100000}', b'{"prompt": "x", "temperature": "hot"}',
             b'{"prompt": "x", "top_p": 7}', b'{"prompt": "x", "stop": [1]}', b'{"prompt": "x", "stream": "yes"}',
             b'{"prompt": "x", "frobnicate": 1}', b'{"prompt": "x", "voice": "nobody-at-all"}',
             b'{"prompt": "x", "model": "gpt-4"}', b'{"prompt": "' + b"word " * 400 + b'"}',
             b'{"prompt": "' + b"x" * 70000 + b'"}', b"", b"null", b'{"prompt": null, "n": null, "seed": -5}']


def malformed(port: int, count: int) -> dict[int, int]:
    """Send `count` malformed requests (cycling through MALFORMED); the count of each status code."""
    statuses: dict[int, int] = {}
    for i in range(count):
        connection = http.client.HTTPConnection(HOST, port, timeout=60)
        try:
            connection.request("POST", "/v1/completions", MALFORMED[i % len(MALFORMED)],
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            body = response.read()
            if b"Traceback" in body:
                raise SystemExit(f"a traceback in the answer to {MALFORMED[i % len(MALFORMED)][:60]!r}")
            statuses[response.status] = statuses.get(response.status, 0) + 1
        finally:
            connection.close()
    return dict(sorted(statuses.items()))


def direct_latency(model: str, new_tokens: int, prompt: str, voice: str | None, repeats: int,
                   threads: int | None) -> float:
    """Median seconds of Generator.generate for one tweet of new_tokens tokens, in this process."""
    from tweetgen import Generator

    generator = Generator.load(model, device="cpu", threads=threads)
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        generator.generate(prompt, seed=seed, max_new_tokens=new_tokens, min_new_tokens=new_tokens, max_chars=None,
                           user=voice, allow_copies=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--model", default=str(REPO / "exported" / "tweety"))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=4, help="requests per client at each concurrency and round (4)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the modes alternating within each (2)")
    parser.add_argument("--max-seconds", type=float, default=120, help="bound on each concurrency's run (120)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt", default="My dream is")
    parser.add_argument("--voice", help="a voice of a multi-user model (default: the model's first)")
    parser.add_argument("--threads", type=int, help="onnxruntime threads of the server (default: one per core)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--malformed", type=int, default=0,
                        help="instead: send this many malformed requests, count the answers by status, then a good one")
    args = parser.parse_args(argv)
    if not all(1 <= c <= 256 for c in args.clients) or not 1 <= args.requests <= 100 or not 1 <= args.rounds <= 20:
        parser.error("--clients must be from 1 to 256, --requests from 1 to 100 and --rounds from 1 to 20")
    voice = args.voice
    if voice is None:
        users = json.loads((Path(args.model) / "tweetgen.json").read_text()).get("users", {}) \
            if (Path(args.model) / "tweetgen.json").is_file() else {}
        voice = sorted(users)[0] if users else None
    if args.malformed:
        server = Server(args.model, True, args.threads)
        try:
            counts = malformed(server.port, args.malformed)
            status, reply = post(server.port, {"prompt": args.prompt, "max_tokens": 8, "seed": 0})
            print(f"{args.malformed} malformed requests: status counts {counts}; then a good one: {status}, "
                  f"{reply['choices'][0]['text']!r}")
        finally:
            server.stop()
        return 0
    results: dict = {"model": args.model, "new_tokens": args.new_tokens, "rounds": args.rounds, "runs": {}}
    modes = {"batching": True, "no-batching": False}
    servers = {mode: Server(args.model, batching, args.threads) for mode, batching in modes.items()}
    try:
        before = {mode: proc_times(server.process.pid) for mode, server in servers.items()}
        time.sleep(2.0)  # both idle: how much CPU does a server use doing nothing?
        idle = {mode: (proc_times(server.process.pid) - before[mode]) / 2.0 for mode, server in servers.items()}
        # the modes alternate (which one goes first too) round by round: a busy shared machine's slow spells fall
        # on both
        samples = {mode: {c: {"latencies": [], "seconds": 0.0, "answered": 0, "statuses": {}} for c in args.clients}
                   for mode in modes}
        for round_ in range(args.rounds):
            for clients in args.clients:
                order = list(modes) if round_ % 2 == 0 else list(modes)[::-1]
                for mode in order:
                    run = load(servers[mode].port, clients, args.requests, args.max_seconds, args.new_tokens,
                               args.prompt, voice)
                    into = samples[mode][clients]
                    into["latencies"] += run.pop("latencies")
                    into["seconds"] += run["seconds"]
                    into["answered"] += run["answered"]
                    for code, count in run["statuses"].items():
                        into["statuses"][code] = into["statuses"].get(code, 0) + count
                    print(f"round {round_ + 1} {mode:12} {clients:3} clients: {run['tweets_per_s']:6.2f} tweets/s  "
                          f"p50 {run['p50_s']:.3f} s  p95 {run['p95_s']:.3f} s", flush=True)
        for mode, server in servers.items():
            runs = []
            for clients in args.clients:
                got = samples[mode][clients]
                latencies = sorted(got["latencies"])
                runs.append({"clients": clients, "answered": got["answered"], "seconds": got["seconds"],
                             "statuses": got["statuses"], "tweets_per_s": got["answered"] / got["seconds"],
                             "p50_s": statistics.median(latencies),
                             "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]})
            results["runs"][mode] = {"runs": runs, "idle_cpu_fraction": idle[mode],
                                     "peak_rss_mb": peak_rss_mb(server.process.pid)}
    finally:
        for server in servers.values():
            server.stop()
    print(f"\n{'mode':12} {'clients':>7} {'tweets/s':>9} {'p50 s':>7} {'p95 s':>7}  answered")
    for mode, result in results["runs"].items():
        for run in result["runs"]:
            print(f"{mode:12} {run['clients']:7} {run['tweets_per_s']:9.2f} {run['p50_s']:7.3f} {run['p95_s']:7.3f}  "
                  f"{run['answered']} (status {run['statuses']})")
        print(f"{mode:12} idle CPU {result['idle_cpu_fraction']:.1%} of a core over 2 s, peak RSS "
              f"{result['peak_rss_mb']:.0f} MB")
    direct = direct_latency(args.model, args.new_tokens, args.prompt, voice, 5, args.threads)
    results["direct_generate_s"] = direct
    print(f"\nGenerator.generate in-process, 1 tweet: {direct:.3f} s (median of 5)")
    print("\nratios (batching / no batching):")
    for on, off in zip(results["runs"]["batching"]["runs"], results["runs"]["no-batching"]["runs"]):
        print(f"  {on['clients']:3} clients: tweets/s x{on['tweets_per_s'] / off['tweets_per_s']:.2f}, "
              f"p50 latency x{on['p50_s'] / off['p50_s']:.2f}, p95 latency x{on['p95_s'] / off['p95_s']:.2f}")
    one = results["runs"]["batching"]["runs"][0]
    if one["clients"] == 1:
        print(f"  1 client, batching server p50 / direct generate: x{one['p50_s'] / direct:.2f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Load test of tweetgen-serve: continuous batching on against off, and against llama.cpp's own server.

    PYTHONPATH=. python -m benchmarks.serve_load                         # exported/tweety, 1/8/32 clients
    PYTHONPATH=. python -m benchmarks.serve_load -m DIR --clients 1 8 32 --requests 4 --new-tokens 64
    PYTHONPATH=. python -m benchmarks.serve_load -m CACHE/gpt2/onnx --precision int8 \
        --llama-server build/bin/llama-server --gguf CACHE/gpt2/gguf/model-q8_0.gguf   # the same weights in q8_0

Fresh servers are started on free ports of 127.0.0.1: `tweetgen-serve` with batching on and off, and with
--llama-server, llama.cpp's `llama-server` on --gguf with as many parallel slots as the most clients (continuous
batching on, its default). They are loaded in turn, the order rotating over --rounds, so that a shared machine's slow
spells fall on all, after one untimed request per client at the most clients on each (a warm-up). At each
concurrency C, C client threads each send requests one after another (closed loop: a
client sends its next request when its last one is answered) until C x --requests requests are answered or
--max-seconds pass. Every request asks for one tweet of exactly --new-tokens tokens with the same sampling
(temperature 1, top-k 50, top-p 0.95): tweetgen with min_tokens = max_tokens and no 280-character cut, llama.cpp
with ignore_eos; an answer
with another token count is counted apart and not timed. Reported: tweets/s, p50 and p95 latency, each server's
peak RSS and its CPU use while idle (a batching loop must not spin), the ratios at each concurrency, the latency
of Generator.generate called directly in this process (no server) as the 1-client baseline (timed in each round
right after the servers' 1-client runs), and the tweets/s of one generate call that writes as many tweets as the
most clients: the ceiling of any batching server on this machine.
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
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # never anything else: the script loads only a server of its own


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


SAMPLING = {"temperature": 1.0, "top_k": 50, "top_p": 0.95}  # both servers take top_k beside OpenAI's fields


def post(port: int, body: dict, timeout: float = 600) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def wait_until_up(process: subprocess.Popen, port: int, what: str, seconds: float = 120) -> None:
    """Poll GET /health until it answers 200 (llama-server answers 503 while it loads)."""
    deadline = time.monotonic() + seconds
    while True:  # a fresh process: nothing to wait on but its port
        if process.poll() is not None:
            process.log.seek(0)
            raise SystemExit(f"{what} exited: {process.log.read()[-4000:]}")
        try:
            connection = http.client.HTTPConnection(HOST, port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start within {seconds:.0f} s")
        time.sleep(0.2)


def proc_times(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _start(command: list[str]) -> subprocess.Popen:
    """A server process whose log goes to an unlinked temporary file: a pipe nobody reads would fill and stall a
    chatty server (llama-server logs every request)."""
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    process.log = log
    return process


class Server:
    """A tweetgen-serve process of our own on 127.0.0.1."""

    def __init__(self, model: str, batching: bool, threads: int | None, precision: str = "auto") -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "tweetgen.serve", "-m", model, "--host", HOST, "--port", str(self.port),
                   "--max-queue", "256", "--device", "cpu", "--precision", precision]
        if not batching:
            command.append("--no-batching")
        if threads:
            command += ["--threads", str(threads)]
        self.process = _start(command)
        wait_until_up(self.process, self.port, "tweetgen-serve")

    def body(self, prompt: str, new_tokens: int, seed: int, voice: str | None) -> dict:
        body = {"prompt": prompt, "max_tokens": new_tokens, "min_tokens": new_tokens, "max_chars": None, "seed": seed,
                **SAMPLING}
        if voice:
            body["voice"] = voice
        return body

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.log.close()


class LlamaServer(Server):
    """llama.cpp's llama-server on a GGUF file, `slots` parallel slots of `slot_context` tokens each."""

    def __init__(self, binary: str, gguf: str, threads: int | None, slots: int, slot_context: int) -> None:
        self.port = free_port()
        threads = threads or os.cpu_count() or 1
        command = [binary, "-m", gguf, "--host", HOST, "--port", str(self.port), "-t", str(threads), "-tb",
                   str(threads), "-np", str(slots), "-c", str(slots * slot_context), "-ngl", "0", "--no-webui"]
        self.process = _start(command)
        wait_until_up(self.process, self.port, "llama-server")

    def body(self, prompt: str, new_tokens: int, seed: int, voice: str | None) -> dict:
        return {"prompt": prompt, "max_tokens": new_tokens, "ignore_eos": True, "seed": seed, **SAMPLING}


def load(server: Server, clients: int, requests: int, max_seconds: float, new_tokens: int, prompt: str,
         voice: str | None) -> dict:
    """C closed-loop clients; latencies of the answered requests, wall time, status counts."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    wrong_length = [0]
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
            body = server.body(prompt, new_tokens, index * 1000 + count, voice)
            start = time.perf_counter()
            status, reply = post(server.port, body)
            took = time.perf_counter() - start
            count += 1
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200 and reply.get("usage", {}).get("completion_tokens") != new_tokens:
                    wrong_length[0] += 1  # not the work asked for: not timed
                elif status == 200:
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
            "wrong_length": wrong_length[0], "latencies": list(latencies),
            "tweets_per_s": len(latencies) / wall if wall else 0.0,
            "p50_s": statistics.median(latencies) if latencies else float("nan"),
            "p95_s": _p95(latencies)}


def _ratio(mine: float, theirs: float) -> str:
    return f"{mine / theirs:.2f}" if theirs and theirs == theirs and mine == mine else "n/a"


def _p95(latencies: list[float]) -> float:
    return latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else float("nan")


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


class Direct:
    """Generator.generate in this process (no server): the 1-client baseline, timed in each round beside the
    servers' 1-client runs, and the ceiling of any batching server at C clients (one generate call of C tweets: one
    prefill, every step at the full batch)."""

    def __init__(self, model: str, new_tokens: int, prompt: str, voice: str | None, threads: int | None,
                 precision: str) -> None:
        from tweetgen import Generator

        self.generator = Generator.load(model, device="cpu", threads=threads, precision=precision)
        self.options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, max_chars=None, user=voice,
                            allow_copies=True, **SAMPLING)
        self.prompt = prompt

    def seconds(self, n: int, seed: int) -> float:
        start = time.perf_counter()
        self.generator.generate(self.prompt, n=n, seed=seed, **self.options)
        return time.perf_counter() - start

    def latencies(self, count: int, first_seed: int) -> list[float]:
        return [self.seconds(1, seed) for seed in range(first_seed, first_seed + count)]

    def ceiling(self, batch: int, repeats: int) -> float:
        """The median tweets/s of one generate call that writes `batch` tweets together."""
        self.seconds(batch, 0)  # untimed: the first run at a new batch shape
        return batch / statistics.median(self.seconds(batch, seed) for seed in range(1, repeats + 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--model", default=str(REPO / "exported" / "tweety"))
    parser.add_argument("--precision", default="auto", help="tweetgen-serve's --precision (default auto)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=4, help="requests per client at each concurrency and round (4)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the servers' order rotating (2)")
    parser.add_argument("--max-seconds", type=float, default=120, help="bound on each concurrency's run (120)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt", default="My dream is")
    parser.add_argument("--voice", help="a voice of a multi-user model (default: the model's first)")
    parser.add_argument("--threads", type=int, help="threads of each server (default: one per core)")
    parser.add_argument("--llama-server", help="llama.cpp's llama-server binary: adds it as a peer, on --gguf")
    parser.add_argument("--gguf", help="the GGUF file llama-server loads (the same weights as --model)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--malformed", type=int, default=0,
                        help="instead: send this many malformed requests, count the answers by status, then a good one")
    args = parser.parse_args(argv)
    if not all(1 <= c <= 256 for c in args.clients) or not 1 <= args.requests <= 100 or not 1 <= args.rounds <= 20:
        parser.error("--clients must be from 1 to 256, --requests from 1 to 100 and --rounds from 1 to 20")
    if bool(args.llama_server) != bool(args.gguf):
        parser.error("--llama-server and --gguf go together")
    voice = args.voice
    if voice is None:
        users = json.loads((Path(args.model) / "tweetgen.json").read_text()).get("users", {}) \
            if (Path(args.model) / "tweetgen.json").is_file() else {}
        voice = sorted(users)[0] if users else None
    if args.malformed:
        server = Server(args.model, True, args.threads, args.precision)
        try:
            counts = malformed(server.port, args.malformed)
            status, reply = post(server.port, {"prompt": args.prompt, "max_tokens": 8, "seed": 0})
            print(f"{args.malformed} malformed requests: status counts {counts}; then a good one: {status}, "
                  f"{reply['choices'][0]['text']!r}")
        finally:
            server.stop()
        return 0
    results: dict = {"model": args.model, "precision": args.precision, "gguf": args.gguf,
                     "new_tokens": args.new_tokens, "rounds": args.rounds, "runs": {}, "per_round": []}
    servers: dict[str, Server] = {}
    direct = Direct(args.model, args.new_tokens, args.prompt, voice, args.threads, args.precision)
    direct.latencies(1, 0)  # untimed: its first run
    direct_latencies: list[float] = []
    try:
        servers["batching"] = Server(args.model, True, args.threads, args.precision)
        servers["no-batching"] = Server(args.model, False, args.threads, args.precision)
        if args.llama_server:
            servers["llama.cpp"] = LlamaServer(args.llama_server, args.gguf, args.threads, max(args.clients),
                                               args.new_tokens + 64)
        modes = list(servers)
        # Untimed: one request per client at the most clients, on every server. A fresh server's first batch pays
        # once for what later ones reuse (the pages of its cache slots, each new batch shape's first run): without
        # this, the first wave of requests set the tail latency (tweetgen-serve's p95 at 32 clients was 2-3x its
        # p50 while a warm one's waves take the same time each).
        for mode in modes:
            load(servers[mode], max(args.clients), 1, args.max_seconds, args.new_tokens, args.prompt, voice)
        before = {mode: proc_times(server.process.pid) for mode, server in servers.items()}
        time.sleep(2.0)  # all idle: how much CPU does a server use doing nothing?
        idle = {mode: (proc_times(server.process.pid) - before[mode]) / 2.0 for mode, server in servers.items()}
        samples = {mode: {c: {"latencies": [], "seconds": 0.0, "answered": 0, "wrong_length": 0, "statuses": {}}
                          for c in args.clients} for mode in modes}
        for round_ in range(args.rounds):
            for clients in args.clients:
                # the order rotates round by round: a busy shared machine's slow spells fall on every server
                order = modes[round_ % len(modes):] + modes[:round_ % len(modes)]
                this_round = {"round": round_ + 1, "clients": clients}
                for mode in order:
                    run = load(servers[mode], clients, args.requests, args.max_seconds, args.new_tokens,
                               args.prompt, voice)
                    into = samples[mode][clients]
                    into["latencies"] += run.pop("latencies")
                    for key in ("seconds", "answered", "wrong_length"):
                        into[key] += run[key]
                    for code, count in run["statuses"].items():
                        into["statuses"][code] = into["statuses"].get(code, 0) + count
                    this_round[mode] = {key: run[key] for key in ("tweets_per_s", "p50_s", "p95_s")}
                    print(f"round {round_ + 1} {mode:12} {clients:3} clients: {run['tweets_per_s']:6.2f} tweets/s  "
                          f"p50 {run['p50_s']:.3f} s  p95 {run['p95_s']:.3f} s"
                          + (f"  ({run['wrong_length']} of another length)" if run["wrong_length"] else ""),
                          flush=True)
                if clients == 1:  # the baseline, in the same minutes as the servers' 1-client runs
                    took = direct.latencies(args.requests, 1000 * (round_ + 1))
                    direct_latencies += took
                    this_round["direct_p50_s"] = statistics.median(took)
                    print(f"round {round_ + 1} {'direct':12}   1 client:  Generator.generate in this process, "
                          f"p50 {this_round['direct_p50_s']:.3f} s", flush=True)
                results["per_round"].append(this_round)
        for mode, server in servers.items():
            runs = []
            for clients in args.clients:
                got = samples[mode][clients]
                latencies = sorted(got["latencies"])
                runs.append({"clients": clients, "answered": got["answered"], "wrong_length": got["wrong_length"],
                             "seconds": got["seconds"], "statuses": got["statuses"],
                             "tweets_per_s": got["answered"] / got["seconds"],
                             "p50_s": statistics.median(latencies) if latencies else float("nan"),
                             "p95_s": _p95(latencies)})
            results["runs"][mode] = {"runs": runs, "idle_cpu_fraction": idle[mode],
                                     "peak_rss_mb": peak_rss_mb(server.process.pid)}
    finally:
        for server in servers.values():
            server.stop()
    print(f"\n{'server':12} {'clients':>7} {'tweets/s':>9} {'p50 s':>7} {'p95 s':>7}  answered")
    for mode, result in results["runs"].items():
        for run in result["runs"]:
            print(f"{mode:12} {run['clients']:7} {run['tweets_per_s']:9.2f} {run['p50_s']:7.3f} {run['p95_s']:7.3f}  "
                  f"{run['answered']} (status {run['statuses']}"
                  + (f", {run['wrong_length']} of another length)" if run["wrong_length"] else ")"))
        print(f"{mode:12} idle CPU {result['idle_cpu_fraction']:.1%} of a core over 2 s, peak RSS "
              f"{result['peak_rss_mb']:.0f} MB")
    most = max(args.clients)
    ceiling = direct.ceiling(most, 5)
    results["in_process_ceiling"] = {"clients": most, "tweets_per_s": ceiling}
    if direct_latencies:
        results["direct_generate_s"] = statistics.median(direct_latencies)
        print(f"\nGenerator.generate in-process, 1 tweet: p50 {results['direct_generate_s']:.3f} s "
              f"({len(direct_latencies)} calls, in the rounds)")
    print(f"Generator.generate in-process, {most} tweets in one call: {ceiling:.2f} tweets/s (median of 5), the most "
          f"a batching server can answer at {most} clients here")
    peers = [peer for peer in ("no-batching", "llama.cpp") if peer in results["runs"]]
    for peer in peers:
        print(f"\nratios, tweetgen-serve (batching) / {peer}: all rounds together, then [round by round]")
        for index, (on, off) in enumerate(zip(results["runs"]["batching"]["runs"], results["runs"][peer]["runs"])):
            rounds = [r for r in results["per_round"] if r["clients"] == on["clients"]]
            per = ", ".join(_ratio(r["batching"]["tweets_per_s"], r[peer]["tweets_per_s"]) for r in rounds)
            per95 = ", ".join(_ratio(r["batching"]["p95_s"], r[peer]["p95_s"]) for r in rounds)
            print(f"  {on['clients']:3} clients: tweets/s x{_ratio(on['tweets_per_s'], off['tweets_per_s'])} [{per}], "
                  f"p50 latency x{_ratio(on['p50_s'], off['p50_s'])}, p95 latency x{_ratio(on['p95_s'], off['p95_s'])} "
                  f"[{per95}]")
    for peer in peers:
        theirs = next(run for run in results["runs"][peer]["runs"] if run["clients"] == most)["tweets_per_s"]
        per = ", ".join(_ratio(ceiling, r[peer]["tweets_per_s"]) for r in results["per_round"] if r["clients"] == most)
        print(f"in-process ceiling at {most} clients / {peer}'s tweets/s: x{_ratio(ceiling, theirs)} [{per}]")
    one = results["runs"]["batching"]["runs"][0]
    if one["clients"] == 1:
        per = ", ".join(_ratio(r["batching"]["p50_s"], r["direct_p50_s"])
                        for r in results["per_round"] if r["clients"] == 1)
        print(f"\n1 client, batching server p50 / direct generate p50: "
              f"x{_ratio(one['p50_s'], results['direct_generate_s'])} [{per}]")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

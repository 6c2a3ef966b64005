"""A fault-injection run over tweetgen-run and tweetgen-train, as a hostile user would try them.

    python tests/faults.py [--out results.json]

Each case runs the real command in a fresh process with a time limit and is classified by what came back:
  clear     exit 1 or 2 with a one-line "Error: ..." or usage message, and no traceback
  handled   exit 0 with the expected output (for data cases: every tweet that should be kept is in the cache)
  traceback a Python traceback on stderr
  hang      still running at the time limit
  loss      exit 0 but tweets missing from the cache
  leak      the secret token (or a local secret path) anywhere in stdout, stderr or the files written
Everything runs against local files and a local fake X API on 127.0.0.1; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
TINY = HERE / "fixtures" / "tiny_gpt2"
SECRET = "AAAAfaulttoken-secret-9f8e7d6c5b4a"
LIMIT = 60  # seconds a case may run


def run(argv: list[str], *, stdin: bytes | None = None, env: dict | None = None, stdout=None) -> dict:
    environment = {**os.environ, "X_BEARER_TOKEN": SECRET, **(env or {})}
    try:
        done = subprocess.run([sys.executable, "-m", *argv], input=stdin, stdout=stdout or subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=LIMIT, env=environment)
    except subprocess.TimeoutExpired:
        return {"outcome": "hang"}
    out = (done.stdout if isinstance(done.stdout, bytes) else b"").decode("utf-8", "replace")
    err = (done.stderr or b"").decode("utf-8", "replace")
    if SECRET in out + err:
        outcome = "leak"
    elif "Traceback (most recent call last)" in err:
        outcome = "traceback"
    elif done.returncode in (1, 2) and any(line.startswith(("Error: ", "usage")) for line in err.splitlines()):
        outcome = "clear"
    elif done.returncode == 0:
        outcome = "handled"
    else:
        outcome = f"exit {done.returncode}"
    return {"outcome": outcome, "code": done.returncode, "stderr": err[-300:]}


def runtime_cases(tmp: Path) -> dict[str, dict]:
    cases = {}
    model = ["-m", str(TINY)]
    for name, args in {
        "n zero": ["-n", "0"], "n huge": ["-n", "100000"], "n text": ["-n", "many"],
        "max tokens negative": ["--max-new-tokens", "-3"], "max tokens past context": ["--max-new-tokens", "100000"],
        "temperature nan": ["-t", "nan"], "temperature negative": ["-t", "-1"], "top-p zero": ["-p", "0"],
        "top-p two": ["-p", "2"], "top-k negative": ["-k", "-1"], "penalty zero": ["--repetition-penalty", "0"],
        "seed negative": ["--seed", "-1"], "threads zero": ["--threads", "0"], "threads huge": ["--threads", "99999"],
        "max chars negative": ["--max-chars", "-5"], "unknown user": ["--user", "nobody"],
        "precision missing": ["--precision", "fp16"], "device cuda": ["--device", "cuda"],
        "unknown flag": ["--frobnicate"],
    }.items():
        cases[f"run: {name}"] = run(["tweetgen", *model, *args, "Hi"])
    cases["run: 100 KB prompt argument"] = run(["tweetgen", *model, "x " * 50_000])
    cases["run: 10 MB prompt on stdin"] = run(["tweetgen", *model], stdin=b"word " * 2_000_000)
    cases["run: prompt not UTF-8 on stdin"] = run(["tweetgen", *model], stdin=b"\xff\xfe\xfa bad")
    with open("/dev/full", "w") as full:
        cases["run: stdout on a full disk"] = run(["tweetgen", *model, "-n", "2", "Hi"], stdout=full)
    for name, change in {
        "missing folder": None, "empty folder": {}, "corrupt graph": {"model.onnx": b"\x00garbage"},
        "corrupt config": {"config.json": b"{not json"}, "config a list": {"config.json": b"[1, 2]"},
        "no context in config": {"config.json": b'{"model_type": "gpt2"}'},
        "bad generation config": {"generation_config.json": b'{"do_sample": true, "top_k": "ten"}'},
        "corrupt tokenizer": {"tokenizer.json": b"{}"}, "tweetgen.json format 9": {"tweetgen.json": b'{"format": 9}'},
        "corrupt copies.bin": {"copies.bin": b"\x01\x02\x03"},
    }.items():
        folder = tmp / f"model-{name.replace(' ', '-')}"
        if change is not None:
            folder.mkdir()
            if change:
                for item in TINY.iterdir():
                    (folder / item.name).write_bytes(item.read_bytes())
                for file, data in change.items():
                    (folder / file).write_bytes(data)
        cases[f"model: {name}"] = run(["tweetgen", "-m", str(folder), "Hi"])
    return cases


def data_cases(tmp: Path) -> dict[str, dict]:
    cases = {}
    lines = [f"tweet {i} says several words here" for i in range(20)]

    def clean(*sources: str, work: str = "work", **kw) -> dict:
        return run(["tweetgen.trainer.cli", "clean", *sources, "--workdir", str(tmp / work)], **kw)

    def kept(work: str, user: str) -> int:
        path = tmp / work / "raw" / f"{user}.jsonl"
        return path.read_text().count("\n") if path.is_file() else 0

    fifo = tmp / "fifo.txt"
    os.mkfifo(fifo)
    cases["file: a FIFO"] = clean("--file", str(fifo), work="w-fifo")
    (tmp / "zero.txt").symlink_to("/dev/zero")
    cases["file: /dev/zero through a symlink"] = clean("--file", str(tmp / "zero.txt"), work="w-zero")
    for name, data in {"empty.txt": b"", "garbage.csv": os.urandom(4000), "bad.jsonl": b'{"text": "ok"}\n{bad\n',
                       "nested.json": b"[" * 100_000 + b"]" * 100_000, "notext.csv": b"a,b\n1,2\n",
                       "list.json": b'{"data": 5}', "latin1.txt": "caf\xe9 tweets here".encode("latin-1")}.items():
        (tmp / name).write_bytes(data)
        cases[f"file: {name}"] = clean("--file", str(tmp / name), work=f"w-{name}")
    (tmp / "surrogate.jsonl").write_text('{"text": "half an emoji \\ud83d cut off here now"}\n'
                                         + "".join(json.dumps({"text": t}) + "\n" for t in lines))
    result = clean("--file", str(tmp / "surrogate.jsonl"), work="w-sur")
    cases["file: a lone surrogate"] = result if kept("w-sur", "surrogate") == 21 or result["outcome"] != "handled" \
        else {**result, "outcome": "loss"}
    for k in ("a", "b"):
        (tmp / k).mkdir()
        (tmp / k / "tweets.txt").write_text("\n".join(lines[:10] if k == "a" else lines[10:]) + "\n")
    result = clean("--file", str(tmp / "a" / "tweets.txt"), "--as", "me", "--file", str(tmp / "b" / "tweets.txt"),
                   "--as", "me", work="w-same-name")
    cases["file: two files of one name, one user"] = result if kept("w-same-name", "me") == 20 \
        or result["outcome"] != "handled" else {**result, "outcome": "loss"}
    grown = tmp / "grown.txt"
    grown.write_text("\n".join(lines[5:]) + "\n")
    clean("--file", str(grown), work="w-grown")
    grown.write_text("\n".join(lines) + "\n")
    os.utime(grown, (os.path.getmtime(grown) + 5,) * 2)
    result = clean("--file", str(grown), work="w-grown")
    cases["file: grown at its top, cleaned again"] = result if kept("w-grown", "grown") == 20 \
        or result["outcome"] != "handled" else {**result, "outcome": "loss"}
    with zipfile.ZipFile(tmp / "damaged.zip", "w") as archive:
        archive.writestr("data/tweets.js", "window.YTD.tweets.part0 = " + json.dumps(
            [{"tweet": {"id_str": str(i), "full_text": t}} for i, t in enumerate(lines)]))
    data = bytearray((tmp / "damaged.zip").read_bytes())
    data[60:90] = b"\x00" * 30
    (tmp / "damaged.zip").write_bytes(bytes(data))
    cases["archive: damaged compressed data"] = clean("--archive", str(tmp / "damaged.zip"), work="w-zip")
    with zipfile.ZipFile(tmp / "damaged-deflated.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data/tweets.js", "window.YTD.tweets.part0 = " + json.dumps(
            [{"tweet": {"id_str": str(i), "full_text": t * 20}} for i, t in enumerate(lines)]))
    data = bytearray((tmp / "damaged-deflated.zip").read_bytes())
    data[80:120] = b"\x00" * 40
    (tmp / "damaged-deflated.zip").write_bytes(bytes(data))
    cases["archive: damaged deflated data"] = clean("--archive", str(tmp / "damaged-deflated.zip"), work="w-zip2")
    (tmp / "arch" / "data").mkdir(parents=True)
    (tmp / "arch" / "data" / "account.js").write_text('window.YTD.account.part0 = [{"account": [1, 2]}]')
    (tmp / "arch" / "data" / "manifest.js").write_text('window.__THAR_CONFIG = {"dataTypes": "odd"}')
    (tmp / "arch" / "data" / "tweets.js").write_text("window.YTD.tweets.part0 = " + json.dumps(
        [{"tweet": {"id_str": str(i), "full_text": t, "created_at": "NaN"}} for i, t in enumerate(lines)]))
    cases["archive: odd account.js and manifest.js"] = clean("--archive", str(tmp / "arch"), work="w-arch")
    (tmp / "w-stats").mkdir()
    (tmp / "w-stats" / "stats.json").write_text("{broken")
    cases["workdir: corrupt stats.json"] = run(["tweetgen.trainer.cli", "train", "--workdir", str(tmp / "w-stats"),
                                                "--name", "x"])
    (tmp / "w-src" / "raw").mkdir(parents=True)
    (tmp / "w-src" / "raw" / "sources.json").write_text("[not json")
    (tmp / "ok.txt").write_text("\n".join(lines) + "\n")
    cases["workdir: corrupt sources.json"] = clean("--file", str(tmp / "ok.txt"), work="w-src")
    (tmp / "w-src2" / "raw").mkdir(parents=True)
    (tmp / "w-src2" / "raw" / "sources.json").write_text("[1, 2]")
    cases["workdir: sources.json a list"] = clean("--file", str(tmp / "ok.txt"), work="w-src2")
    return cases


def train_cases(tmp: Path) -> dict[str, dict]:
    cases = {}
    (tmp / "t.txt").write_text("\n".join(f"tweet {i} says several words here" for i in range(40)) + "\n")
    for name, args in {"batch size zero": ["--batch-size", "0"], "learning rate nan": ["--learning-rate", "nan"],
                       "learning rate negative": ["--learning-rate", "-1"], "epochs negative": ["--epochs", "-2"],
                       "validation fraction one": ["--validation-fraction", "1"],
                       "block size one": ["--block-size", "1"], "accumulation zero": ["--gradient-accumulation", "0"],
                       "scratch width not a multiple of heads": ["--base-model", "scratch:width=100,heads=3"],
                       "scratch zero heads": ["--base-model", "scratch:heads=0"],
                       "scratch context 1": ["--base-model", "scratch:context=1"]}.items():
        cases[f"train: {name}"] = run(["tweetgen.trainer.cli", "train", "--file", str(tmp / "t.txt"), "--name", "m",
                                       "--workdir", str(tmp / f"wt-{len(cases)}"), *args])
    return cases


def push_cases(tmp: Path) -> dict[str, dict]:
    env = {"HF_TOKEN": "", "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1"}
    return {
        "push: no token": run(["tweetgen.trainer.cli", "push", "--model", str(TINY), "--repo-id", "me/bot"], env=env),
        "push: malformed repo id": run(["tweetgen.trainer.cli", "push", "--model", str(TINY), "--repo-id",
                                        "not a repo"], env={**env, "HF_TOKEN": SECRET}),
        "push: not an export": run(["tweetgen.trainer.cli", "push", "--model", str(tmp), "--repo-id", "me/bot"],
                                   env={**env, "HF_TOKEN": SECRET}),
    }


class _Hostile(BaseHTTPRequestHandler):
    """One hostile X API behaviour per scenario, chosen by the first path segment the client was pointed at."""

    def do_GET(self):  # noqa: N802
        scenario = self.path.split("/")[1]
        path = "/" + "/".join(self.path.split("/")[2:])
        if "/users/by/username/" in path and scenario not in ("redirect", "echo", "far-reset", "bad-user"):
            return self._send(200, {"data": {"id": "7", "username": "alice"}})
        body = {"redirect": None, "echo": {"detail": f"bad {self.headers.get('Authorization')}"},
                "far-reset": {"title": "Too Many Requests"}, "bad-user": {"data": {"username": "alice"}},
                "loop": {"data": [{"id": "1", "text": "a tweet with some words"}], "meta": {"next_token": "SAME"}},
                "empty": {"meta": {"next_token": f"T{len(self.path)}{id(self)}"}},
                "not-list": {"data": "nope", "meta": []}, "malformed": b"{half"}[scenario]
        if scenario == "redirect":
            return self._send(302, b"", {"Location": f"http://127.0.0.1:{self.server.server_address[1]}/steal"})
        if scenario == "far-reset":
            return self._send(429, body, {"x-rate-limit-reset": str(2 ** 40)})
        if scenario == "echo":
            return self._send(400, body)
        self._send(200, body)

    def _send(self, status, body, headers=None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def api_cases(tmp: Path) -> dict[str, dict]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cases = {}
    try:
        for scenario in ("redirect", "echo", "far-reset", "bad-user", "loop", "empty", "not-list", "malformed"):
            url = f"http://127.0.0.1:{server.server_address[1]}/{scenario}"
            cases[f"x api: {scenario}"] = run(["tweetgen.trainer.cli", "fetch", "--user", "alice", "--workdir",
                                               str(tmp / f"wa-{scenario}"), "--deadline", "30"],
                                              env={"TWEETGEN_X_API_URL": url})
    finally:
        server.shutdown()
    for path in tmp.rglob("*"):  # nothing written anywhere may hold the token
        if path.is_file() and not path.is_fifo() and not path.is_symlink() and SECRET.encode() in path.read_bytes():
            cases[f"x api: token written to {path.name}"] = {"outcome": "leak"}
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write every case's outcome here as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        cases = {}
        for group in (runtime_cases, data_cases, train_cases, push_cases, api_cases):
            folder = tmp / group.__name__
            folder.mkdir()
            cases.update(group(folder))
    counts: dict[str, int] = {}
    for name, case in cases.items():
        counts[case["outcome"]] = counts.get(case["outcome"], 0) + 1
        if case["outcome"] not in ("clear", "handled"):
            print(f"{case['outcome']}: {name}: {case.get('stderr', '')[-200:]!r}")
    print(json.dumps({"cases": len(cases), **counts}))
    if args.out:
        args.out.write_text(json.dumps(cases, indent=2) + "\n")
    return 0 if set(counts) <= {"clear", "handled"} else 1


if __name__ == "__main__":
    sys.exit(main())

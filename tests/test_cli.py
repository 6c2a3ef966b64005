"""tweetgen-run as a user runs it: a subprocess, stdout for tweets, stderr for the rest, exit codes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_GPT2, TINY_LLAMA


def cli(*args, stdin=b"", env=None, model=TINY_GPT2):
    command = [sys.executable, "-m", "tweetgen", *(["-m", str(model)] if model else []), *args]
    return subprocess.run(command, input=stdin, capture_output=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_one_streamed_tweet_starts_with_the_prompt():
    result = cli("--seed", "0", "My dream is")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert out.startswith("My dream is") and out.endswith("\n") and result.stderr == b""


def test_stream_and_no_stream_print_the_same_tweet():
    streamed = cli("--seed", "4", "Rockets")
    whole = cli("--seed", "4", "--no-stream", "Rockets")
    assert streamed.stdout == whole.stdout


def test_json_with_several_tweets_and_the_prompt_from_stdin():
    result = cli("--json", "-n", "3", "--seed", "1", "--user", "alice", stdin="Today I 🚀".encode(), model=TINY_LLAMA)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["prompt"] == "Today I 🚀" and data["user"] == "alice" and len(data["tweets"]) == 3
    assert all(t.startswith("Today I 🚀") for t in data["tweets"])


def test_model_from_the_environment():
    result = cli("--seed", "0", "-n", "2", "Hi", model=None, env={"TWEETGEN_MODEL": str(TINY_GPT2)})
    assert result.returncode == 0 and result.stdout.decode().count("Hi") >= 2


@pytest.mark.parametrize("args, stdin, message", [
    (["-n", "0", "x"], b"", "n must be an integer from 1 to 1024"),
    (["-t", "-1", "x"], b"", "temperature must be"),
    (["-p", "1.5", "x"], b"", "top_p must be in (0, 1]"),
    (["--min-p", "-0.5", "x"], b"", "min_p must be in [0, 1]"),
    (["-k", "-2", "x"], b"", "top_k must be"),
    (["--max-new-tokens", "0", "x"], b"", "max_new_tokens must be"),
    (["--user", "zed", "x"], b"", "unknown user 'zed'; this model knows: alice, bob"),
    ([], b"caf\xe9 au lait", "not valid UTF-8"),
    (["word " * 300], b"", "longer than the model's context"),
])
def test_bad_input_is_one_error_line_and_exit_1(args, stdin, message):
    result = cli(*args, stdin=stdin)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.startswith("Error: ") and message in err and "Traceback" not in err
    assert result.stdout == b""


@pytest.mark.parametrize("make", ["missing", "empty", "corrupt"])
def test_bad_model_folders(tmp_path, make):
    folder = tmp_path / "m"
    if make != "missing":
        folder.mkdir()
        for name in ("config.json", "tokenizer.json"):
            (folder / name).write_bytes((TINY_GPT2 / name).read_bytes())
        if make == "corrupt":
            (folder / "model.onnx").write_bytes(b"\x00garbage")
    result = cli("x", model=folder)
    err = result.stderr.decode()
    assert result.returncode == 1 and err.startswith("Error: ") and "Traceback" not in err
    assert {"missing": "does not exist", "empty": "missing model.onnx", "corrupt": "not a valid ONNX"}[make] in err


def test_no_model_and_no_default_says_how_to_get_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TWEETGEN_MODEL"}
    code = ("import sys, tweetgen.cli as c, pathlib; c.EXPORTED_DIR = pathlib.Path(sys.argv[1]); "
            "sys.exit(c.main(['My dream is']))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, env=env, timeout=60)
    err = result.stderr.decode()
    assert result.returncode == 1 and "no default model" in err and "tweetgen-train" in err


def test_the_default_model_writes_the_same_tweets_for_a_seed():
    """The committed default model, as a newcomer runs it: no --model, no $TWEETGEN_MODEL."""
    env = {k: v for k, v in os.environ.items() if k != "TWEETGEN_MODEL"}
    command = [sys.executable, "-m", "tweetgen", "-n", "3", "--seed", "0", "My dream is"]
    first, again = (subprocess.run(command, capture_output=True, env=env, timeout=120) for _ in range(2))
    assert first.returncode == 0, first.stderr.decode()
    tweets = first.stdout.decode().strip().split("\n\n")
    assert len(tweets) == 3 and all(t.startswith("My dream is ") and len(t) > len("My dream is ") for t in tweets)
    assert again.stdout == first.stdout


def test_usage_errors_exit_2():
    assert cli("--no-such-flag").returncode == 2
    assert cli("-n", "many", "x").returncode == 2


def _wait_until_reading_stdin(pid: int, timeout: float = 60) -> None:
    """Return once the process is blocked in read(0, ...) (Linux: /proc/PID/syscall), not after a guessed delay."""
    syscall = Path(f"/proc/{pid}/syscall")
    if not syscall.exists():
        pytest.skip("needs /proc/PID/syscall (Linux) to see the CLI wait for its prompt")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = syscall.read_text().split()
        if fields[:2] == ["0", "0x0"]:  # x86-64 read() on fd 0
            return
        time.sleep(0.01)
    pytest.fail(f"the CLI did not start reading its prompt within {timeout} s")


def test_ctrl_c_exits_130():
    # The CLI waits for a prompt on a pipe that stays open; the interrupt comes the way a terminal sends it.
    # A job started in the background by a shell without job control inherits SIGINT ignored, and Python then
    # installs no handler: the child gets the default disposition back, as a terminal's foreground job has it.
    if os.uname().machine != "x86_64":
        pytest.skip("reads the x86-64 syscall number of read()")
    process = subprocess.Popen([sys.executable, "-m", "tweetgen", "-m", str(TINY_GPT2)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_until_reading_stdin(process.pid)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and b"Traceback" not in err


def test_help_shows_examples():
    result = cli("--help", model=None)
    assert result.returncode == 0 and b"examples:" in result.stdout

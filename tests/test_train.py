"""Fine-tuning on the tiny committed models: packing, a real (tiny) run, bad input, resume after a kill."""

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TEXTS, TINY_GPT2_HF, tiny_config

pytestmark = pytest.mark.torch
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("datasets")  # build_dataset and the Trainer's input

from tweetgen.trainer.train.base_model import BaseModelError, load_base  # noqa: E402
from tweetgen.trainer.data.dataset import DatasetOptions, build_dataset  # noqa: E402
from tweetgen.trainer.train.finetune import TrainError, pack, train  # noqa: E402

TINY_HF = str(TINY_GPT2_HF)


def test_pack_puts_whole_tweets_in_blocks_that_start_with_the_separator_and_masks_the_padding():
    _, tokenizer = load_base(TINY_HF)
    texts = ["the moon", "mars", "the sun", "sun"]
    tokens = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    size = len(tokens[0]) + len(tokens[1]) + 3  # SEP moon SEP mars SEP: the first two fit one block exactly
    assert len(tokens[2]) + 2 <= size  # each of the others fits a block of its own
    blocks = pack(texts, tokenizer, 0, size)
    kept = [[t for t, m in zip(block, mask) if m] for block, mask in zip(blocks["input_ids"], blocks["attention_mask"])]
    assert kept[0] == [0, *tokens[0], 0, *tokens[1], 0]  # never cut at the block's edge: the next tweet moves on
    assert kept[1][:len(tokens[2]) + 2] == [0, *tokens[2], 0]
    assert [t for block in kept for t in block[1:]] == [t for ids in tokens for t in (*ids, 0)]
    for labels, mask in zip(blocks["labels"], blocks["attention_mask"]):
        assert all(label == -100 for label, m in zip(labels, mask) if not m) and len(labels) == size
    assert all(len(b) == size for b in blocks["input_ids"])


def test_pack_cuts_a_tweet_longer_than_a_block_into_blocks_of_its_own():
    _, tokenizer = load_base(TINY_HF)
    long = tokenizer("the moon and mars and the sun and the moon", add_special_tokens=False).input_ids
    blocks = pack(["mars", "the moon and mars and the sun and the moon"], tokenizer, 0, 4)
    kept = [[t for t, m in zip(b, mask) if m] for b, mask in zip(blocks["input_ids"], blocks["attention_mask"])]
    mars = tokenizer("mars", add_special_tokens=False).input_ids
    assert kept[0] == [0, *mars, 0]
    # each later block starts with the token before it (its context; position 0 has no label of its own)
    assert [kept[1][0]] + [t for block in kept[1:] for t in block[1:]] == [0, *long, 0]
    assert all(len(block) <= 4 for block in kept)


def test_a_tiny_run_lowers_validation_perplexity_and_leaves_its_outputs(tmp_path):
    dataset = build_dataset(TEXTS, DatasetOptions(tag_users=True))
    result = train(dataset, tiny_config(), tmp_path / "run")
    assert result.perplexity_after < result.perplexity_before * 0.7
    assert result.separator == "<|endoftext|>" and result.steps > 0 and result.train_tokens > 0
    for name in ("model/config.json", "model/tokenizer.json", "metrics.json", "loss.png", "train_config.json"):
        assert (tmp_path / "run" / name).is_file(), name
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["learning_rate"] == 2e-3 and saved["base_model"] == TINY_HF


def test_too_little_data_says_how_much_is_needed(tmp_path):
    dataset = build_dataset({"alice": TEXTS["alice"][:8]}, DatasetOptions())
    with pytest.raises(TrainError, match="too little data.*at least 20 kept tweets"):
        train(dataset, tiny_config(), tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()


def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path):
    from transformers import BertConfig, GPT2Config

    BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32, architectures=["BertForMaskedLM"]).save_pretrained(tmp_path / "bert")
    with pytest.raises(BaseModelError, match="not a causal language model .BertForMaskedLM"):
        load_base(str(tmp_path / "bert"))
    GPT2Config(n_layer=1, n_embd=32, n_head=2, architectures=["GPT2ForSequenceClassification"]).save_pretrained(
        tmp_path / "classifier")
    with pytest.raises(BaseModelError, match="GPT2ForSequenceClassification"):
        load_base(str(tmp_path / "classifier"))
    with pytest.raises(BaseModelError, match="without config.json"):
        load_base(str(tmp_path))


def test_a_gguf_of_an_unsupported_architecture_is_refused(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(BaseModelError, match="architecture 'bert'.*supported: llama"):
        load_base(str(path))


# A run that stops in the middle: once the Trainer has written its first checkpoint (on_save comes after the whole
# checkpoint, trainer_state.json last), it writes that step to the pipe it was given and waits there to be killed.
KILLABLE = """
import os, sys, threading
from pathlib import Path
from transformers import TrainerCallback
from transformers.trainer import Trainer
import tweetgen.trainer.train.finetune as t
from tweetgen.trainer.data.dataset import DatasetOptions, build_dataset
from helpers import TEXTS, tiny_config

class HoldAfterTheFirstCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, **kw):
        os.write(int(sys.argv[2]), f"{state.global_step}\\n".encode())
        threading.Event().wait()  # until the test kills this process

# on the class itself: importing transformers.trainer replaces the lazy `transformers` module in sys.modules, so
# an attribute set on the module object imported here would not be the one finetune.py imports Trainer from
real_init = Trainer.__init__
def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    self.add_callback(HoldAfterTheFirstCheckpoint())
Trainer.__init__ = init
dataset = build_dataset(TEXTS, DatasetOptions(tag_users=True))
t.train(dataset, tiny_config(epochs=300, eval_steps=5), Path(sys.argv[1]))
"""


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])])}
    saved, tell = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-c", KILLABLE, str(run), str(tell)], env=env, pass_fds=(tell,),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(tell)  # the child holds the only writing end: a child that dies early ends the read at once
        readable, _, _ = select.select([saved], [], [], 300)
        said = os.read(saved, 64).decode() if readable else ""
    finally:
        os.close(saved)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert said.strip().isdigit(), "the run wrote no checkpoint (it died, or took over 300 s)"
    last = int(said)
    assert (run / "checkpoints" / f"checkpoint-{last}" / "trainer_state.json").is_file()
    assert not (run / "model").exists()
    assert last == max(int(p.parent.name.split("-")[1])
                       for p in (run / "checkpoints").glob("checkpoint-*/trainer_state.json"))
    # a kill while the Trainer was saving leaves a newer checkpoint without its trainer_state.json
    partial = run / "checkpoints" / f"checkpoint-{last + 1000}"
    partial.mkdir(exist_ok=True)
    (partial / "model.safetensors").write_bytes(b"\0" * 64)

    dataset = build_dataset(TEXTS, DatasetOptions(tag_users=True))
    with pytest.raises(TrainError, match="unfinished run: add --resume"):
        train(dataset, tiny_config(epochs=300, eval_steps=5), run)
    result = train(dataset, tiny_config(epochs=300, eval_steps=5, max_steps=last + 10), run, resume=True)
    history = json.loads((run / "metrics.json").read_text())["log_history"]
    assert result.steps == last + 10 and (run / "model" / "config.json").is_file()
    assert not partial.exists()  # resumed from the last complete checkpoint; the partial one is gone
    assert min(h["step"] for h in history if "loss" in h) == 1  # the losses logged before the kill came back


def test_a_scratch_model_gets_a_tokenizer_trained_on_the_tweets(tmp_path):
    dataset = build_dataset(TEXTS, DatasetOptions(tag_users=True))
    config = tiny_config(base_model="scratch:layers=1,width=32,heads=2,vocab=300,context=64", epochs=1)
    result = train(dataset, config, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["n_layer"] == 1 and saved["n_embd"] == 32 and saved["vocab_size"] == 300
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").is_file()
    assert result.perplexity_after < result.perplexity_before


@pytest.mark.parametrize("spec, message", [("scratch:layers=two", "expected an integer"),
                                           ("scratch:depth=3", "KEY one of layers"),
                                           ("scratch:width=100,heads=3", "multiple of heads")])
def test_bad_scratch_specs_are_refused(spec, message):
    from tweetgen.errors import TweetgenError
    from tweetgen.trainer.train.scratch import parse_spec

    with pytest.raises(TweetgenError, match=message):
        parse_spec(spec)


def test_the_last_step_is_evaluated_so_its_weights_are_kept(tmp_path):
    dataset = build_dataset(TEXTS, DatasetOptions(tag_users=True))
    train(dataset, tiny_config(eval_steps=7, max_steps=10), tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [h["step"] for h in metrics["log_history"] if "eval_loss" in h] == [7, 10]


def test_a_full_disk_while_a_checkpoint_is_written_is_a_clear_error_and_resume_goes_on(tmp_path, monkeypatch):
    import errno

    import transformers

    dataset = build_dataset(TEXTS, DatasetOptions(tag_users=True))
    real = transformers.Trainer._save_checkpoint
    saves = []

    def full_on_the_second(self, *args, **kwargs):
        saves.append(self.state.global_step)
        if len(saves) < 2:
            return real(self, *args, **kwargs)
        partial = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        partial.mkdir()
        (partial / "model.safetensors").write_bytes(b"half")  # what a full disk leaves: no trainer_state.json
        raise OSError(errno.ENOSPC, "No space left on device", str(partial / "optimizer.pt"))

    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", full_on_the_second)
    run = tmp_path / "run"
    with pytest.raises(TrainError, match=r"disk full while writing .*optimizer\.pt.*--resume"):
        train(dataset, tiny_config(epochs=4, eval_steps=5), run)
    first = run / "checkpoints" / f"checkpoint-{saves[0]}"
    assert (first / "trainer_state.json").is_file() and not (run / "model").exists()
    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", real)  # space freed
    result = train(dataset, tiny_config(epochs=4, eval_steps=5), run, resume=True)
    assert (run / "model" / "config.json").is_file() and result.steps > saves[0]

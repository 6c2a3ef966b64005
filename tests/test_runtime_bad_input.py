"""The runtime and tweetgen-run under bad input: clear errors that name the problem, never a traceback or a hang."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_GPT2

from tweetgen import Generator, ModelFolderError


def test_a_prompt_far_longer_than_the_context_is_refused_before_tokenizing(gpt2, monkeypatch):
    encoded = []
    real = gpt2.tokenizer

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def encode(self, text):
            encoded.append(len(text))
            return real.encode(text)

    monkeypatch.setattr(gpt2, "tokenizer", Counting())
    with pytest.raises(ValueError, match="far longer than the model's context"):
        gpt2.generate("word " * 2_000_000, n=1)
    assert encoded == []  # refused on its length alone
    with pytest.raises(ValueError, match="longer than the model's context"):  # near the limit: counted in tokens
        gpt2.generate("word " * 200, n=1)


def test_n_times_new_tokens_is_bounded_by_memory(gpt2):
    from tweetgen.engine import MAX_CACHE_BYTES

    spec = gpt2.engine.spec
    per_row = 40 * len(spec.past_names) * spec.kv_heads * spec.head_dim * 4
    with pytest.raises(ValueError, match="GiB of KV cache") as error:
        gpt2.engine.check_memory(MAX_CACHE_BYTES // per_row + 1, 40)
    assert f"at most {MAX_CACHE_BYTES // per_row} samples" in str(error.value)
    gpt2.engine.check_memory(MAX_CACHE_BYTES // per_row, 40)


def test_threads_are_capped():
    with pytest.raises(ValueError, match="threads must be an integer from 1 to"):
        Generator.load(TINY_GPT2, threads=10 ** 6)


def test_numpy_scalars_are_accepted_where_numbers_are(gpt2):
    texts = gpt2.generate("Hi", n=np.int64(2), temperature=np.float32(0.7), top_p=np.float64(0.9),
                          top_k=np.int64(5), max_new_tokens=np.int64(6), seed=np.int64(3))
    again = gpt2.generate("Hi", n=2, temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=6, seed=3)
    assert len(texts) == 2 and texts == again


def test_a_bad_generation_config_names_the_file(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(TINY_GPT2, folder)
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": "hot"}))
    with pytest.raises(ModelFolderError, match=r"generation_config.json.*temperature is 'hot'"):
        Generator.load(folder)


def test_a_tokenizer_with_more_tokens_than_the_graph_is_refused_with_both_numbers(tmp_path):
    from tokenizers import Tokenizer

    folder = tmp_path / "m"
    shutil.copytree(TINY_GPT2, folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.add_tokens([f"extra{i}" for i in range(50)])
    tokenizer.save(str(folder / "tokenizer.json"))
    with pytest.raises(ModelFolderError, match="has 450 tokens but model.onnx scores only 400"):
        Generator.load(folder)


def test_stdout_on_a_full_disk_is_an_error_not_a_traceback():
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "tweetgen", "-m", str(TINY_GPT2), "-n", "2", "Hi"],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.startswith("Error: ") and "Traceback" not in result.stderr
    assert "No space left" in result.stderr


def test_a_graph_the_runtime_cannot_drive_is_refused_naming_the_file_and_why(tmp_path):
    onnx = pytest.importorskip("onnx")
    folder = tmp_path / "m"
    shutil.copytree(TINY_GPT2, folder)
    model = onnx.load(str(folder / "model.onnx"))
    model.graph.input.append(onnx.helper.make_tensor_value_info("seqlens_k", onnx.TensorProto.INT32, ["batch"]))
    onnx.save(model, str(folder / "model.onnx"))
    with pytest.raises(ModelFolderError, match=r"model\.onnx: .*needs inputs this runtime does not feed: seqlens_k"):
        Generator.load(folder)

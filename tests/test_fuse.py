"""trainer.fuse: the lean GPT-2 graph computes what Optimum's export computes, with far fewer nodes."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from trainer.fuse import FuseError, can_fuse, fused_gpt2, weights_of_folder, weights_of_onnx

FIXTURES = Path(__file__).parent / "fixtures"


def run(session, ids, past, past_length, layers):
    names = {i.name for i in session.get_inputs()}
    batch, new = ids.shape
    feeds = {"input_ids": ids,
             "position_ids": np.broadcast_to(np.arange(past_length, past_length + new), (batch, new)).copy()}
    if "attention_mask" in names:
        feeds["attention_mask"] = np.ones((batch, past_length + new), np.int64)
    for i in range(layers):
        feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"] = past[2 * i], past[2 * i + 1]
    logits, *present = session.run(None, feeds)
    return logits, present


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    config = json.loads((FIXTURES / "tiny_gpt2_hf" / "config.json").read_text())
    path = tmp_path_factory.mktemp("fused") / "model.onnx"
    onnx.save(fused_gpt2(weights_of_folder(FIXTURES / "tiny_gpt2_hf"), config), str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                for p in (FIXTURES / "tiny_gpt2" / "model.onnx", path)]
    return config, path, sessions


def test_the_fused_graph_matches_optimum_with_and_without_a_cache(graphs):
    config, _, (optimum, fused) = graphs
    layers, heads, size = config["n_layer"], config["n_head"], config["n_embd"] // config["n_head"]
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, config["vocab_size"], (3, 9)).astype(np.int64)
    empty = [np.zeros((3, heads, 0, size), np.float32)] * (2 * layers)
    expected, expected_cache = run(optimum, prompt, empty, 0, layers)
    got, cache = run(fused, prompt, empty, 0, layers)
    assert got.shape == expected.shape == (3, 9, config["vocab_size"])
    assert np.abs(got - expected).max() < 1e-4
    assert all(a.shape == b.shape and np.abs(a - b).max() < 1e-4 for a, b in zip(cache, expected_cache))
    # several new tokens after a cache: the causal mask must be offset by the cached length
    more = rng.integers(0, config["vocab_size"], (3, 4)).astype(np.int64)
    expected, _ = run(optimum, more, expected_cache, 9, layers)
    got, cache = run(fused, more, cache, 9, layers)
    assert np.abs(got - expected).max() < 1e-4 and cache[0].shape == (3, heads, 13, size)
    # and the cached run equals running the whole sequence at once
    whole, _ = run(fused, np.concatenate([prompt, more], axis=1), empty, 0, layers)
    assert np.abs(whole[:, 9:] - got).max() < 1e-4


def test_the_fused_graph_is_small_and_keeps_the_runtime_interface(graphs):
    config, path, (optimum, fused) = graphs
    model = onnx.load(str(path))
    assert len(model.graph.node) <= 12 * config["n_layer"] + 8
    assert len(onnx.load(str(FIXTURES / "tiny_gpt2" / "model.onnx")).graph.node) > 5 * len(model.graph.node)
    ops = {n.op_type for n in model.graph.node}
    assert {"MultiHeadAttention", "FastGelu", "LayerNormalization"} <= ops
    optimum_inputs = {i.name for i in optimum.get_inputs()} - {"attention_mask"}
    assert {i.name for i in fused.get_inputs()} == optimum_inputs
    assert [o.name for o in fused.get_outputs()] == [o.name for o in optimum.get_outputs()]


def test_only_plain_gpt2_is_fused(tmp_path):
    llama = json.loads((FIXTURES / "tiny_llama_hf" / "config.json").read_text())
    gpt2 = json.loads((FIXTURES / "tiny_gpt2_hf" / "config.json").read_text())
    assert can_fuse(gpt2) and not can_fuse(llama)
    assert not can_fuse({**gpt2, "activation_function": "relu"})
    with pytest.raises(FuseError, match="only a plain GPT-2"):
        fused_gpt2({}, llama)
    with pytest.raises(FuseError, match="no initializer 'transformer.wte.weight'"):
        fused_gpt2(weights_of_onnx(FIXTURES / "tiny_llama" / "model.onnx"), gpt2)

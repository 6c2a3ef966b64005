"""trainer.screen: the screened output layer gives the full layer's best tokens, and its bound holds."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trainer.fuse import fused_gpt2, weights_of_folder
from trainer.screen import SCREEN_WEIGHT, ScreenError, is_screened, screen_candidates, screen_output_layer, unscreen

FIXTURES = Path(__file__).parent / "fixtures"
VOCAB, WIDTH = 400, 32


def head_graph(table: np.ndarray, columns: np.ndarray | None = None) -> onnx.ModelProto:
    """The output layer alone, as trainer.fuse writes it: hidden states `x` (fed directly; the embedding's Gather at
    input_ids only marks the table) -> MatMul -> logits -> TopK(top_k)."""
    columns = np.ascontiguousarray(table.T) if columns is None else columns
    make = helper.make_node
    nodes = [make("Gather", ["table", "input_ids"], ["embedded"]),
             make("Mul", ["embedded", "zero"], ["nothing"]),
             make("Add", ["x", "nothing"], ["hidden"]),
             make("MatMul", ["hidden", "columns"], ["logits"]),
             make("TopK", ["logits", "top_k"], ["top_logits", "top_ids"], axis=-1, largest=1, sorted=1)]
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(columns, "columns"),
             numpy_helper.from_array(np.zeros(1, np.float32), "zero")]
    graph = helper.make_graph(
        nodes, "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", table.shape[1]]),
         helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
         helper.make_tensor_value_info("top_k", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", table.shape[0]]),
         helper.make_tensor_value_info("top_logits", TensorProto.FLOAT, ["b", "s", "k"]),
         helper.make_tensor_value_info("top_ids", TensorProto.INT64, ["b", "s", "k"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def expose_upper(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a screened graph with one more output, `upper`: each token's estimate + bound (NaN where the step
    computed every logit instead)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    node = next(n for n in model.graph.node if n.name == "ScreenedOutputLayer")
    branches = {a.name: a.g for a in node.attribute}
    branches["then_branch"].output.append(helper.make_tensor_value_info("s_upper", TensorProto.FLOAT, None))
    branches["else_branch"].node.append(helper.make_node(
        "Constant", [], ["no_upper"], value=numpy_helper.from_array(np.full(1, np.nan, np.float32))))
    branches["else_branch"].output.append(helper.make_tensor_value_info("no_upper", TensorProto.FLOAT, None))
    node.output.append("upper")
    model.graph.output.append(helper.make_tensor_value_info("upper", TensorProto.FLOAT, None))
    return model


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def heads():
    table = np.random.default_rng(0).normal(0, 0.2, (VOCAB, WIDTH)).astype(np.float32)
    plain = head_graph(table)
    screened = screen_output_layer(head_graph(table), candidates=64)
    return table, session(plain), session(screened), session(expose_upper(screened))


def hidden_states(kind: str, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(0, 1, (3, 2, WIDTH)).astype(np.float32)
    if kind == "outliers":  # llama-like: a few dimensions far larger than the rest
        x[..., :2] *= 60
    elif kind == "large":
        x *= 1e4
    elif kind == "small":
        x *= 1e-6
    return x


def feeds(x: np.ndarray, k: int) -> dict[str, np.ndarray]:
    return {"x": x, "input_ids": np.zeros(x.shape[:2], np.int64), "top_k": np.array([k], np.int64)}


@pytest.mark.parametrize("kind", ["normal", "outliers", "large", "small"])
def test_no_logit_exceeds_its_upper_bound_and_the_bound_is_tight(heads, kind):
    _, plain, _, upper_session = heads
    rng = np.random.default_rng(1)
    gaps = []
    for _ in range(10):
        x = hidden_states(kind, rng)
        logits, = plain.run(["logits"], feeds(x, 0))
        upper, = upper_session.run(["upper"], feeds(x, 1))
        assert upper.shape == logits.shape, "the screen did not run"
        assert (upper >= logits).all()
        gaps.append(((upper - logits) / logits.std(axis=-1, keepdims=True)).max())
    # a bound that could never fail (an infinite one) would never keep a step: this one stays within 8% of the
    # logits' spread here
    assert max(gaps) < 0.15


@pytest.mark.parametrize("k", [1, 3, 16])
def test_the_screened_layer_gives_the_full_layer_s_best_tokens(heads, k):
    _, plain, screened, _ = heads
    rng = np.random.default_rng(2)
    kept = 0
    for kind in ("normal", "outliers", "large", "small"):
        for _ in range(5):
            x = hidden_states(kind, rng)
            want_values, want_ids = plain.run(["top_logits", "top_ids"], feeds(x, k))
            logits, values, ids = screened.run(["logits", "top_logits", "top_ids"], feeds(x, k))
            assert (ids == want_ids).all()
            np.testing.assert_allclose(values, want_values, rtol=1e-5, atol=1e-6 * np.abs(want_values).max())
            kept += logits.shape[-1] == 0  # the screened answer was kept: no logit was computed
    assert kept >= 15, f"the screen kept its answer in only {kept} of 20 steps"


def test_flat_or_broken_logits_fall_back_to_every_logit(heads):
    _, plain, screened, _ = heads
    for x in (np.zeros((1, 1, WIDTH), np.float32),  # every logit 0: the k-th ties with the rest
              np.full((2, 1, WIDTH), np.nan, np.float32)):
        want = plain.run(["top_logits", "top_ids"], feeds(x, 3))
        logits, values, ids = screened.run(["logits", "top_logits", "top_ids"], feeds(x, 3))
        assert logits.shape == (x.shape[0], 1, VOCAB), "the step did not compute every logit"
        assert (ids == want[1]).all()
        np.testing.assert_array_equal(values, want[0])


def test_top_k_zero_or_above_a_quarter_of_the_candidates_computes_every_logit(heads):
    _, plain, screened, _ = heads
    x = hidden_states("normal", np.random.default_rng(3))
    want, = plain.run(["logits"], feeds(x, 0))
    logits, values = screened.run(["logits", "top_logits"], feeds(x, 0))
    np.testing.assert_array_equal(logits, want)
    assert values.shape[-1] == 0
    want_ids, = plain.run(["top_ids"], feeds(x, 17))
    logits, ids = screened.run(["logits", "top_ids"], feeds(x, 17))  # 17 > 64 / 4
    assert logits.shape == want.shape and (ids == want_ids).all()


def test_what_cannot_be_screened_is_refused_with_the_reason():
    table = np.random.default_rng(4).normal(0, 0.2, (VOCAB, WIDTH)).astype(np.float32)
    screened = screen_output_layer(head_graph(table), candidates=64)
    assert is_screened(screened) and not is_screened(head_graph(table))
    assert any(t.name == SCREEN_WEIGHT for t in screened.graph.initializer)
    with pytest.raises(ScreenError, match="screened already"):
        screen_output_layer(screened)
    untied = head_graph(table, np.ascontiguousarray(table.T) * 2)
    with pytest.raises(ScreenError, match="not tied"):
        screen_output_layer(untied)
    with pytest.raises(ScreenError, match="fewer than the vocabulary"):
        screen_output_layer(head_graph(table), candidates=VOCAB)
    no_top = head_graph(table)
    del no_top.graph.node[-1]
    with pytest.raises(ScreenError, match="no output layer"):
        screen_output_layer(no_top)
    assert screen_candidates(head_graph(table)) == VOCAB // 4
    big = np.zeros((5000, 4), np.float32)
    assert screen_candidates(head_graph(big)) == 512


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The tiny GPT-2 fixture folder twice: the fused graph plain, and screened (64 candidates)."""
    config = json.loads((FIXTURES / "tiny_gpt2_hf" / "config.json").read_text())
    fused = fused_gpt2(weights_of_folder(FIXTURES / "tiny_gpt2_hf"), config)
    root = tmp_path_factory.mktemp("screen")
    made = []
    for name, model in (("plain", fused), ("screened", screen_output_layer(onnx.ModelProto.FromString(
            fused.SerializeToString()), candidates=64))):
        shutil.copytree(FIXTURES / "tiny_gpt2", root / name)
        onnx.save(model, str(root / name / "model.onnx"))
        made.append(root / name)
    return made


def test_the_runtime_draws_the_same_tokens_from_a_screened_graph(folders):
    from test_engine import PROMPT, run
    from test_fuse import engine_like

    from runtime import Generator
    from runtime.sampling import SamplingParams

    plain, screened = (Generator.load(folder, device="cpu", precision="fp32") for folder in folders)
    engines = [screened.engine, engine_like(screened, io_binding=True), engine_like(screened, shared_cache=False)]
    for params in (SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_k=10, top_p=0.95),
                   SamplingParams(temperature=1.0, top_k=0, top_p=0.9), SamplingParams(top_k=40)):
        for seed in range(4):
            want = run(plain.engine, PROMPT, n=3, max_new_tokens=30, params=params, seed=seed)
            for engine in engines:
                assert run(engine, PROMPT, n=3, max_new_tokens=30, params=params, seed=seed) == want
    assert screened.generate("My dream is", n=2, seed=3, max_new_tokens=12) == \
        plain.generate("My dream is", n=2, seed=3, max_new_tokens=12)


def test_unscreen_gives_back_the_plain_layer(heads):
    table, plain, _, _ = heads
    screened = screen_output_layer(head_graph(table), candidates=64)
    restored = unscreen(screened)
    assert not is_screened(restored) and [n.op_type for n in restored.graph.node] == [
        n.op_type for n in head_graph(table).graph.node]
    assert {t.name for t in restored.graph.initializer} == {"table", "columns", "zero"}
    x = hidden_states("normal", np.random.default_rng(5))
    for name, want in zip(["logits", "top_logits", "top_ids"], plain.run(None, feeds(x, 5))):
        np.testing.assert_array_equal(session(restored).run([name], feeds(x, 5))[0], want)
    assert unscreen(restored) is restored

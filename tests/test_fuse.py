"""tweetgen.trainer.export.fuse: the lean GPT-2 and Llama graphs compute what Optimum's export computes, with far
fewer nodes, behind Optimum's interface."""

import json

import numpy as np
import onnxruntime as ort
import pytest

from helpers import FIXTURES, GOLDEN, PROMPT
from helpers import run as run_engine

onnx = pytest.importorskip("onnx")  # fuse.py builds its graphs with onnx's helpers

from tweetgen.trainer.export.fuse import (FuseError, can_fuse, fused_gpt2, fused_llama,  # noqa: E402
                                          weights_of_folder, weights_of_onnx)


def run(session, ids, past, past_length, layers):
    names = {i.name for i in (*session.get_inputs(), *session.get_overridable_initializers())}
    batch, new = ids.shape
    feeds = {"input_ids": ids}
    if "position_ids" in names:
        feeds["position_ids"] = np.broadcast_to(np.arange(past_length, past_length + new), (batch, new)).copy()
    if "attention_mask" in names:
        feeds["attention_mask"] = np.ones((batch, past_length + new), np.int64)
    if "logits_start" in names:
        feeds["logits_start"] = np.zeros(1, np.int64)
    if "top_k" in names:
        feeds["top_k"] = np.ones(1, np.int64)
    for i in range(layers):
        feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"] = past[2 * i], past[2 * i + 1]
    logits, *present = session.run([o.name for o in session.get_outputs() if not o.name.startswith("top_")], feeds)
    return logits, present


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    pytest.importorskip("torch")  # weights_of_folder reads the Hugging Face folder with transformers
    pytest.importorskip("transformers")
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
    # one new token per row after the cache, as the runtime decodes
    step = rng.integers(0, config["vocab_size"], (3, 1)).astype(np.int64)
    expected, _ = run(optimum, step, expected_cache, 9, layers)
    got, cache = run(fused, step, cache, 9, layers)
    assert np.abs(got - expected).max() < 1e-4 and cache[0].shape == (3, heads, 10, size)
    # several new tokens after a cache (onnxruntime's kernel takes that for one row only): the causal mask must be
    # offset by the cached length, and the result equals running the whole sequence at once
    more = rng.integers(0, config["vocab_size"], (1, 4)).astype(np.int64)
    got, _ = run(fused, more, [c[:1] for c in cache], 10, layers)
    whole, _ = run(fused, np.concatenate([prompt[:1], step[:1], more], axis=1), [e[:1] for e in empty], 0, layers)
    assert np.abs(whole[:, 10:] - got).max() < 1e-4


def test_the_fused_graph_is_small_and_keeps_the_runtime_interface(graphs):
    config, path, (optimum, fused) = graphs
    model = onnx.load(str(path))
    assert len(model.graph.node) <= 12 * config["n_layer"] + 15  # + 6 that read the mask
    assert len(onnx.load(str(FIXTURES / "tiny_gpt2" / "model.onnx")).graph.node) > 5 * len(model.graph.node)
    ops = {n.op_type for n in model.graph.node}
    assert {"GroupQueryAttention", "FastGelu", "LayerNormalization"} <= ops
    # Optimum's required inputs exactly (Optimum loads the graph), and two optional ones with defaults
    assert {i.name for i in fused.get_inputs()} == {i.name for i in optimum.get_inputs()}
    assert {i.name for i in fused.get_overridable_initializers()} == {"logits_start", "top_k"}
    # Optimum's outputs in the same order, then each position's best tokens
    assert [o.name for o in fused.get_outputs()] == [o.name for o in optimum.get_outputs()] + ["top_logits",
                                                                                              "top_ids"]


def test_only_plain_gpt2_and_llama_are_fused(tmp_path):
    llama = json.loads((FIXTURES / "tiny_llama_hf" / "config.json").read_text())
    gpt2 = json.loads((FIXTURES / "tiny_gpt2_hf" / "config.json").read_text())
    assert can_fuse(gpt2) and not can_fuse({**gpt2, "activation_function": "relu"})
    assert not can_fuse(llama)  # its head size, 8, is not a multiple of 16 (GroupQueryAttention's rotary)
    assert can_fuse({**llama, "head_dim": 16})
    for change in ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, {"hidden_act": "gelu"},
                   {"attention_bias": True}, {"model_type": "mistral"}):
        assert not can_fuse({**llama, "head_dim": 16, **change}), change
    with pytest.raises(FuseError, match="only a plain GPT-2"):
        fused_gpt2({}, llama)
    with pytest.raises(FuseError, match="only a plain Llama"):
        fused_llama({}, gpt2)
    with pytest.raises(FuseError, match="no initializer 'transformer.wte.weight'"):
        fused_gpt2(weights_of_onnx(FIXTURES / "tiny_llama" / "model.onnx"), gpt2)


@pytest.fixture(scope="module")
def fused_generator(graphs, tmp_path_factory):
    """The tiny GPT-2 fixture folder with the fused graph as its model.onnx."""
    import shutil

    from tweetgen import Generator

    folder = tmp_path_factory.mktemp("fused_folder") / "tiny"
    shutil.copytree(FIXTURES / "tiny_gpt2", folder)
    shutil.copy(graphs[1], folder / "model.onnx")
    return Generator.load(folder, device="cpu")


def engine_like(generator, **options):
    from tweetgen import Engine

    engine = generator.engine
    return Engine(engine.session, engine.spec, context_length=engine.context_length,
                  eos_token_ids=tuple(engine.eos_token_ids.tolist()), **options)


def test_the_runtime_decodes_the_fused_graph_like_transformers(fused_generator, gpt2):
    assert fused_generator.engine.shared_cache and fused_generator.engine.spec.fused
    assert run_engine(fused_generator.engine, PROMPT) == [GOLDEN["gpt2"]]
    assert run_engine(fused_generator.engine, PROMPT, n=3) == [GOLDEN["gpt2"]] * 3
    assert fused_generator.engine.greedy_without_cache(PROMPT, 24) == GOLDEN["gpt2"]
    # the text layer on top: the same greedy text as the unfused graph, and sampled texts that are not empty
    options = dict(n=2, max_new_tokens=8, temperature=0)
    greedy_texts = fused_generator.generate("My dream is", **options)
    assert greedy_texts == gpt2.generate("My dream is", **options) and greedy_texts[0].strip()
    sampled = fused_generator.generate("My dream is", n=2, seed=1, max_new_tokens=8)
    assert len(sampled) == 2 and all(text.strip() for text in sampled)


def test_the_cache_written_in_place_decodes_as_the_copied_cache(fused_generator):
    """Rows leaving the batch take their buffers with them; every path draws the same tokens."""
    from tweetgen.sampling import SamplingParams

    copied = engine_like(fused_generator, shared_cache=False)
    bound = engine_like(fused_generator, io_binding=True)
    params = SamplingParams(temperature=1.0, top_k=0, repetition_penalty=1.3)
    eos = int(fused_generator.engine.eos_token_ids[0])
    early = 0
    for seed in range(12):
        want = run_engine(copied, PROMPT, n=6, max_new_tokens=40, params=params, seed=seed)
        assert run_engine(fused_generator.engine, PROMPT, n=6, max_new_tokens=40, params=params, seed=seed) == want
        assert run_engine(bound, PROMPT, n=6, max_new_tokens=40, params=params, seed=seed) == want
        early += sum(eos in row for row in want)
    assert early > 0, "no row ended early: the test did not cover rows leaving the batch"


def test_the_top_outputs_are_each_position_s_largest_logits_in_order(graphs):
    config, _, (_, fused) = graphs
    layers, heads, size = config["n_layer"], config["n_head"], config["n_embd"] // config["n_head"]
    prompt = np.random.default_rng(2).integers(0, config["vocab_size"], (2, 5)).astype(np.int64)
    feeds = {"input_ids": prompt, "position_ids": np.broadcast_to(np.arange(5), (2, 5)).copy(),
             "attention_mask": np.ones((2, 5), np.int64), "top_k": np.array([7], np.int64)}
    feeds.update({f"past_key_values.{i}.{kind}": np.zeros((2, heads, 0, size), np.float32)
                  for i in range(layers) for kind in ("key", "value")})
    logits, values, ids = fused.run(["logits", "top_logits", "top_ids"], feeds)
    assert values.shape == ids.shape == (2, 5, 7)
    expected = np.argsort(-logits, axis=-1, kind="stable")[..., :7]  # largest first, equal ones by id
    assert (ids == expected).all()
    assert (values == np.take_along_axis(logits, expected, axis=-1)).all()


def test_greedy_and_top_k_read_the_graph_s_best_tokens_and_draw_as_the_logits_do(fused_generator):
    from tweetgen.sampling import SamplingParams

    engine = fused_generator.engine
    logits_only = engine_like(fused_generator, shared_cache=False)  # never asks the graph for its best tokens
    bound = engine_like(fused_generator, io_binding=True)  # the CUDA path: the logits stay where the graph ran
    eos = int(engine.eos_token_ids[0])
    early = 0
    for params in (SamplingParams(temperature=0), SamplingParams(temperature=0.8, top_k=20, top_p=0.9),
                   SamplingParams(temperature=1.5, top_k=5), SamplingParams(temperature=1.5, top_k=399)):
        assert engine._top_request(params) == bound._top_request(params) == (1 if params.greedy else params.top_k)
        assert logits_only._top_request(params) == 0
        for seed in range(6):
            want = run_engine(logits_only, PROMPT, n=4, max_new_tokens=30, params=params, seed=seed)
            assert run_engine(engine, PROMPT, n=4, max_new_tokens=30, params=params, seed=seed) == want
            assert run_engine(bound, PROMPT, n=4, max_new_tokens=30, params=params, seed=seed) == want
            early += sum(eos in row for row in want)
    assert early > 0, "no row ended early: the test did not cover rows leaving the batch"
    # a repetition penalty changes the logits before the ranking, and top_k 0 keeps every token: the logits
    assert engine._top_request(SamplingParams(top_k=20, repetition_penalty=1.2)) == 0
    assert engine._top_request(SamplingParams(top_k=0)) == 0
    assert engine._top_request(SamplingParams(top_k=engine.spec.vocab_size)) == 0


def test_with_end_of_text_forbidden_the_graph_s_best_tokens_draw_as_the_logits_do(fused_generator):
    """min_new_tokens: the graph gives len(eos) more of its best tokens, and the best without end-of-text are drawn
    from: the same tokens as forbidding end-of-text in the logits, and end-of-text is drawn only after."""
    from tweetgen import Engine
    from tweetgen.sampling import SamplingParams

    base = fused_generator.engine
    # The tiny model rarely draws its real end-of-text: a token it draws often plays that part here.
    eos, least = int(run_engine(base, PROMPT, n=1, max_new_tokens=1)[0][0]), 6

    def engine_ending_at(token, **options):
        return Engine(base.session, base.spec, context_length=base.context_length, eos_token_ids=(token,), **options)

    engine, logits_only = engine_ending_at(eos), engine_ending_at(eos, shared_cache=False)
    assert engine._top_request(SamplingParams(top_k=5)) == 5 and logits_only._top_request(SamplingParams()) == 0

    def rows(which, params, seed):
        out = [[] for _ in range(4)]
        for step in which.generate(PROMPT, n=4, max_new_tokens=30, params=params, rng=np.random.default_rng(seed),
                                   min_new_tokens=least):
            for row, token in zip(step.rows, step.tokens):
                out[row].append(int(token))
        return out

    late = 0
    for params in (SamplingParams(temperature=0), SamplingParams(temperature=1.5, top_k=5),
                   SamplingParams(temperature=1.2, top_k=40, top_p=0.9)):
        for seed in range(6):
            want = rows(logits_only, params, seed)
            assert rows(engine, params, seed) == want
            assert all(eos not in row[:least] for row in want)
            late += sum(eos in row for row in want)
    assert late > 0, "end-of-text was never drawn after min_new_tokens: the test did not cover it"
    # top-k plus the end-of-text tokens over the vocabulary: the logits, the same tokens
    vocab, other = base.spec.vocab_size, (eos + 1) % base.spec.vocab_size
    wide = SamplingParams(temperature=1.5, top_k=vocab - 1)
    two_ends = [Engine(base.session, base.spec, context_length=base.context_length, eos_token_ids=(eos, other),
                       **options) for options in ({}, {"shared_cache": False})]
    assert rows(two_ends[0], wide, 0) == rows(two_ends[1], wide, 0)


def test_a_graph_that_is_not_fused_cannot_share_its_cache():
    from tweetgen import Generator

    generator = Generator.load(FIXTURES / "tiny_gpt2", device="cpu")
    assert not generator.engine.shared_cache and not generator.engine.spec.fused
    with pytest.raises(ValueError, match="fused graph"):
        engine_like(generator, shared_cache=True)


def test_logits_start_gives_the_last_positions_only(graphs):
    config, _, (_, fused) = graphs
    layers, heads, size = config["n_layer"], config["n_head"], config["n_embd"] // config["n_head"]
    prompt = np.random.default_rng(1).integers(0, config["vocab_size"], (2, 6)).astype(np.int64)
    empty = [np.zeros((2, heads, 0, size), np.float32)] * (2 * layers)
    every, cache = run(fused, prompt, empty, 0, layers)
    feeds = {"input_ids": prompt, "position_ids": np.broadcast_to(np.arange(6), (2, 6)).copy(),
             "attention_mask": np.ones((2, 6), np.int64), "logits_start": np.array([5], np.int64)}
    feeds.update({f"past_key_values.{i}.{kind}": empty[0] for i in range(layers) for kind in ("key", "value")})
    last, *last_cache = fused.run([o.name for o in fused.get_outputs() if not o.name.startswith("top_")], feeds)
    assert last.shape == (2, 1, config["vocab_size"]) and np.abs(last[:, 0] - every[:, -1]).max() < 1e-5
    assert all(np.abs(a - b).max() < 1e-6 for a, b in zip(last_cache, cache))


@pytest.fixture(scope="module")
def llama16(tmp_path_factory):
    """A tiny random Llama whose head size (16) GroupQueryAttention's rotary takes, grouped 4 heads to 2 KV heads,
    with the tiny Llama fixture's tokenizer."""
    import shutil

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    LlamaConfig, LlamaForCausalLM = transformers.LlamaConfig, transformers.LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama16") / "hf"
    shutil.copytree(FIXTURES / "tiny_llama_hf", folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**config)).save_pretrained(folder)
    return folder


def test_the_fused_llama_graph_computes_what_pytorch_does(llama16):
    import torch  # llama16 skipped the test without torch and transformers
    from transformers import AutoModelForCausalLM

    config = json.loads((llama16 / "config.json").read_text())
    model = fused_llama(weights_of_folder(llama16), config)
    assert len(model.graph.node) <= 12 * config["num_hidden_layers"] + 13  # + 6 that read the mask
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert "position_ids" not in {i.name for i in session.get_inputs()}
    torch_model = AutoModelForCausalLM.from_pretrained(str(llama16), dtype=torch.float32).eval()
    layers = config["num_hidden_layers"]
    ids = np.random.default_rng(2).integers(0, config["vocab_size"], (2, 9)).astype(np.int64)
    with torch.no_grad():
        want = torch_model(torch.from_numpy(ids)).logits.numpy()
    empty = [np.zeros((2, 2, 0, 16), np.float32)] * (2 * layers)
    got, cache = run(session, ids[:, :7], empty, 0, layers)  # the prompt, then two steps on the cache
    assert np.abs(got - want[:, :7]).max() < 1e-4
    for position in (7, 8):
        got, cache = run(session, ids[:, position:position + 1], cache, position, layers)
        assert np.abs(got[:, 0] - want[:, position]).max() < 1e-4


def test_a_llama_export_is_fused_and_the_runtime_decodes_it_like_pytorch(llama16, tmp_path):
    pytest.importorskip("optimum.exporters.onnx")
    from tweetgen.trainer.export.export import export_folder_info, export_model
    from tweetgen.trainer.export.parity import check_parity

    out = tmp_path / "out"
    report = export_model(llama16, out, info=export_folder_info(llama16, "tiny"), int8=True, fp16=False)
    assert report.graph == "fused"
    parity = check_parity(llama16, out, max_new_tokens=12)  # runtime greedy ids vs transformers' generate
    assert parity.equal and parity.prompts >= 3
    from tweetgen import Generator

    generator = Generator.load(out, device="cpu", precision="int8")
    assert generator.engine.shared_cache and generator.engine.spec.kv_heads == 2
    texts = generator.generate("My dream is", n=3, seed=0, max_new_tokens=10)
    assert len(texts) == 3 and all(text.strip() for text in texts)


def test_a_config_with_a_longer_context_than_the_graph_is_refused_with_both_numbers(graphs, tmp_path):
    import shutil

    from tweetgen import Generator, ModelFolderError
    from tweetgen.contract import POSITIONS_METADATA

    config, path, sessions = graphs
    assert sessions[1].get_modelmeta().custom_metadata_map[POSITIONS_METADATA] == str(config["n_positions"])
    folder = tmp_path / "tiny"
    shutil.copytree(FIXTURES / "tiny_gpt2", folder)
    shutil.copy(path, folder / "model.onnx")
    assert Generator.load(folder, device="cpu").engine.spec.positions == config["n_positions"]
    longer = dict(json.loads((folder / "config.json").read_text()), n_positions=config["n_positions"] * 4)
    (folder / "config.json").write_text(json.dumps(longer))
    with pytest.raises(ModelFolderError, match=f"context of {config['n_positions'] * 4} tokens but model.onnx holds "
                                               f"only {config['n_positions']} positions"):
        Generator.load(folder, device="cpu")

"""The export stage on the committed tiny models: parity, variants, perplexity, atomic replacement, card, refusals."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES
from helpers import GOLDEN, PROMPT
from tweetgen import Generator

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("optimum.exporters.onnx")
onnx = pytest.importorskip("onnx")

from tweetgen.trainer.export import export as export_module  # noqa: E402
from tweetgen.trainer.export.card import render_card  # noqa: E402
from tweetgen.trainer.export.export import ExportError, ExportInfo, export_folder_info, export_model  # noqa: E402
from tweetgen.trainer.export.parity import runtime_greedy  # noqa: E402
from tweetgen.trainer.eval.perplexity import perplexity  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STATS = {"alice": {"downloaded": 3187, "retweets": 412, "short": 233, "duplicates": 17, "kept": 2525},
         "bob": {"downloaded": 905, "retweets": 61, "short": 88, "duplicates": 4, "kept": 752}}
# Held-out "tweets"; the distinctive words must never reach the card or tweetgen.json.
EVAL_TEXTS = ["My dream is to fly over the moon zebrafruit", "Rockets 🚀 launch today and we build cars",
              "Happy new year everyone", "Coffee morning with science and code quixotrix"]


def make_info(name="tiny"):
    users = {user: {"prefix": f"@{user}: ", "stats": stats} for user, stats in STATS.items()}
    return ExportInfo(name=name, users=users, prompt_start="<|endoftext|>", base_model="tiny-random",
                      training={"epochs": 2, "learning_rate": 5e-5}, evaluation={"perplexity_before": 412.5,
                                                                                   "perplexity_after": 96.25})


def previous_export(out: Path) -> None:
    """An older model folder at `out`, with a marker file that only it has."""
    out.mkdir(parents=True)
    (out / "tweetgen.json").write_text('{"format": 1, "name": "old"}')
    (out / "marker.txt").write_text("the previous export")


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """arch -> (folder, report); each export replaced an older folder."""
    base = tmp_path_factory.mktemp("exported")
    result = {}
    for arch in ("gpt2", "llama"):
        previous_export(base / arch)
        report = export_model(FIXTURES / f"tiny_{arch}_hf", base / arch, info=make_info(), eval_texts=EVAL_TEXTS)
        result[arch] = (base / arch, report)
    return result


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_export_replaces_the_old_folder_and_decodes_like_pytorch(exported, arch):
    out, report = exported[arch]
    assert not (out / "marker.txt").exists() and leftovers(out) == []
    assert report.parity_prompts == 3 and report.max_logit_diff < 1e-4
    # fuse.py builds both from the weights, but the tiny Llama's head size (8) is no multiple of 16: Optimum's graph
    assert report.graph == {"gpt2": "fused", "llama": "optimum"}[arch]
    metadata = {p.key: p.value for p in onnx.load(str(out / "model.onnx"), load_external_data=False).metadata_props}
    assert ("tweetgen.fused_graph" in metadata) == (arch == "gpt2")
    info = json.loads((out / "tweetgen.json").read_text())
    assert info["format"] == 1 and info["name"] == "tiny" and info["export"]["greedy_parity"]["equal"]
    assert info["versions"]["onnxruntime"] and info["users"]["alice"]["prefix"] == "@alice: "
    # GOLDEN holds transformers' greedy ids (test_parity_torch.py checks them against generate()).
    assert runtime_greedy(Generator.load(out, device="cpu", precision="fp32"), PROMPT, 24) == GOLDEN[arch]
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["do_sample"] is True and generation["top_p"] == 0.95 and generation["max_new_tokens"] == 64


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_int8_variant_is_quantized_and_generates(exported, arch):
    out, report = exported[arch]
    model = onnx.load(str(out / "model_quantized.onnx"))
    ops = [node.op_type for node in model.graph.node]
    weights = {init.name for init in model.graph.initializer}
    assert ops.count("MatMulNBits") + ops.count("MatMulInteger") == report.int8_linear_layers > 0
    assert ("MatMulNBits" if report.int8_method == "blockwise" else "MatMulInteger") in ops
    # the token embedding is int8: block-wise with a scale per row, per-tensor with onnxruntime's one scale
    readers = {n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids"}
    types = {i.name: i.data_type for i in model.graph.initializer if i.name in readers}
    if report.int8_method == "blockwise":
        assert sorted(types.values()) == [onnx.TensorProto.FLOAT, onnx.TensorProto.INT8]  # rows, their scales
    else:
        assert "DequantizeLinear" in ops and list(types.values()) in ([onnx.TensorProto.UINT8],
                                                                      [onnx.TensorProto.INT8])
    assert "Gemm" not in ops
    assert not [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert abs(report.int8_relative_diff) < 0.03 and report.eval_tokens > 20
    generator = Generator.load(out, device="cpu", precision="int8")
    assert generator.model_path.name == "model_quantized.onnx"
    texts = generator.generate("My dream is", n=2, seed=0, max_new_tokens=8, user="bob")
    assert len(texts) == 2 and all(isinstance(t, str) and t.strip() for t in texts)


def test_fp16_variant_is_float16_and_runs_on_cpu(exported):
    out, report = exported["gpt2"]
    path = out / "model_fp16.onnx"
    onnx.checker.check_model(str(path))
    model = onnx.load(str(path))
    assert {init.data_type for init in model.graph.initializer if init.dims} >= {onnx.TensorProto.FLOAT16}
    generator = Generator.load(out, device="cpu", precision="fp16")
    assert generator.engine.spec.cache_dtype == np.float16
    assert 0 < report.fp16_max_logit_diff < 0.1
    assert runtime_greedy(generator, PROMPT, 8) == GOLDEN["gpt2"][:8]


def torch_perplexity(hf_dir, ids_list):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for ids in ids_list:
            logits = model(torch.tensor([ids])).logits[0, :-1].double()
            nll += torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item()
            count += len(ids) - 1
    return float(np.exp(nll / count)), count


def test_perplexity_equals_exp_mean_nll_from_torch(exported):
    out, report = exported["gpt2"]
    generator = Generator.load(out, device="cpu", precision="fp32")
    ids_list = [generator.tokenizer.encode("<|endoftext|>" + text).ids + [0] for text in EVAL_TEXTS]
    expected, count = torch_perplexity(FIXTURES / "tiny_gpt2_hf", ids_list)
    batched = perplexity(out / "model.onnx", EVAL_TEXTS)
    one_by_one = perplexity(out / "model.onnx", EVAL_TEXTS, batch_tokens=1)  # no padding at all
    assert batched.tokens == one_by_one.tokens == count == report.eval_tokens
    assert batched.perplexity == pytest.approx(expected, rel=1e-3)
    assert one_by_one.perplexity == pytest.approx(batched.perplexity, rel=1e-5)
    assert report.perplexity_fp32 == pytest.approx(batched.perplexity, rel=1e-6)
    with pytest.raises(ValueError, match="at least one text"):
        perplexity(out / "model.onnx", [])


def test_a_failing_export_leaves_the_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "tiny"
    previous_export(out)

    def broken(*args, **kwargs):
        raise RuntimeError("quantizer crashed")

    monkeypatch.setattr(export_module, "quantize_int8", broken)
    with pytest.raises(RuntimeError, match="quantizer crashed"):
        export_model(FIXTURES / "tiny_gpt2_hf", out, info=make_info(), fp16=False)
    assert (out / "marker.txt").read_text() == "the previous export" and leftovers(out) == []

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module, "quantize_int8", disk_full)
    with pytest.raises(ExportError, match=f"disk full while exporting {out}"):
        export_model(FIXTURES / "tiny_gpt2_hf", out, info=make_info(), fp16=False)
    assert (out / "marker.txt").is_file() and sorted(p.name for p in out.iterdir()) == ["marker.txt", "tweetgen.json"]
    assert leftovers(out) == []


KILLED_EXPORT = """
import sys, time
from pathlib import Path
from tweetgen.trainer.export import export
def hang(*args, **kwargs):
    Path(sys.argv[2]).write_text("quantizing")
    time.sleep(120)
export.quantize_int8 = hang
export.export_model(sys.argv[3], sys.argv[1], info=export.ExportInfo(name="tiny"), fp16=False)
"""


def test_a_killed_export_leaves_the_old_folder_and_its_temp_is_removed_later(tmp_path):
    from tweetgen.trainer.export.swap import remove_stale_temps

    out, reached = tmp_path / "tiny", tmp_path / "reached"
    previous_export(out)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, str(out), str(reached),
                                str(FIXTURES / "tiny_gpt2_hf")], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not reached.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert reached.exists(), "the export never reached the quantize step"
    assert (out / "marker.txt").read_text() == "the previous export"
    assert len(leftovers(out)) == 1  # the killed export's temporary folder, beside the model folder
    remove_stale_temps(out)
    assert leftovers(out) == [] and (out / "marker.txt").is_file()


def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path):
    from transformers import BertConfig, GPT2Config

    classifier = tmp_path / "classifier"
    GPT2Config(n_layer=1, n_embd=8, n_head=2, architectures=["GPT2ForSequenceClassification"]).save_pretrained(
        classifier)
    with pytest.raises(ExportError, match="GPT2ForSequenceClassification, not a causal language model.*ForCausalLM"):
        export_model(classifier, tmp_path / "out", info=ExportInfo(name="x"))
    bert = tmp_path / "bert"
    BertConfig().save_pretrained(bert)
    with pytest.raises(ExportError, match="no architectures \\(model_type 'bert'\\)"):
        export_model(bert, tmp_path / "out", info=ExportInfo(name="x"))
    with pytest.raises(ExportError, match="has no config.json"):
        export_model(tmp_path, tmp_path / "out", info=ExportInfo(name="x"))
    assert not (tmp_path / "out").exists()


def test_an_export_without_a_model_file_or_with_an_unknown_int8_kind_is_refused(tmp_path):
    model = FIXTURES / "tiny_gpt2_hf"
    with pytest.raises(ExportError, match="would hold no model"):
        export_model(model, tmp_path / "out", info=ExportInfo(name="x"), fp32=False, int8=False, fp16=False)
    with pytest.raises(ValueError, match="int8_method must be None or one of blockwise, per_tensor"):
        export_model(model, tmp_path / "out", info=ExportInfo(name="x"), int8_method="int4")
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_is_not_a_model_folder_is_refused(tmp_path):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ExportError, match="is not a model folder"):
        export_model(FIXTURES / "tiny_gpt2_hf", precious, info=ExportInfo(name="x"))
    assert (precious / "holiday.jpg").is_file()


def card_table(card):
    """user -> {column: int} from the card's per-user table."""
    lines = [line for line in card.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0].startswith("@") or cells[0] == "**total**":
            rows[cells[0]] = dict(zip(header[1:], map(int, cells[1:])))
    return rows


def _front_matter(card: str) -> dict:
    import yaml

    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_card_has_the_stats_given_and_no_tweet_text(exported):
    out, _ = exported["gpt2"]
    card = (out / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["license"] == "mit" and meta["base_model"] == "tiny-random" and meta["language"] == "en"
    assert meta["pipeline_tag"] == "text-generation" and meta["widget"] == [{"text": "My dream is"}]
    assert "tweetgen" in meta["tags"] and "onnx" in meta["tags"] and "datasets" not in meta
    rows = card_table(card)
    assert rows["@alice"] == STATS["alice"] and rows["@bob"] == STATS["bob"]
    assert rows["**total**"] == {k: STATS["alice"][k] + STATS["bob"][k] for k in STATS["alice"]}
    assert "not written by @alice, @bob" in card and "96.25" in card
    assert f"tweetgen-run -m {out} --user alice" in card  # the folder where it is, not exported/NAME
    assert f"ORTModelForCausalLM.from_pretrained({json.dumps(str(out))})" in card
    assert "Sampling defaults (`generation_config.json`" in card
    assert ": temperature 1, top-k 50, top-p 0.95, at most 64 new tokens." in card
    for text in (out / "README.md", out / "tweetgen.json"):
        content = text.read_text()
        assert "zebrafruit" not in content and "quixotrix" not in content


def test_the_front_matter_names_only_a_hub_base_model_and_a_known_license(tmp_path):
    from tweetgen.trainer.export.card import front_matter, hub_id

    local = tmp_path / "my-secret-folder"
    local.mkdir()
    for base in (str(local), "scratch:layers=2,tokenizer=/home/me/tok", str(tmp_path / "model.Q4_1.gguf")):
        assert hub_id(base) is None
        card = render_card(name="m", users={}, base_model=base, training={"base_model": base}, evaluation={},
                           export={}, license="other")
        assert "base_model" not in _front_matter(card) and "my-secret-folder" not in card and "/home/me" not in card
        assert _front_matter(card)["license_name"] == "unknown" and _front_matter(card)["license_link"] == "LICENSE"
    assert hub_id("gpt2") == "gpt2" and hub_id("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    meta = front_matter("m", "gpt2", "mit", {"perplexity_after": 61.23456}).to_dict()
    (index,) = meta["model-index"]
    assert index["name"] == "m" and [r["metrics"] for r in index["results"]] == [
        [{"type": "perplexity", "value": 61.235, "name": "Perplexity on held-out tweets"}]]
    assert index["results"][0]["dataset"] == {"name": "held-out tweets", "type": "tweets"}
    yaml_text = front_matter("m", "gpt2", "mit", {"perplexity_after": 61.23456}).to_yaml()
    assert "model-index" in yaml_text and "value: 61.235" in yaml_text and "license_name" not in yaml_text
    assert "model-index" not in front_matter("m", "gpt2", "mit", {}).to_dict()  # nothing measured: no results


def _snippets(card: str) -> list[tuple[str, str]]:
    import re

    return re.findall(r"```(bash|python)\n(.*?)```", card, flags=re.S)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_every_snippet_in_the_card_runs(exported, arch):
    """The card must not promise what does not work: its CLI, tweetgen, Optimum and pipeline snippets, as written."""
    import shlex
    import subprocess
    import sys

    pytest.importorskip("optimum.onnxruntime")
    out, _ = exported[arch]
    snippets = _snippets((out / "README.md").read_text())
    assert [kind for kind, _ in snippets] == ["bash", "python", "python"]
    for kind, code in snippets:
        if kind == "bash":
            words = shlex.split(code.strip())
            assert words[0] == "tweetgen-run"
            command = [sys.executable, "-m", "tweetgen", *words[1:], "--seed", "0"]
        else:
            command = [sys.executable, "-c", code]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{code}\n{result.stderr[-2000:]}"
        assert result.stdout.strip(), code


def test_the_card_of_a_model_without_users():
    card = render_card(name="m", users={}, base_model="gpt2", training={}, evaluation={}, export={})
    assert "no per-user data counts" in card and "not written by any real person" in card


def test_the_folder_loads_in_optimum_and_generates_the_runtime_ids(exported):
    from optimum.onnxruntime import ORTModelForCausalLM

    out, _ = exported["llama"]
    model = ORTModelForCausalLM.from_pretrained(out)
    generator = Generator.load(out, device="cpu", precision="fp32")
    ids = generator.encode_prompt("Rockets launch", user="alice")
    got = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         do_sample=False, max_new_tokens=16, pad_token_id=0)
    assert got[0, len(ids):].tolist() == runtime_greedy(generator, ids, 16)


def test_export_folder_info_for_a_folder_trained_elsewhere():
    info = export_folder_info(FIXTURES / "tiny_llama_hf", "outside")
    assert info.name == "outside" and info.users == {} and info.prompt_start == "<|endoftext|>"
    assert info.sampling["top_p"] == 0.95 and info.base_model.endswith("tiny_llama_hf")


def test_models_over_the_protobuf_limit_keep_their_weights_outside(exported, tmp_path, monkeypatch):
    import shutil

    from tweetgen.trainer.export import quantize

    folder = tmp_path / "large"
    shutil.copytree(exported["gpt2"][0], folder)
    for variant in ("model_quantized.onnx", "model_fp16.onnx"):
        (folder / variant).unlink()
    monkeypatch.setattr(quantize, "PROTOBUF_LIMIT", 1000)  # bytes: the tiny model counts as large
    assert quantize.quantize_int8(folder / "model.onnx", folder / "model_quantized.onnx") > 0
    quantize.convert_fp16(folder / "model.onnx", folder / "model_fp16.onnx")
    for variant in ("int8", "fp16"):
        generator = Generator.load(folder, device="cpu", precision=variant)
        assert (folder / f"{generator.model_path.name}.data").stat().st_size > 10_000
        assert len(runtime_greedy(generator, PROMPT, 4)) == 4


@pytest.mark.parametrize("exchange", [True, False])
def test_swap_into_place_leaves_the_old_folder_at_the_temp_path(tmp_path, monkeypatch, exchange):
    from tweetgen.trainer.export import swap

    if not exchange:
        monkeypatch.setattr(swap, "_exchange", lambda a, b: False)  # the rename-aside path of other systems
    out, new = tmp_path / "model", tmp_path / "new"
    for folder, text in ((out, "old"), (new, "new")):
        folder.mkdir()
        (folder / "which").write_text(text)
    swap.swap_into_place(new, out)
    assert (out / "which").read_text() == "new" and (new / "which").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "new"]


@pytest.mark.parametrize("method, op", [("blockwise", "MatMulNBits"), ("per_tensor", "MatMulInteger")])
def test_both_int8_kinds_quantize_every_linear_layer(exported, tmp_path, method, op):
    from tweetgen.trainer.export.quantize import quantize_int8

    out, _ = exported["gpt2"]
    count = quantize_int8(out / "model.onnx", tmp_path / "q.onnx", method=method)
    ops = [node.op_type for node in onnx.load(str(tmp_path / "q.onnx")).graph.node]
    assert ops.count(op) == count == 9  # 2 layers x 4 linear layers + the output layer
    with pytest.raises(ValueError, match="int8 method must be one of blockwise, per_tensor"):
        quantize_int8(out / "model.onnx", tmp_path / "q.onnx", method="int4")


@pytest.mark.parametrize("tolerance, kept, warned", [(10.0, "per_tensor", False), (-1.0, "blockwise", True)])
def test_the_export_keeps_per_tensor_int8_only_within_tolerance(tmp_path, monkeypatch, tolerance, kept, warned):
    monkeypatch.setattr(export_module, "INT8_TOLERANCE", tolerance)
    report = export_model(FIXTURES / "tiny_gpt2_hf", tmp_path / "out", info=export_folder_info(
        FIXTURES / "tiny_gpt2_hf", "t"), eval_texts=["rockets launch today", "the moon and mars"], fp16=False)
    assert report.int8_method == kept and bool(report.warnings) == warned


def test_a_big_int8_model_keeps_its_weights_beside_the_graph(tmp_path, monkeypatch):
    """Above EXTERNAL_DATA_BYTES the int8 weights go to model_quantized.onnx.data: same model, mapped at load."""
    import shutil

    from tweetgen.trainer.export import quantize

    single, split = tmp_path / "single", tmp_path / "split"
    for folder in (single, split):
        shutil.copytree(FIXTURES / "tiny_gpt2", folder)
    quantize.quantize_int8(single / "model.onnx", single / "model_quantized.onnx", method="per_tensor")
    monkeypatch.setattr(quantize, "EXTERNAL_DATA_BYTES", 0)
    quantize.quantize_int8(split / "model.onnx", split / "model_quantized.onnx", method="per_tensor")
    data = split / "model_quantized.onnx.data"
    assert data.is_file() and not (single / "model_quantized.onnx.data").exists()
    graph_bytes = (split / "model_quantized.onnx").stat().st_size
    assert graph_bytes + data.stat().st_size >= (single / "model_quantized.onnx").stat().st_size > graph_bytes
    assert data.stat().st_mode & 0o044  # readable by all, as the graph is
    ids = [runtime_greedy(Generator.load(f, device="cpu", precision="int8"), PROMPT, 12) for f in (single, split)]
    assert ids[0] == ids[1]


def test_the_embedding_table_is_stored_int8_per_row_within_half_a_step(exported, tmp_path):
    from onnx import numpy_helper

    from tweetgen.trainer.export.quantize import quantize_int8

    out, _ = exported["gpt2"]
    fp32 = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out / "model.onnx")).graph.initializer}
    quantize_int8(out / "model.onnx", tmp_path / "q.onnx", method="blockwise")
    int8 = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    (name,) = [n.removesuffix("_int8") for n in int8 if n.endswith("_int8")]
    table, scale = int8[name + "_int8"], int8[name + "_row_scale"]
    assert name not in int8 and table.dtype == np.int8 and scale.shape == (len(table), 1)
    error = np.abs(table.astype(np.float32) * scale - fp32[name]).max(axis=1)
    assert (error <= scale[:, 0] / 2 + 1e-7).all()
    assert (np.abs(table).max(axis=1) == 127).all()  # each row uses its whole range


@pytest.mark.parametrize("kind, tolerance", [("fast", float("inf")), ("accurate", -1.0)])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_int4_variant_is_the_fast_kind_within_tolerance_else_the_accurate_one(tmp_path, monkeypatch, arch, kind,
                                                                                   tolerance):
    from tweetgen.trainer.export import export as export_module
    from tweetgen.trainer.export.quantize import INT4_KINDS, output_layer, prepare_for_quantization

    monkeypatch.setattr(export_module, "INT4_FAST_TOLERANCE", tolerance)  # the fast kind passes, or can never
    out = tmp_path / arch
    report = export_model(FIXTURES / f"tiny_{arch}_hf", out, info=make_info(), eval_texts=EVAL_TEXTS, fp16=False,
                          int4=True)
    assert report.int4_kind == kind
    settings = INT4_KINDS[kind]
    fp32 = onnx.load(str(out / "model.onnx"))
    prepare_for_quantization(fp32)  # a tied output layer reads Transpose(embedding), folded into a constant here
    head = output_layer(fp32.graph)
    assert head is not None
    model = onnx.load(str(out / "model_q4.onnx"))
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits")
            for n in model.graph.node if n.op_type == "MatMulNBits"}
    assert len(bits) == report.int4_linear_layers == report.int8_linear_layers
    head_bits = settings["output_layer_bits"]
    assert bits.pop(f"{head}_Q{head_bits}") == head_bits and set(bits.values()) == {4}
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits" and n.name != f"{head}_Q{head_bits}"]
    assert {next(a.i for a in n.attribute if a.name == "block_size") for n in nodes} == {settings["block_size"]}
    assert not [n.name for n in nodes if len(n.input) > 3 and n.input[3]]  # symmetric: no zero points
    weights = {init.name for init in model.graph.initializer}
    assert not [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert report.perplexity_int4 > 0 and report.int4_relative_diff == pytest.approx(
        report.perplexity_int4 / report.perplexity_fp32 - 1)
    info = json.loads((out / "tweetgen.json").read_text())
    assert info["export"]["int4"]["perplexity_int4"] == report.perplexity_int4
    assert info["export"]["int4"]["kind"] == kind
    assert f"perplexity of the 4-bit variant ({kind} kind)" in (out / "README.md").read_text()
    packed = {i.name: i for i in model.graph.initializer}
    for node in (n for n in model.graph.node if n.op_type == "MatMulNBits"):
        attrs = {a.name: a.i for a in node.attribute}
        blocks = -(-attrs["K"] // attrs["block_size"])
        assert np.prod(packed[node.input[1]].dims) == attrs["N"] * blocks * attrs["block_size"] * attrs["bits"] // 8
    generator = Generator.load(out, device="cpu", precision="int4")
    assert generator.model_path.name == "model_q4.onnx"
    texts = generator.generate("My dream is", n=2, seed=0, max_new_tokens=8, user="bob")
    assert len(texts) == 2 and all(isinstance(t, str) and t.strip() for t in texts)
    # auto: the fast 4-bit kind first (it decodes faster within 1% of fp32's perplexity), else int8
    auto = "model_q4.onnx" if kind == "fast" else "model_quantized.onnx"
    assert Generator.load(out, device="cpu").model_path.name == auto

"""The benchmark harness's machinery on the committed tiny GPT-2, tweetgen engine only. No timing is asserted."""

import json
import shutil
import sys

import numpy as np
import pytest

from benchmarks import run
from benchmarks.engines.base import engine_specs, tweetgen_variants
from benchmarks.models import ModelSet
from benchmarks.report import check_correctness
from benchmarks.sizes import StackSize, setup_stacks, stack_size
from conftest import TINY_GPT2


@pytest.fixture(scope="module")
def tiny_with_int8(tmp_path_factory):
    """The tiny fixture plus an int8 variant and an extra graph, as a runtime that ships three variants would."""
    pytest.importorskip("onnx")  # the trainer's quantizer edits the graph with onnx,
    pytest.importorskip("onnx_ir")  # and onnxruntime's block-wise quantizer with onnx_ir
    from tweetgen.trainer.export.quantize import quantize_int8

    folder = tmp_path_factory.mktemp("bench") / "tiny_gpt2"
    shutil.copytree(TINY_GPT2, folder)
    quantize_int8(folder / "model.onnx", folder / "model_quantized.onnx")
    shutil.copy(folder / "model.onnx", folder / "model_optimized.onnx")  # stands in for an optimized fp32 graph
    return folder


def test_every_shipped_variant_becomes_a_row(tiny_with_int8):
    assert tweetgen_variants(tiny_with_int8) == {"fp32": "model.onnx", "int8": "model_quantized.onnx",
                                                 "optimized": "model_optimized.onnx"}
    names = [spec.name for spec in engine_specs(ModelSet(name="t", onnx=str(tiny_with_int8)), gpu=False)]
    assert names[:3] == ["tweetgen-fp32", "tweetgen-int8", "tweetgen-optimized"]
    assert {"pytorch-fp32", "optimum-int8", "ct2-int8", "llamacpp-q8_0"} <= set(names)


def test_one_run_writes_the_json_with_every_column(tiny_with_int8, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")  # the chart beside the JSON
    # the install sizes are this machine's: the run is checked for reporting what sizes.py measures, stood in for
    sizes = {"tweetgen": StackSize(bytes=52_000_000, distributions=("numpy", "tokenizers"), missing=()),
             "trainer": StackSize(bytes=2_400_000_000, distributions=("numpy", "tokenizers", "torch"),
                                  missing=("wandb",))}
    monkeypatch.setattr(run, "all_stack_sizes", lambda: sizes)
    out = tmp_path / "results"
    run.main(["--shapes", "--model", str(tiny_with_int8), "--engines", "tweetgen", "llamacpp-q8_0",
              "--rounds", "1", "--repeats", "1", "--new-tokens", "6", "--long-prompt", "24",
              "--cache", str(tmp_path / "cache"), "--out", str(out), "--ppl-texts", str(_texts(tmp_path))])
    (path,) = out.glob("*.json")
    results = json.loads(path.read_text())
    rows = results["summary"]["tiny_gpt2"]["engines"]
    # on Linux the shipped fp32 and int8 are also loaded without huge pages (Generator.load(huge_pages=False))
    small = {"tweetgen-fp32-4kpages", "tweetgen-int8-4kpages"} if sys.platform.startswith("linux") else set()
    assert set(rows) == {"tweetgen-fp32", "tweetgen-int8", "tweetgen-optimized", "llamacpp-q8_0"} | small
    for engine in ("tweetgen-fp32", "tweetgen-int8", "tweetgen-optimized", *small):
        row = rows[engine]
        assert row["status"] == "ok"
        assert {"load_s", "peak_rss_mb", "model_mb", "short", "long", "sample5"} <= set(row)
        assert {"ttft_ms", "decode_ms", "tok_s", "total_s"} <= set(row["short"])
        assert row["long"]["prompt_tokens"] == 24 and row["sample5"]["tok_s"] > 0
        assert len(results["raw"]["tiny_gpt2"][engine][0]["short"]["greedy_ids"]) == 6
    # A peer that cannot run here (no GGUF conversion of this folder) is a skipped row with a note, not a crash.
    assert rows["llamacpp-q8_0"]["status"].startswith("skipped")
    checks = results["correctness"]["tiny_gpt2"]
    assert checks["tweetgen-optimized"]["equal"] is True  # the same fp32 graph: must give the same greedy ids
    if small:
        assert checks["tweetgen-fp32-4kpages"]["equal"] is True  # the same graph on other pages
        assert results["ratios"]["tiny_gpt2"]["tweetgen-int8-4kpages 5x64 sampled: total s"] > 0
    assert checks["tweetgen-int8"]["precision"] == "int8" and set(checks["tweetgen-int8"]["first_diff"]) == {
        "short", "long"}
    assert results["perplexity"]["tiny_gpt2"]["fp32"] > 1
    assert "first_tweet_s" in results["summary"]["tiny_gpt2"]["cold_start"]
    assert results["install_mb"] == {
        "tweetgen": {"mb": 52.0, "missing": [], "distributions": ["numpy", "tokenizers"]},
        "trainer": {"mb": 2400.0, "missing": ["wandb"], "distributions": ["numpy", "tokenizers", "torch"]}}
    assert "tweetgen-int8 / llamacpp-q8_0" in results["ratios"]["tiny_gpt2"]
    assert (out / path.name.replace(".json", ".png")).is_file()
    # the memory floor: the copy probe before and after, and each tweetgen row's bytes a token
    floor = results["floor"]
    assert len(floor["copy_bandwidth_gbs"]) == 2 and min(floor["copy_bandwidth_gbs"]) > 0
    read = floor["bytes_per_token"]["tiny_gpt2"]
    assert 0 < read["tweetgen-int8"] < read["tweetgen-fp32"] == read["tweetgen-optimized"]
    assert read["tweetgen-fp32"] < rows["tweetgen-fp32"]["model_mb"] * 1e6  # the embedding table is looked up


def _texts(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("my dream is to fly over the moon\nwe build cars today\nhappy new year everyone\n")
    return path


def test_a_float_variant_that_decodes_differently_fails_and_peers_are_reported():
    reference = {"short": {"greedy_ids": [1, 2, 3]}, "long": {"greedy_ids": [4, 5]}}
    other = {"short": {"greedy_ids": [1, 2, 9]}, "long": {"greedy_ids": [4, 5]}}
    checks = check_correctness({"m": {"tweetgen-fp32": [reference], "tweetgen-optimized": [other],
                                      "ct2-float32": [other], "ct2-int8": [other], "optimum-fp32": [reference]}})["m"]
    assert checks["tweetgen-optimized"] == {"precision": "fp32", "equal": False,
                                            "first_diff": {"short": 2, "long": None},
                                            "verdict": "DIFFERENT: fails the check"}
    assert checks["ct2-float32"]["verdict"].startswith("differs (the peer")
    assert checks["ct2-int8"]["verdict"] == "differs (int8)"
    assert checks["optimum-fp32"]["verdict"] == "equal"


def fake_distribution(site, name, requires=(), files=None):
    """A distribution installed in the folder `site` (a .dist-info with METADATA and RECORD, and its files);
    returns the bytes of the files its RECORD lists. `files`: relative path -> size in bytes."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    metadata = "Metadata-Version: 2.1\nName: {}\nVersion: 1.0\n{}".format(
        name, "".join(f"Requires-Dist: {r}\n" for r in requires))
    (info / "METADATA").write_text(metadata)
    listed = {f"{info.name}/METADATA": len(metadata.encode())}
    for path, size in (files or {}).items():
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_bytes(b"x" * size)
        listed[path] = size
    # RECORD lists itself without a size, and may list a file that is gone (not counted)
    rows = [f"{path},," for path in listed] + [f"{info.name}/RECORD,,", f"{name}/deleted.py,,"]
    (info / "RECORD").write_text("\n".join(rows) + "\n")
    return sum(listed.values()) + (info / "RECORD").stat().st_size


def test_a_stack_s_size_is_its_distributions_files_followed_through_their_requirements(tmp_path, monkeypatch):
    site = tmp_path / "site"
    top = fake_distribution(site, "tg-fake-app", files={"tg_fake_app/__init__.py": 1000, "tg_fake_app/w.bin": 23},
                            requires=["tg-fake-lib>=1", 'tg-fake-plot; extra == "chart"',
                                      'tg-fake-old; python_version < "3"', "tg-fake-absent"])
    lib = fake_distribution(site, "tg-fake-lib", files={"tg_fake_lib/core.so": 5000}, requires=["tg-fake-app"])
    plot = fake_distribution(site, "tg-fake-plot", files={"tg_fake_plot/p.py": 300})
    fake_distribution(site, "tg-fake-old", files={"tg_fake_old/o.py": 70})
    fake_distribution(site, "tg-fake-unrelated", files={"tg_fake_unrelated/u.py": 9000})
    monkeypatch.syspath_prepend(str(site))

    plain = stack_size(["tg-fake-app"])
    # a requirement's requirements count once (the cycle back to the app too); an extra only when asked; a marker
    # false for this interpreter never; one not installed is listed as missing (the size is then a lower bound)
    assert plain == StackSize(bytes=top + lib, distributions=("tg-fake-app", "tg-fake-lib"),
                              missing=("tg-fake-absent",))
    with_chart = stack_size(["tg-fake-app[chart]"])
    assert with_chart.bytes == top + lib + plot and "tg-fake-plot" in with_chart.distributions
    assert stack_size(["tg-fake-plot"]).bytes == plot and stack_size(["tg-fake-plot"]).mb == plot / 1e6
    assert stack_size(["tg-fake-nothing"]) == StackSize(bytes=0, distributions=(), missing=("tg-fake-nothing",))


def test_the_runtime_stack_is_the_trainer_s_without_torch():
    stacks = setup_stacks()  # from setup.cfg: install_requires, and that plus the `train` extra
    runtime, trainer = stacks["tweetgen"], stacks["trainer"]
    assert runtime and trainer[:len(runtime)] == runtime and len(trainer) > len(runtime)
    assert not any(r.startswith("torch") for r in runtime) and any(r.startswith("torch") for r in trainer)


def test_a_cached_export_of_another_int8_kind_is_stale(tmp_path):
    from benchmarks.models import export_int8_method, int8_method_for

    folder = tmp_path / "onnx"
    folder.mkdir()
    assert export_int8_method(folder) is None  # no tweetgen.json: made before the kinds were recorded
    (folder / "tweetgen.json").write_text(json.dumps({"export": {"graph": "optimum", "int8": {"matmul_integer": 3}}}))
    assert export_int8_method(folder) is None
    (folder / "tweetgen.json").write_text(json.dumps({"export": {"int8": {"method": "per_tensor"}}}))
    assert export_int8_method(folder) == "per_tensor" == int8_method_for({"model_type": "gpt2"})
    assert int8_method_for({"model_type": "llama"}) == "blockwise"


def test_the_bench_exports_with_the_trainer_s_export_and_keeps_optimum_s_graph_for_its_rows(tmp_path):
    """One export path: the bench's tweetgen rows run what `tweetgen-train export` makes (checked against
    PyTorch), and the Optimum rows Optimum's own graph."""
    pytest.importorskip("torch")
    pytest.importorskip("optimum.exporters.onnx")
    from benchmarks.models import build_from_hf
    from conftest import FIXTURES
    from tweetgen import Generator, read_folder

    models = build_from_hf(FIXTURES / "tiny_gpt2_hf", tmp_path / "cache", name="tiny", fp16=True)
    export = read_folder(models.onnx).info["export"]
    assert export["graph"] == "fused" and export["greedy_parity"]["equal"]
    assert read_folder(models.optimum_onnx).info["export"]["graph"] == "optimum"
    fp16 = Generator.load(models.onnx, device="cpu", precision="fp16")
    assert fp16.engine.spec.cache_dtype is np.float16
    texts = fp16.generate("My dream is", n=2, seed=0, max_new_tokens=8)
    assert len(texts) == 2 and all(text.strip() for text in texts)



def test_the_gpu_rows_are_compared_with_pytorch_on_the_gpu_precision_for_precision():
    from benchmarks.report import ratios

    def row(short, long, sample):
        return {"status": "ok", "short": {"tok_s": short}, "long": {"tok_s": long}, "sample5": {"tok_s": sample}}

    engines = {"tweetgen-cuda-fp16": row(480, 490, 1600), "pytorch-cuda-fp16": row(160, 245, 800),
               "tweetgen-cuda-fp32": row(250, 100, 500), "pytorch-cuda-fp32": {"status": "error: out of memory"}}
    out = ratios({"m": {"engines": engines, "cold_start": {}}})["m"]
    assert out["tweetgen-cuda-fp16 / pytorch-cuda-fp16, batch-1"] == 3
    assert out["tweetgen-cuda-fp16 / pytorch-cuda-fp16, batch-1, 200-token prompt"] == 2
    assert out["tweetgen-cuda-fp16 / pytorch-cuda-fp16, 5x64 sampled"] == 2
    assert out["tweetgen-cuda-fp32 / pytorch-cuda-fp32, batch-1"] is None  # the peer's row failed: no ratio
    assert not any(name.startswith("tweetgen-cuda") and "llamacpp" in name for name in out)  # no GPU-CPU ratios


def test_bytes_a_token_leave_out_tables_that_are_only_looked_up(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from benchmarks.floor import onnx_bytes_per_token

    table = numpy_helper.from_array(np.zeros((1000, 8), dtype=np.float32), "table")  # 32,000 bytes, looked up
    weight = numpy_helper.from_array(np.zeros((8, 4), dtype=np.int8), "weight")  # 32 bytes, read whole
    shared = numpy_helper.from_array(np.zeros((4, 8), dtype=np.float32), "shared")  # a Gather's and a MatMul's
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"]),
             helper.make_node("Cast", ["rows"], ["rows8"], to=TensorProto.INT8),
             helper.make_node("MatMulInteger", ["rows8", "weight"], ["mid"]),
             helper.make_node("Gather", ["shared", "ids"], ["again"]),
             helper.make_node("MatMul", ["again", "shared_t"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              initializer=[table, weight, shared])
    graph.node[4].input[1] = "shared"  # the same tensor used both ways: read whole
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert onnx_bytes_per_token(path) == 32 + 4 * 8 * 4


def test_the_headline_is_each_ratios_worst_round():
    from benchmarks.report import worst_rounds

    assert worst_rounds({"a / b": [1.6, 1.41, None, 1.5], "c / d": [None, None]}) == {"a / b": 1.41, "c / d": None}

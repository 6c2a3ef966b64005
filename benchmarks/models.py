"""The models every engine runs: one random-weight shape (or a given folder) in each engine's own format.

    python -m benchmarks.models [--cache DIR] [--shapes gpt2 distilgpt2] [--hf DIR ...] [--model DIR ...]

For each model, a folder `<cache>/<name>/` holds:
  hf/              the PyTorch folder (config.json, model.safetensors, tokenizer): transformers, CTranslate2, GGUF
  onnx/            tweetgen's export of it (model.onnx, model_quantized.onnx, ...): tweetgen runtime. Without Optimum
                   (e.g. a GPU machine whose transformers is newer than Optimum allows) the fused graph is built
                   straight from the weights instead: fp32 and fp16 only, no check against PyTorch
  onnx-optimum/    the same export with Optimum's own graph (GPT-2 only: tweetgen's is rebuilt with fused
                   operators that ORTModelForCausalLM cannot drive): the Optimum rows
  ct2-float32/, ct2-int8/                  CTranslate2 conversions (when ctranslate2 is installed)
  gguf/model-{f32,q8_0,q4_0,q4_K_M}.gguf  llama.cpp conversions (when llama-cpp-python is installed): f32 and q8_0
                   by llama.cpp's converter, the 4-bit kinds quantized from f32 by llama.cpp's own quantizer
  bench_model.json the manifest the workers read: which of these exist, and why a missing one is missing.

Random weights time the same as trained ones: the engines force the full number of new tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("TWEETGEN_BENCH_CACHE", "~/.cache/tweetgen-bench")).expanduser()
REPO = Path(__file__).resolve().parent.parent
GPT2_TOKENIZER = REPO.parent / "shared" / "data" / "tokenizer" / "gpt2"  # encoder.json + vocab.bpe
# Random-weight shapes: GPT2Config keyword overrides. "tiny" is for smoke tests of the harness itself.
SHAPES = {
    "gpt2": {},  # GPT-2 124M
    "distilgpt2": {"n_layer": 6},  # distilgpt2's shape, 82M
    "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2},  # the 50k vocabulary dominates: ~3.3M parameters
}
CT2_QUANTIZATIONS = ("float32", "int8")
GGUF_TYPES = ("f32", "q8_0")  # written by convert_hf_to_gguf.py
# made from the f32 file by llama_model_quantize (llama.cpp's quantizer): its llama_ftype numbers
GGUF_QUANTIZED = {"q4_0": 2, "q4_K_M": 15}


@dataclass
class ModelSet:
    """One model in every format the engines need; a format that could not be made is None, with a note."""

    name: str
    onnx: str  # tweetgen export folder
    optimum_onnx: str | None = None  # export with Optimum's graph, when tweetgen's is not (None: `onnx` is)
    hf: str | None = None  # PyTorch folder
    ct2: dict[str, str] = field(default_factory=dict)  # quantization -> CTranslate2 folder
    gguf: dict[str, str] = field(default_factory=dict)  # type -> .gguf file
    trained: bool = False  # real weights: the int8 perplexity check means something
    notes: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: str | Path) -> ModelSet:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def manifest_path(cache: Path, name: str) -> Path:
    return cache / name / "bench_model.json"


def build_shape(shape: str, cache: Path, *, fp16: bool = False, seed: int = 0) -> ModelSet:
    """A random-weight model of a named shape (SHAPES), with the real GPT-2 tokenizer, in every format."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")
    hf = cache / shape / "hf"
    if not (hf / "model.safetensors").is_file():
        _random_gpt2(hf, SHAPES[shape], seed)
    return build_from_hf(hf, cache, name=shape, fp16=fp16, trained=False)


def optimum_installed() -> bool:
    try:
        import optimum.exporters.onnx  # noqa: F401
    except ImportError:
        return False
    return True


def build_from_hf(hf: Path, cache: Path, *, name: str, fp16: bool = False, trained: bool = True,
                  onnx: Path | None = None) -> ModelSet:
    """Export a Hugging Face causal-LM folder with tweetgen's export (unless `onnx` is its export already; the same
    function `tweetgen-train export` runs, checked against PyTorch) and convert it for every installed peer engine:
    Optimum's own graph for the Optimum rows when Optimum is installed (a GPU machine whose transformers is newer
    than optimum-onnx accepts has none: no Optimum rows there)."""
    root = cache / name
    root.mkdir(parents=True, exist_ok=True)
    optimum_onnx = None
    notes = []
    if onnx is None:
        onnx = root / "onnx"
        _ensure_export(hf, onnx, name, fp16, fuse=True)
        if export_graph(onnx) != "optimum" and optimum_installed():
            optimum_onnx = root / "onnx-optimum"
            _ensure_export(hf, optimum_onnx, name, False, fuse=False)
        elif not optimum_installed():
            notes.append("no Optimum here: no Optimum rows")
    models = ModelSet(name=name, onnx=str(onnx), optimum_onnx=str(optimum_onnx) if optimum_onnx else None, hf=str(hf),
                      trained=trained, notes=notes)
    _add_ct2(models, hf, root)
    _add_gguf(models, hf, root, cache)
    models.save(manifest_path(cache, name))
    return models


def from_export(folder: Path, cache: Path, *, name: str | None = None) -> ModelSet:
    """An existing exported folder (e.g. the default model): the ONNX rows only (tweetgen, Optimum), since the
    peers need its PyTorch folder; give that with --hf to get every row on the same weights."""
    name = name or folder.resolve().name
    notes = ["an exported folder without its PyTorch source: PyTorch, CTranslate2 and llama.cpp rows need --hf"]
    if export_graph(folder) == "fused":
        notes.append("its graph is tweetgen's fused one, which Optimum cannot drive: the Optimum rows need --hf")
    models = ModelSet(name=name, onnx=str(folder), trained=True, notes=notes)
    (cache / name).mkdir(parents=True, exist_ok=True)
    models.save(manifest_path(cache, name))
    return models


def build_all(shapes: list[str], hf_folders: list[Path], exported: list[Path], cache: Path, *,
              fp16: bool = False) -> list[ModelSet]:
    built = [build_shape(shape, cache, fp16=fp16) for shape in shapes]
    built += [build_from_hf(hf, cache, name=hf.resolve().name, fp16=fp16) for hf in hf_folders]
    return built + [from_export(folder, cache) for folder in exported]


def _random_gpt2(dest: Path, overrides: dict, seed: int) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    if not GPT2_TOKENIZER.is_dir():
        raise FileNotFoundError(f"the GPT-2 tokenizer is not at {GPT2_TOKENIZER} (encoder.json, vocab.bpe)")
    torch.manual_seed(seed)
    config = GPT2Config(**overrides)
    model = GPT2LMHeadModel(config).eval()
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    # A folder that transformers' save_pretrained wrote from these files (e.g. here, for a GPU machine whose
    # transformers is another major version) is copied as is: the same tokenizer.json whatever transformers runs.
    saved = GPT2_TOKENIZER / "saved"
    if (saved / "tokenizer.json").is_file():
        for item in saved.iterdir():
            shutil.copy(item, tmp / item.name)
    else:
        GPT2TokenizerFast(vocab_file=str(GPT2_TOKENIZER / "encoder.json"),
                          merges_file=str(GPT2_TOKENIZER / "vocab.bpe")).save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _export_info(onnx: Path) -> dict:
    try:
        info = json.loads((onnx / "tweetgen.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info.get("export") or {}


def export_graph(onnx: Path) -> str:
    """"fused" or "optimum": which graph an export folder holds (folders from before the fused graph: "optimum")."""
    return _export_info(onnx).get("graph", "optimum")


def export_int8_method(onnx: Path) -> str | None:
    """The int8 kind of an export folder's model_quantized.onnx (None: a folder from before the kinds were named)."""
    return (_export_info(onnx).get("int8") or {}).get("method")


def graph_inputs(path: Path) -> set[str]:
    """The input names of an ONNX graph, without reading its weights (a fused graph from before its top_k input
    lacks the TopK output the runtime now reads)."""
    import onnx

    return {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}


def int8_method_for(config: dict) -> str:
    """Random weights make a perplexity check meaningless: GPT-2 shapes get the per-tensor kind, which the export
    keeps for a trained GPT-2 when it passes that check (the default model's card says which kind it kept); other
    models the block-wise kind, the one accurate everywhere."""
    return "per_tensor" if config.get("model_type") == "gpt2" else "blockwise"


def _ensure_export(hf: Path, out: Path, name: str, fp16: bool, *, fuse: bool) -> None:
    """Export unless `out` holds this kind of export already: the graph and the int8 kind wanted (a cached export
    of another graph or int8 kind, from before the kinds were recorded, or a fused graph from before its
    Optimum-compatible interface is redone)."""
    from tweetgen.trainer.export.fuse import can_fuse

    config = json.loads((hf / "config.json").read_text(encoding="utf-8"))
    wanted = "fused" if fuse and can_fuse(config) else "optimum"
    if not (out / "model_quantized.onnx").is_file() or export_graph(out) != wanted \
            or export_int8_method(out) != int8_method_for(config) \
            or (wanted == "fused" and "attention_mask" not in graph_inputs(out / "model_quantized.onnx")):
        _export(hf, out, name, fp16, fuse=wanted == "fused")
    elif fp16 and not (out / "model_fp16.onnx").is_file():  # built before without it
        from tweetgen.trainer.export.quantize import convert_fp16

        convert_fp16(out / "model.onnx", out / "model_fp16.onnx")
    if wanted == "fused":  # after a fresh export too: the export itself makes no 4-bit graph here
        _ensure_int4(out)


def _ensure_int4(out: Path) -> None:
    """The 4-bit graph of a fused export. Random weights have no perplexity to choose a kind by: the fast kind, the
    one the export keeps for trained GPT-2s."""
    if not (out / "model_q4.onnx").is_file():
        from tweetgen.trainer.export.quantize import INT4_KINDS, quantize_int4

        print(f"[models] 4-bit variant -> {out / 'model_q4.onnx'}", file=sys.stderr)
        quantize_int4(out / "model.onnx", out / "model_q4.onnx", **INT4_KINDS["fast"])


def _export(hf: Path, out: Path, name: str, fp16: bool, *, fuse: bool) -> None:
    from tweetgen.trainer.export.export import export_folder_info, export_model

    graph = "fused" if fuse else "Optimum's"
    print(f"[models] exporting {hf} -> {out} (tweetgen export, {graph} graph, int8{' + fp16' if fp16 else ''})",
          file=sys.stderr)
    config = json.loads((hf / "config.json").read_text(encoding="utf-8"))
    export_model(hf, out, info=export_folder_info(hf, name), int8=True, fp16=fp16, fuse=fuse,
                 int8_method=int8_method_for(config))


def _add_ct2(models: ModelSet, hf: Path, root: Path) -> None:
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        models.notes.append("ctranslate2 not installed: no CTranslate2 conversions (pip install ctranslate2)")
        return
    from ctranslate2.converters import TransformersConverter

    for quantization in CT2_QUANTIZATIONS:
        out = root / f"ct2-{quantization}"
        if not (out / "model.bin").is_file():
            print(f"[models] CTranslate2 {quantization} -> {out}", file=sys.stderr)
            try:
                TransformersConverter(str(hf), low_cpu_mem_usage=True).convert(str(out), quantization=quantization,
                                                                                force=True)
            except Exception as exc:  # the converter raises many types; the benchmark goes on without it
                models.notes.append(f"CTranslate2 {quantization} conversion failed: {exc}")
                continue
        models.ct2[quantization] = str(out)


def _add_gguf(models: ModelSet, hf: Path, root: Path, cache: Path) -> None:
    try:
        from importlib.metadata import version

        llama_version = version("llama-cpp-python")
    except Exception:
        models.notes.append("llama-cpp-python not installed: no GGUF conversions (see benchmarks/README.md)")
        return
    try:
        converter = find_gguf_converter(cache, llama_version)
    except (OSError, subprocess.CalledProcessError) as exc:
        models.notes.append(f"no GGUF converter: {exc}")
        return
    for kind in GGUF_TYPES:
        out = root / "gguf" / f"model-{kind}.gguf"
        if not out.is_file():
            try:
                _convert_gguf(converter, hf, out, kind)
            except subprocess.CalledProcessError as exc:
                models.notes.append(f"GGUF {kind} conversion failed (exit {exc.returncode}); see stderr above")
                continue
        models.gguf[kind] = str(out)
    for kind, ftype in GGUF_QUANTIZED.items():
        out = root / "gguf" / f"model-{kind}.gguf"
        if not out.is_file() and "f32" in models.gguf:
            try:
                _quantize_gguf(Path(models.gguf["f32"]), out, ftype)
            except subprocess.CalledProcessError as exc:
                models.notes.append(f"GGUF {kind} quantization failed (exit {exc.returncode}); see stderr above")
                continue
        if out.is_file():
            models.gguf[kind] = str(out)


def _quantize_gguf(source: Path, out: Path, ftype: int) -> None:
    """llama.cpp's quantizer (llama_model_quantize, as its llama-quantize tool calls it) in a child process: a
    crash in native code costs this one file, not the run. Written under a temporary name, then renamed."""
    print(f"[models] GGUF ftype {ftype} -> {out}", file=sys.stderr)
    partial = out.with_name(out.name + ".partial")
    code = ("import ctypes, sys, llama_cpp\n"
            "params = llama_cpp.llama_model_quantize_default_params()\n"
            "params.ftype = int(sys.argv[3])\n"
            "params.nthread = 0\n"
            "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), "
            "ctypes.byref(params)))\n")
    subprocess.run([sys.executable, "-c", code, str(source), str(partial), str(ftype)], check=True,
                   stdout=sys.stderr)
    partial.replace(out)


def find_gguf_converter(cache: Path, llama_version: str) -> Path:
    """convert_hf_to_gguf.py (with gguf-py beside it) from llama-cpp-python's sdist: its wheel lacks them.

    $TWEETGEN_BENCH_GGUF_CONVERTER points at one; else the sdist of the installed version is fetched once with pip.
    """
    if os.environ.get("TWEETGEN_BENCH_GGUF_CONVERTER"):
        return Path(os.environ["TWEETGEN_BENCH_GGUF_CONVERTER"])
    tools = cache / "tools" / f"llama.cpp-{llama_version}"
    converter = tools / "convert_hf_to_gguf.py"
    if converter.is_file():
        return converter
    with tempfile.TemporaryDirectory() as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", download,
                        f"llama-cpp-python=={llama_version}"], check=True, stdout=sys.stderr)
        sdist = next(Path(download).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            # The converter, the gguf-py package and the local packages it imports (e.g. conversion/).
            wanted = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name and _converter_part(
                m.name.split("/vendor/llama.cpp/", 1)[1])]
            for member in wanted:
                member.name = member.name.split("/vendor/llama.cpp/", 1)[1]
            tar.extractall(tools, members=wanted, filter="data")
    if not converter.is_file():
        raise OSError(f"the sdist of llama-cpp-python {llama_version} has no vendor/llama.cpp/convert_hf_to_gguf.py")
    return converter


def _converter_part(relative: str) -> bool:
    top = relative.split("/", 1)[0]
    return (relative.endswith(".py") and "/" not in relative) or top in ("gguf-py", "conversion")


def _convert_gguf(converter: Path, hf: Path, out: Path, kind: str) -> None:
    """Run the converter on a view of the HF folder whose config.json has n_ctx (the converter needs it for GPT-2)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"[models] GGUF {kind} -> {out}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as view:
        for item in hf.iterdir():
            if item.name != "config.json":
                os.symlink(item.resolve(), Path(view) / item.name)
        config = json.loads((hf / "config.json").read_text())
        config.setdefault("n_ctx", config.get("n_positions") or config.get("max_position_embeddings"))
        (Path(view) / "config.json").write_text(json.dumps(config))
        env = dict(os.environ, PYTHONPATH=str(converter.parent / "gguf-py"))
        subprocess.run([sys.executable, str(converter), view, "--outfile", str(out), "--outtype", kind],
                       check=True, env=env, stdout=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"default {DEFAULT_CACHE}")
    parser.add_argument("--shapes", nargs="*", default=["gpt2", "distilgpt2"], choices=list(SHAPES))
    parser.add_argument("--hf", type=Path, action="append", default=[],
                        help="a Hugging Face causal-LM folder (e.g. SmolLM2-135M); repeatable")
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help="an exported model folder (e.g. exported/tweety); repeatable")
    parser.add_argument("--fp16", action="store_true", help="also write model_fp16.onnx (for the GPU rows)")
    args = parser.parse_args(argv)
    for models in build_all(args.shapes, args.hf, args.model, args.cache, fp16=args.fp16):
        print(json.dumps(asdict(models)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

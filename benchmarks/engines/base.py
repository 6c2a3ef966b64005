"""The small interface every benchmarked engine implements, and the registry of engine names."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.models import ModelSet

SAMPLING = {"temperature": 1.0, "top_k": 50, "top_p": 0.95}  # what tweetgen-run samples with by default


class Unavailable(Exception):
    """The engine cannot run here (not installed, no GPU, no converted model): the row is skipped with this note."""


@dataclass(frozen=True)
class EngineSpec:
    """One row of the benchmark: an engine module and the variant it loads."""

    name: str  # e.g. "tweetgen-int8"
    module: str  # benchmarks.engines.<module>
    variant: str  # passed to the engine: a precision, a quantization, a file name
    family: str  # "tweetgen" or the peer's name, for the ratios
    precision: str  # "fp32", "int8", "fp16": which variants must give the same greedy ids
    device: str = "cpu"


class BenchEngine:
    """load() once, then greedy() and sample() any number of times. Token ids in, token ids out."""

    def __init__(self, models: ModelSet, variant: str, threads: int, device: str = "cpu") -> None:
        self.models, self.variant, self.threads, self.device = models, variant, threads, device

    def load(self) -> None:
        raise NotImplementedError

    def model_files(self) -> list[Path]:
        """The files this engine reads its weights from (their size is the 'model on disk' column)."""
        raise NotImplementedError

    def greedy(self, prompt_ids: list[int], n_new: int) -> list[int]:
        """Exactly n_new greedy tokens after the prompt (end-of-text does not stop it)."""
        raise NotImplementedError

    def sample_texts(self, prompt: str, n: int, n_new: int, seed: int) -> list[str]:
        """End to end, as `tweetgen-run -n N PROMPT`: text in, n sampled continuations of n_new tokens out."""
        raise NotImplementedError


SMALL_PAGES = "-4kpages"  # a tweetgen row and variant with this ending loads with huge_pages=False


def require(module: str, hint: str):
    """Import an optional dependency or raise Unavailable with how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{module} is not installed ({hint}): {exc}") from None


def tweetgen_variants(onnx_dir: str | Path) -> dict[str, str]:
    """Variant name -> ONNX file for every model*.onnx in the folder: the shipped fp32/int8/fp16 and any extra graph
    (e.g. model_optimized.onnx -> "optimized"), so that a new variant the runtime ships is benchmarked with no change."""
    known = {"model.onnx": "fp32", "model_quantized.onnx": "int8", "model_fp16.onnx": "fp16", "model_q4.onnx": "int4"}
    folder = Path(onnx_dir)
    found = {name: file for file, name in known.items() if (folder / file).is_file()}
    for path in sorted(folder.glob("model*.onnx")):
        if path.name not in known:
            found[path.stem.removeprefix("model_") or path.stem] = path.name
    return found


def precision_of(variant: str) -> str:
    """fp16 / int8 / fp32 from a variant or file name (anything quantized counts as int8)."""
    lowered = variant.lower()
    if "fp16" in lowered or "float16" in lowered:
        return "fp16"
    if any(key in lowered for key in ("int8", "quant", "q8", "int4", "q4")):
        return "int8"
    return "fp32"


def engine_specs(models: ModelSet, *, gpu: bool) -> list[EngineSpec]:
    """Every row for a model, installed or not: the rows that cannot run are skipped by the worker with a note."""
    specs = []
    for variant, file in tweetgen_variants(models.onnx).items():
        if precision_of(variant) != "fp16":
            specs.append(EngineSpec(f"tweetgen-{variant}", "tweetgen", file, "tweetgen", precision_of(variant)))
    if sys.platform.startswith("linux"):  # the shipped variants again without the default huge pages (runtime/hugepages.py)
        specs += [EngineSpec(f"{spec.name}{SMALL_PAGES}", "tweetgen", f"{spec.variant}{SMALL_PAGES}", "tweetgen",
                             spec.precision) for spec in list(specs) if spec.name in ("tweetgen-fp32", "tweetgen-int8")]
    specs += [
        EngineSpec("pytorch-fp32", "pytorch", "fp32", "pytorch", "fp32"),
        EngineSpec("optimum-fp32", "optimum", "model.onnx", "optimum", "fp32"),
        EngineSpec("optimum-int8", "optimum", "model_quantized.onnx", "optimum", "int8"),
        EngineSpec("ct2-float32", "ct2", "float32", "ct2", "fp32"),
        EngineSpec("ct2-int8", "ct2", "int8", "ct2", "int8"),
        EngineSpec("llamacpp-f32", "llamacpp", "f32", "llamacpp", "fp32"),
        EngineSpec("llamacpp-q8_0", "llamacpp", "q8_0", "llamacpp", "int8"),
        EngineSpec("llamacpp-q4_0", "llamacpp", "q4_0", "llamacpp", "int8"),
        EngineSpec("llamacpp-q4_K_M", "llamacpp", "q4_K_M", "llamacpp", "int8"),
    ]
    if gpu:
        specs += [
            EngineSpec("tweetgen-cuda-fp16", "tweetgen", "model_fp16.onnx", "tweetgen", "fp16", "cuda"),
            EngineSpec("tweetgen-cuda-fp32", "tweetgen", "model.onnx", "tweetgen", "fp32", "cuda"),
            EngineSpec("pytorch-cuda-fp16", "pytorch", "fp16", "pytorch", "fp16", "cuda"),
            EngineSpec("pytorch-cuda-fp32", "pytorch", "fp32", "pytorch", "fp32", "cuda"),
        ]
    return specs


def open_engine(spec: EngineSpec, models: ModelSet, threads: int) -> BenchEngine:
    module = importlib.import_module(f"benchmarks.engines.{spec.module}")
    return module.ENGINE(models, spec.variant, threads, spec.device)

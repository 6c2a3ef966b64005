"""The report of an export: what it wrote and what its checks measured."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ExportReport:
    """What the export made and measured."""

    out_dir: Path  # the model folder, in place
    files: dict[str, int]  # ONNX file -> bytes
    parity_prompts: int  # prompts whose greedy ids were compared with PyTorch's (all equal, or export fails)
    max_logit_diff: float  # max |logit| difference, ONNX fp32 vs PyTorch, on one prompt
    graph: str = "optimum"  # "fused": built from the weights with onnxruntime's fused operators (export.fuse); "optimum"
    int8_linear_layers: int | None = None  # quantized linear layers in model_quantized.onnx; None: no int8
    int8_method: str = "blockwise"  # the kind of int8 kept (tweetgen.trainer.export.quantize.INT8_METHODS)
    perplexity_fp32: float | None = None  # on eval_texts; None when none were given
    perplexity_int8: float | None = None
    int4_linear_layers: int | None = None  # quantized linear layers in model_q4.onnx; None: no int4
    perplexity_int4: float | None = None
    int4_kind: str | None = None  # tweetgen.trainer.export.quantize.INT4_KINDS
    eval_tokens: int | None = None  # tokens scored for the perplexities
    fp16_max_logit_diff: float | None = None  # fp16 vs fp32 on CPU; None when not run
    copy_index_windows: int | None = None  # 8-word windows of the training tweets in copies.bin; None: no index
    seconds: float = 0.0  # wall time of the whole export
    warnings: tuple[str, ...] = ()

    @property
    def int8_relative_diff(self) -> float | None:
        """int8 perplexity / fp32 perplexity - 1."""
        if self.perplexity_fp32 is None or self.perplexity_int8 is None:
            return None
        return self.perplexity_int8 / self.perplexity_fp32 - 1

    @property
    def int4_relative_diff(self) -> float | None:
        """int4 perplexity / fp32 perplexity - 1."""
        if self.perplexity_fp32 is None or self.perplexity_int4 is None:
            return None
        return self.perplexity_int4 / self.perplexity_fp32 - 1

    def to_json(self) -> dict[str, Any]:
        """The report as written into tweetgen.json ("export") and read by the model card."""
        int8 = None
        if self.int8_linear_layers is not None:
            int8 = {"linear_layers": self.int8_linear_layers, "method": self.int8_method,
                    "perplexity_fp32": self.perplexity_fp32,
                    "perplexity_int8": self.perplexity_int8, "relative_diff": self.int8_relative_diff,
                    "tokens": self.eval_tokens}
        return {"files": dict(self.files), "graph": self.graph, "greedy_parity": {"prompts": self.parity_prompts, "equal": True},
                "max_logit_diff": self.max_logit_diff, "int8": int8,
                "int4": None if self.int4_linear_layers is None else {
                    "linear_layers": self.int4_linear_layers, "kind": self.int4_kind,
                    "perplexity_fp32": self.perplexity_fp32,
                    "perplexity_int4": self.perplexity_int4, "relative_diff": self.int4_relative_diff,
                    "tokens": self.eval_tokens},
                "fp16": {"max_logit_diff_vs_fp32": self.fp16_max_logit_diff} if "model_fp16.onnx" in self.files
                else None, "copy_index_windows": self.copy_index_windows, "seconds": round(self.seconds, 1),
                "warnings": list(self.warnings)}

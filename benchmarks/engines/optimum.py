"""Optimum's ORTModelForCausalLM on the very ONNX files tweetgen ships: the 'just use Optimum' alternative.

It has transformers' `generate`, so everything but loading is PyTorchEngine's.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.engines.base import Unavailable, require
from benchmarks.engines.pytorch import PyTorchEngine


class OptimumEngine(PyTorchEngine):
    def load(self) -> None:
        torch = require("torch", "pip install torch==2.13.0")
        ort_module = require("optimum.onnxruntime", 'pip install "optimum-onnx>=0.1,<0.2" onnxruntime')
        transformers = require("transformers", 'pip install "transformers>=4.57,<4.58"')
        import onnxruntime as ort

        if not (Path(self.models.onnx) / self.variant).is_file():
            raise Unavailable(f"{self.models.onnx} has no {self.variant}")
        torch.set_num_threads(self.threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self.torch = torch
        self.model = ort_module.ORTModelForCausalLM.from_pretrained(
            self.models.onnx, file_name=self.variant, use_cache=True, use_io_binding=False,
            provider="CPUExecutionProvider", session_options=options, local_files_only=True)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.models.onnx)

    def model_files(self) -> list[Path]:
        path = Path(self.models.onnx) / self.variant
        return [path, *path.parent.glob(f"{path.name}*data")]


ENGINE = OptimumEngine

"""Optimum's ORTModelForCausalLM on Optimum's own ONNX export of the same weights, quantized the way tweetgen
quantizes: the 'just use Optimum' alternative. (For GPT-2 and Llama tweetgen ships a rebuilt graph Optimum cannot drive.)

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

        folder = self.folder()
        if folder is None:
            raise Unavailable(f"{self.models.onnx} holds tweetgen's fused graph, which Optimum cannot drive; "
                              "pass the PyTorch folder with --hf for an export with Optimum's graph")
        if not (folder / self.variant).is_file():
            raise Unavailable(f"{folder} has no {self.variant}")
        torch.set_num_threads(self.threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self.torch = torch
        self.model = ort_module.ORTModelForCausalLM.from_pretrained(
            folder, file_name=self.variant, use_cache=True, use_io_binding=False,
            provider="CPUExecutionProvider", session_options=options, local_files_only=True)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)

    def folder(self) -> Path | None:
        """The export with Optimum's graph: a separate one for GPT-2 and Llama; None when there is only tweetgen's fused one."""
        from benchmarks.models import export_graph

        if self.models.optimum_onnx:
            return Path(self.models.optimum_onnx)
        folder = Path(self.models.onnx)
        return None if export_graph(folder) == "fused" else folder

    def model_files(self) -> list[Path]:
        folder = self.folder()
        if folder is None:
            return []
        path = folder / self.variant
        return [path, *path.parent.glob(f"{path.name}*data")]


ENGINE = OptimumEngine

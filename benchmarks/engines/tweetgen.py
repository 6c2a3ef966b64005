"""tweetgen's own runtime: `Generator.load` for the variants it ships, the same Engine on any extra graph."""

from __future__ import annotations

from pathlib import Path

from benchmarks.engines.base import SAMPLING, SMALL_PAGES, BenchEngine, Unavailable

_PRECISIONS = {"model.onnx": "fp32", "model_quantized.onnx": "int8", "model_fp16.onnx": "fp16", "model_q4.onnx": "int4"}


class TweetgenEngine(BenchEngine):
    def load(self) -> None:
        import onnxruntime as ort

        from tweetgen import Engine, Generator
        from tweetgen.engine import read_graph_spec

        if self.device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Unavailable("no CUDA: onnxruntime-gpu and an NVIDIA GPU are needed")
        path = Path(self.models.onnx) / self.file
        if not path.is_file():
            raise Unavailable(f"{path} does not exist")
        precision = _PRECISIONS.get(self.file)
        if precision is not None:  # what a user gets: the runtime's own loading path
            loaded = Generator.load(self.models.onnx, device=self.device, precision=precision, threads=self.threads,
                                    huge_pages=False if self.variant.endswith(SMALL_PAGES) else None)  # as tweetgen-run
            folder, tokenizer, session = loaded.folder, loaded.tokenizer, loaded.engine.session
        else:  # an extra graph in the folder (e.g. model_optimized.onnx): the runtime's session options
            from tokenizers import Tokenizer

            from tweetgen import read_folder
            from tweetgen.generator import open_session

            folder = read_folder(self.models.onnx)
            tokenizer = Tokenizer.from_file(str(folder.path / "tokenizer.json"))
            session = open_session(path, self.device, self.threads)
        spec = read_graph_spec(session, folder.config)
        # No end-of-text: every row writes exactly the number of new tokens asked for.
        engine = Engine(session, spec, context_length=folder.context_length, eos_token_ids=(),
                        device=self.device)
        self.generator = Generator(folder, engine, tokenizer, path)

    @property
    def file(self) -> str:
        """The ONNX file of the variant (a variant ending in -4kpages loads that file without huge pages)."""
        return self.variant.removesuffix(SMALL_PAGES)

    def model_files(self) -> list[Path]:
        path = Path(self.models.onnx) / self.file
        return [path, *path.parent.glob(f"{path.name}*data")]

    def greedy(self, prompt_ids: list[int], n_new: int) -> list[int]:
        import numpy as np

        from tweetgen import SamplingParams

        steps = self.generator.engine.generate(prompt_ids, n=1, max_new_tokens=n_new,
                                               params=SamplingParams(temperature=0), rng=np.random.default_rng(0))
        return [int(step.tokens[0]) for step in steps]

    def sample_texts(self, prompt: str, n: int, n_new: int, seed: int) -> list[str]:
        return self.generator.generate(prompt, n, max_new_tokens=n_new, seed=seed, max_chars=None,
                                       repetition_penalty=1.0, **SAMPLING)


ENGINE = TweetgenEngine

"""CTranslate2's Generator on its own conversion of the PyTorch folder (float32 and int8), tokenized with `tokenizers`."""

from __future__ import annotations

from pathlib import Path

from benchmarks.engines.base import SAMPLING, BenchEngine, Unavailable, require


class CT2Engine(BenchEngine):
    def load(self) -> None:
        ctranslate2 = require("ctranslate2", "pip install ctranslate2")
        from tokenizers import Tokenizer

        path = self.models.ct2.get(self.variant)
        if path is None:
            raise Unavailable(f"no CTranslate2 {self.variant} conversion (run benchmarks.models with ctranslate2 "
                              "installed)")
        self.generator = ctranslate2.Generator(path, device="cpu", compute_type=self.variant,
                                               intra_threads=self.threads, inter_threads=1)
        self.tokenizer = Tokenizer.from_file(str(Path(self.models.onnx) / "tokenizer.json"))

    def model_files(self) -> list[Path]:
        return sorted(Path(self.models.ct2[self.variant]).glob("*.bin"))

    def _generate(self, rows: list[list[str]], n_new: int, **options) -> list[list[int]]:
        results = self.generator.generate_batch(rows, max_length=n_new, min_length=n_new,
                                                include_prompt_in_result=False, **options)
        return [result.sequences_ids[0] for result in results]

    def greedy(self, prompt_ids: list[int], n_new: int) -> list[int]:
        tokens = [self.tokenizer.id_to_token(i) for i in prompt_ids]
        return self._generate([tokens], n_new, sampling_topk=1)[0]

    def sample_texts(self, prompt: str, n: int, n_new: int, seed: int) -> list[str]:
        import ctranslate2

        ctranslate2.set_random_seed(seed)
        tokens = self.tokenizer.encode(prompt).tokens
        rows = self._generate([tokens] * n, n_new, sampling_topk=SAMPLING["top_k"], sampling_topp=SAMPLING["top_p"],
                              sampling_temperature=SAMPLING["temperature"])
        return self.tokenizer.decode_batch(rows)


ENGINE = CT2Engine

"""llama.cpp through llama-cpp-python on GGUF conversions (f32, q8_0, q4_0, q4_K_M). It has no batching: n rows run one
by one."""

from __future__ import annotations

from pathlib import Path

from benchmarks.engines.base import SAMPLING, BenchEngine, Unavailable, require


class LlamaCppEngine(BenchEngine):
    def load(self) -> None:
        llama_cpp = require("llama_cpp", "pip install llama-cpp-python: builds from source, see benchmarks/README.md")
        path = self.models.gguf.get(self.variant)
        if path is None:
            raise Unavailable(f"no GGUF {self.variant} conversion (run benchmarks.models with llama-cpp-python "
                              "installed)")
        # llama.cpp keeps its KV cache in f16 by default: the f32 row keeps it in f32, so that it is a float row
        # whose greedy ids can be held to fp32's; q8_0 keeps the default a user gets.
        cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if self.variant == "f32" else {}
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=self.threads,
                                   n_threads_batch=self.threads, verbose=False, **cache)
        # Text goes through llama.cpp's own tokenizer when the GGUF holds a byte-level BPE vocabulary ("gpt2"),
        # the kind of every model benchmarked here. A folder whose tokenizer.json transformers wrote for a model
        # loaded from a GGUF file (byte fallback around byte-level BPE) converts as a sentencepiece vocabulary
        # ("llama"), and llama.cpp aborts tokenizing text with it: such a row tokenizes with `tokenizers`, as the
        # CTranslate2 rows do (the ids are the same; its peak RSS then holds that tokenizer too).
        self.tokenizer = None
        if self.llm.metadata.get("tokenizer.ggml.model", "gpt2") != "gpt2":
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(Path(self.models.onnx) / "tokenizer.json"))

    def model_files(self) -> list[Path]:
        return [Path(self.models.gguf[self.variant])]

    def _generate(self, prompt_ids: list[int], n_new: int, **sampling) -> list[int]:
        self.llm.reset()  # no reuse of the previous run's cache: every run prefills its prompt
        out = []
        for token in self.llm.generate(prompt_ids, reset=True, **sampling):
            out.append(int(token))  # generate() never stops by itself: end-of-text does not end the row
            if len(out) == n_new:
                break
        return out

    def greedy(self, prompt_ids: list[int], n_new: int) -> list[int]:
        return self._generate(prompt_ids, n_new, top_k=1, temp=0.0)

    def sample_texts(self, prompt: str, n: int, n_new: int, seed: int) -> list[str]:
        if self.tokenizer is None:
            ids = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        else:
            ids = self.tokenizer.encode(prompt).ids
        texts = []
        for row in range(n):
            self.llm.set_seed(seed + row)
            out = self._generate(ids, n_new, top_k=SAMPLING["top_k"], top_p=SAMPLING["top_p"],
                                 temp=SAMPLING["temperature"])
            texts.append(self.llm.detokenize(out).decode("utf-8", errors="replace") if self.tokenizer is None
                         else self.tokenizer.decode(out))
        return texts


ENGINE = LlamaCppEngine

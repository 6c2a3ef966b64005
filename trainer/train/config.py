"""Every training knob in one place. The CLI is built from these fields; the resolved config is saved with the model."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tweetgen.errors import TweetgenError

REPORT_TARGETS = ("wandb", "tensorboard")  # what report_to may name besides "none"


def _knob(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """How to fine-tune. Units are in each help line."""

    base_model: str = _knob("gpt2", "base causal LM: a hub name, a local Hugging Face folder, or a .gguf file")
    epochs: float = _knob(3.0, "passes over the training tweets (fractions allowed)")
    learning_rate: float = _knob(5e-5, "peak AdamW learning rate, after warmup")
    warmup_ratio: float = _knob(0.06, "share of the steps spent warming the learning rate up from 0")
    weight_decay: float = _knob(0.0, "AdamW weight decay")
    batch_size: int = _knob(8, "blocks per step on each device")
    gradient_accumulation: int = _knob(1, "steps whose gradients add up before one optimizer update")
    block_size: int = _knob(128, "tokens per training block (tweets are packed, <|endoftext|> between them)")
    validation_fraction: float = _knob(0.1, "share of each user's tweets held out for validation")
    seed: int = _knob(42, "seed for the split, the shuffling and the weights' dropout")
    eval_steps: int = _knob(0, "evaluate and checkpoint every N optimizer steps (0: once per epoch)")
    early_stopping: int = _knob(2, "stop after N evaluations without a better validation loss (0: never)")
    max_steps: int = _knob(-1, "stop after N optimizer steps whatever the epochs (-1: no limit)")
    precision: str = _knob("auto", "fp32, bf16 or fp16 training; auto: bf16/fp16 on a GPU that has it, fp32 on CPU",
                           choices=("auto", "fp32", "bf16", "fp16"))
    checkpoints_kept: int = _knob(2, "checkpoints kept on disk for --resume")
    report_to: str = _knob("none", "experiment tracking: none, wandb or tensorboard (comma-separated); wandb also "
                                   "logs the raw tweets, the training set and the model as artifacts "
                                   "(pip install wandb)")
    tag_users: bool | None = _knob(None, "start each tweet with its user's tag so one voice can be asked for "
                                         "(default: when there are several users)")
    balance: str = _knob("upsample", "even out the users' shares of the training tweets: upsample, cap or none",
                         choices=("upsample", "cap", "none"))
    min_tweets: int = _knob(20, "refuse to train on fewer kept tweets than this")
    sample_every: int = _knob(0, "every N optimizer steps, write a few tweets sampled from the current weights to the "
                                 "log and the tracker (0: never)")
    lora: bool = _knob(False, "train LoRA adapters (peft) instead of every weight, merged into the base before the "
                              "model is saved (a pretrained base only)")
    lora_rank: int = _knob(8, "LoRA: rank of the adapters")
    lora_alpha: float = _knob(16.0, "LoRA: scaling numerator (the update is scaled by alpha / rank)")
    lora_dropout: float = _knob(0.0, "LoRA: dropout on the adapters' input (0.05 cost SmolLM2-135M 30%% more time "
                                     "per step and 0.9 GB more memory on a CPU)")
    lora_targets: str = _knob("", "LoRA: comma-separated module names to adapt (default: every attention and MLP "
                                  "projection of GPT-2 and llama-family models)")

    def __post_init__(self) -> None:
        """Every setting checked before any work, with what is allowed."""
        whole = {"batch_size": 1, "gradient_accumulation": 1, "block_size": 8, "checkpoints_kept": 1,
                 "min_tweets": 1, "eval_steps": 0, "early_stopping": 0, "seed": 0, "sample_every": 0,
                 "lora_rank": 1}
        for name, least in whole.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise TweetgenError(f"{name.replace('_', '-')} must be a whole number >= {least}, not {value!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < -1 \
                or self.max_steps == 0:
            raise TweetgenError(f"max-steps must be -1 (no limit) or a whole number >= 1, not {self.max_steps!r}")
        ranges = {"learning_rate": (0.0, 1.0, False), "epochs": (0.0, 10_000.0, False),
                  "warmup_ratio": (0.0, 1.0, True), "weight_decay": (0.0, 10.0, True),
                  "validation_fraction": (0.0, 1.0, True), "lora_alpha": (0.0, 100_000.0, False),
                  "lora_dropout": (0.0, 1.0, True)}
        for name, (low, high, low_allowed) in ranges.items():
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                and (value >= low if low_allowed else value > low) and value < high
            if not ok:
                bracket = "[" if low_allowed else "("
                raise TweetgenError(f"{name.replace('_', '-')} must be a number in {bracket}{low:g}, {high:g}), "
                                    f"not {value!r}")
        if self.base_model.startswith("scratch:"):
            from tweetgen.trainer.train.scratch import parse_spec

            parse_spec(self.base_model)
            if self.lora:
                raise TweetgenError("--lora adapts pretrained weights, and a scratch: model has none: train it "
                                    "without --lora, or give a pretrained --base-model")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n", encoding="utf-8")


def report_targets(value: str) -> list[str]:
    """The trackers a report_to value names ("none" or empty: none), each checked against REPORT_TARGETS."""
    names = [v.strip() for v in value.split(",") if v.strip() and v.strip() != "none"]
    unknown = sorted(set(names) - set(REPORT_TARGETS))
    if unknown:
        raise TweetgenError(f"report_to {value!r}: {', '.join(unknown)} unknown; allowed are none, "
                            f"{', '.join(REPORT_TARGETS)} (comma-separated)")
    return names


def add_config_args(parser: argparse.ArgumentParser, cls: type = TrainConfig) -> None:
    """One --option per field of the dataclass, with its help line and type."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: {f.default})"
        if str(f.type).startswith("bool"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text,
                                choices=f.metadata.get("choices"))


def config_from_args(args: argparse.Namespace, cls: type = TrainConfig, **overrides: Any) -> Any:
    """The dataclass with every option the user gave; the rest keep their defaults."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return cls(**{**given, **overrides})

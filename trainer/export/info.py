"""What an export says about itself and where it comes from: the source folder checked as a causal LM, the
ExportInfo recorded in tweetgen.json, generation_config.json and the card, and the tokenizer's files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tweetgen.errors import TweetgenError
from tweetgen.folder import FORMAT_VERSION  # the folder format the runtime reads

CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")  # architectures names export accepts
DEFAULT_SAMPLING = {"do_sample": True, "temperature": 1.0, "top_k": 50, "top_p": 0.95, "max_new_tokens": 64,
                    "repetition_penalty": 1.0}


class ExportError(TweetgenError):
    """The export could not be made or did not pass its checks; the previous model folder is unchanged."""


@dataclass(frozen=True)
class ExportInfo:
    """What the exported folder says about itself (tweetgen.json, generation_config.json, README.md)."""

    name: str  # the model's name: exported/<name>/, the card's title
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # user -> {"prefix": str, "stats": {counts}}
    prompt_start: str = ""  # text the runtime puts before every prompt (the training separator, "<|endoftext|>")
    base_model: str = ""  # the model fine-tuned: a Hugging Face id or a path
    training: dict[str, Any] = field(default_factory=dict)  # hyperparameters, name -> value; empty if unknown
    evaluation: dict[str, Any] = field(default_factory=dict)  # e.g. perplexity_before, perplexity_after
    sampling: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SAMPLING))  # generation_config.json
    license: str = "mit"  # Hugging Face license id for the card; should follow the base model's


def check_causal_lm(model_dir: Path):
    """Read model_dir's config; raise ExportError unless it is a Hugging Face causal LM folder with weights."""
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise ExportError(f"{model_dir} is not a Hugging Face model folder: it has no config.json "
                          "(write one with model.save_pretrained(folder))")
    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"cannot read {model_dir / 'config.json'}: {exc}") from None
    found = list(config.architectures or [])
    if not any(arch.endswith(CAUSAL_LM_SUFFIXES) for arch in found):
        what = ", ".join(found) if found else f"no architectures (model_type {config.model_type!r})"
        raise ExportError(f"{model_dir} holds {what}, not a causal language model; export needs one whose "
                          f"architectures name ends in {' or '.join(CAUSAL_LM_SUFFIXES)} "
                          "(e.g. GPT2LMHeadModel, LlamaForCausalLM)")
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    if not any((model_dir / name).is_file() for name in weights):
        raise ExportError(f"{model_dir} has no weights: expected one of {', '.join(weights)}")
    return config


def export_folder_info(model_dir: str | Path, name: str) -> ExportInfo:
    """An ExportInfo for a folder trained elsewhere: no users or stats; prompt start = the tokenizer's eos token."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    check_causal_lm(model_dir)
    try:
        eos = AutoTokenizer.from_pretrained(model_dir, local_files_only=True).eos_token or ""
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read the tokenizer of {model_dir}: {exc}") from None
    from tweetgen.trainer.train.base_model import base_license

    return ExportInfo(name=name, prompt_start=eos, base_model=str(model_dir), license=base_license(str(model_dir)))


def write_tokenizer_files(model_dir: Path, config, tmp: Path) -> None:
    """The tokenizer as transformers saves it (tokenizer.json for tweetgen; tokenizer_config.json and the rest for
    AutoTokenizer), saying what the graph takes: input_ids and attention_mask (no token_type_ids), and the
    context length."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read the tokenizer of {model_dir}: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"the tokenizer of {model_dir} has no fast (tokenizer.json) form, which tweetgen's runtime "
                          "reads; save the model with a fast tokenizer")
    # saved from init_kwargs: the attribute alone does not reach tokenizer_config.json
    settings = {"model_input_names": ["input_ids", "attention_mask"]}
    context = next((getattr(config, key) for key in ("n_positions", "max_position_embeddings")
                    if isinstance(getattr(config, key, None), int)), None)
    if context:
        settings["model_max_length"] = context
    for key, value in settings.items():
        setattr(tokenizer, key, value)
        tokenizer.init_kwargs[key] = value
    tokenizer.save_pretrained(tmp)


def write_folder_info(model_dir: Path, config, tmp: Path, info: ExportInfo) -> None:
    """generation_config.json with the sampling defaults, and tweetgen.json."""
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(model_dir, local_files_only=True)
    except OSError:  # no generation_config.json: derive it from config.json
        generation = GenerationConfig.from_model_config(config)
    generation.update(**info.sampling)
    generation.save_pretrained(tmp)
    tweetgen = {"format": FORMAT_VERSION, "name": info.name, "users": info.users, "prompt_start": info.prompt_start,
                "base_model": info.base_model, "training": info.training, "evaluation": info.evaluation,
                "export": {}, "versions": _versions()}
    (tmp / "tweetgen.json").write_text(json.dumps(tweetgen, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for package in ("tweetgen", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions

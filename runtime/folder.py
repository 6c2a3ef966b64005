"""Reading an exported model folder: which files are there, what they say, and which ONNX variant to run.

The folder format is versioned by `tweetgen.json` ("format": 1). A plain Optimum export (model.onnx, tokenizer.json,
config.json, no tweetgen.json) is read too: it has no users and no prompt start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelFolderError

FORMAT_VERSION = 1
VARIANTS = {"fp32": "model.onnx", "int8": "model_quantized.onnx", "fp16": "model_fp16.onnx", "int4": "model_q4.onnx"}
PRECISIONS = ("auto", *VARIANTS)
DEVICES = ("auto", "cpu", "cuda")
# Used when generation_config.json does not say: a tweet bot samples.
SAMPLING_FALLBACK = {"max_new_tokens": 64, "temperature": 1.0, "top_k": 50, "top_p": 0.95, "repetition_penalty": 1.0,
                     "min_p": 0.0}
# Hugging Face's own defaults for fields a saved generation_config.json leaves out because they equal them.
_HF_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0, "min_p": 0.0}


@dataclass(frozen=True)
class SamplingDefaults:
    """Default sampling settings of a model folder; temperature 0 means greedy."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    min_p: float = 0.0


@dataclass(frozen=True)
class ModelFolder:
    """What a model folder holds, read and checked once."""

    path: Path
    config: dict[str, Any]  # config.json
    sampling: SamplingDefaults  # from generation_config.json
    eos_token_ids: tuple[int, ...]  # any of these ends a sample
    context_length: int  # positions the model was trained for
    users: dict[str, str] = field(default_factory=dict)  # user name -> prompt prefix
    prompt_start: str = ""  # text placed before every prompt (the separator the training data put between tweets)
    info: dict[str, Any] = field(default_factory=dict)  # the whole tweetgen.json

    def variant_path(self, precision: str, device: str) -> Path:
        """The ONNX file to run: `precision` "auto" takes int8 on CPU (the 4-bit graph first when the export kept
        its fast kind: it decodes faster at a perplexity within 1% of fp32's; benchmarks/README.md) and fp16 on CUDA
        when present, else fp32, else whichever variant the folder has."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if precision == "auto":  # the first of these the folder has (read_folder made sure it has one)
            fast4 = ((self.info.get("export") or {}).get("int4") or {}).get("kind") == "fast"
            order = ("fp16", "fp32", "int8", "int4") if device == "cuda" else \
                ("int4", "int8", "fp32", "fp16") if fast4 else ("int8", "int4", "fp32", "fp16")
            return next((self.path / VARIANTS[p] for p in order if (self.path / VARIANTS[p]).is_file()),
                        self.path / VARIANTS["fp32"])
        path = self.path / VARIANTS[precision]
        if not path.is_file():
            present = [name for name, file in VARIANTS.items() if (self.path / file).is_file()]
            raise ModelFolderError(
                f"{self.path} has no {VARIANTS[precision]} for precision {precision!r}; "
                f"available: {', '.join(present) or 'none'}")
        return path


def read_folder(path: str | Path) -> ModelFolder:
    """Read and check a model folder. Raises ModelFolderError listing everything missing or unreadable at once."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {str(folder)!r} does not exist or is not a folder")
    missing = [name for name in ("tokenizer.json", "config.json") if not (folder / name).is_file()]
    if not any((folder / file).is_file() for file in VARIANTS.values()):
        missing.insert(0, "model.onnx")
    if missing:
        raise ModelFolderError(f"model folder {str(folder)!r} is incomplete: missing {', '.join(missing)}")
    config = _read_json(folder / "config.json")
    generation = _read_json(folder / "generation_config.json") if (folder / "generation_config.json").is_file() else {}
    info = _read_json(folder / "tweetgen.json") if (folder / "tweetgen.json").is_file() else {}
    if info and info.get("format") != FORMAT_VERSION:
        raise ModelFolderError(
            f"{folder / 'tweetgen.json'} has format {info.get('format')!r}; this tweetgen reads format {FORMAT_VERSION}")
    # A user with a "prefix" is a voice the model can be asked for; one without (an untagged model) has stats only.
    users = {str(name): str(entry["prefix"]) for name, entry in (info.get("users") or {}).items()
             if isinstance(entry, dict) and "prefix" in entry}
    try:
        sampling = _sampling_defaults(generation)
    except (TypeError, ValueError) as exc:
        raise ModelFolderError(f"{folder / 'generation_config.json'} has a sampling setting that is not a number: "
                               f"{exc}; fix the file or remove it") from None
    return ModelFolder(
        path=folder, config=config, sampling=sampling,
        eos_token_ids=_eos_ids(generation, config), context_length=_context_length(config, folder),
        users=users, prompt_start=str(info.get("prompt_start", "")), info=info)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def _sampling_defaults(generation: dict[str, Any]) -> SamplingDefaults:
    if "do_sample" in generation:
        values = dict(_HF_DEFAULTS, max_new_tokens=SAMPLING_FALLBACK["max_new_tokens"])
        if not generation["do_sample"]:
            values["temperature"] = 0.0
    else:
        values = dict(SAMPLING_FALLBACK)
    for key in SAMPLING_FALLBACK:
        if generation.get(key) is not None and not (key == "temperature" and values["temperature"] == 0.0):
            values[key] = generation[key]
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} is {value!r}")
    return SamplingDefaults(
        max_new_tokens=int(values["max_new_tokens"]), temperature=float(values["temperature"]),
        top_k=int(values["top_k"]), top_p=float(values["top_p"]),
        repetition_penalty=float(values["repetition_penalty"]), min_p=float(values["min_p"]))


def _eos_ids(generation: dict[str, Any], config: dict[str, Any]) -> tuple[int, ...]:
    for source in (generation, config):
        value = source.get("eos_token_id")
        if value is not None:
            return tuple(value) if isinstance(value, list) else (int(value),)
    return ()


def _context_length(config: dict[str, Any], folder: Path) -> int:
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        if isinstance(config.get(key), int):
            return config[key]
    raise ModelFolderError(
        f"{folder / 'config.json'} does not give the context length (n_positions or max_position_embeddings)")

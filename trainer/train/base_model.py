"""Loading the base model to fine-tune: a hub name, a local Hugging Face folder, or a GGUF file."""

from __future__ import annotations

import logging
from pathlib import Path

from tweetgen.errors import TweetgenError

log = logging.getLogger(__name__)
SEPARATOR = "<|endoftext|>"  # put between tweets; GPT-2 and most byte-level BPE vocabularies have it
GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "gpt2", "phi3", "gemma", "gemma2", "stablelm", "falcon")


class BaseModelError(TweetgenError):
    """The base model cannot be loaded or is not a causal language model."""


def load_base(name: str, texts: list[str] | None = None):
    """Load (model, tokenizer) for fine-tuning. Raises BaseModelError with what was found and what is allowed.

    `scratch:KEY=VALUE,...` makes a new GPT-2 instead, its tokenizer trained on `texts` (see tweetgen.trainer.train.scratch).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if name.startswith("scratch:"):
        from tweetgen.trainer.train.scratch import new_gpt2

        model, tokenizer = new_gpt2(name, texts or [])
        return _with_separator(model, tokenizer)
    source, kwargs = _locate(name)
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise BaseModelError(f"cannot load base model {name!r}: {_first_line(exc)}. Give a Hugging Face hub name "
                             "(e.g. gpt2), a local folder with config.json, or a .gguf file") from None
    _check_causal(config, name)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise BaseModelError(f"cannot load base model {name!r}: {_first_line(exc)}") from None
    _prepare_tokenizer(tokenizer)
    return _with_separator(model, tokenizer)


def _with_separator(model, tokenizer):
    separator_id = tokenizer.convert_tokens_to_ids(separator_token(tokenizer))
    model.config.eos_token_id = separator_id
    model.generation_config.eos_token_id = separator_id
    model.generation_config.bos_token_id = model.config.bos_token_id
    return model, tokenizer


def separator_token(tokenizer) -> str:
    """The token between tweets: `<|endoftext|>` when the vocabulary has it, else the tokenizer's eos token."""
    if SEPARATOR in tokenizer.get_vocab():
        return SEPARATOR
    if tokenizer.eos_token is None:
        raise BaseModelError("the base model's tokenizer has neither <|endoftext|> nor an eos token to end tweets with")
    return tokenizer.eos_token


def _locate(name: str) -> tuple[str, dict]:
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BaseModelError(f"GGUF file {name!r} does not exist")
        _check_gguf_architecture(path)
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir() and not (path / "config.json").is_file():
        raise BaseModelError(f"{name!r} is a folder without config.json: not a Hugging Face model folder")
    return name, {}


def _check_gguf_architecture(path: Path) -> None:
    try:
        from gguf import GGUFReader
    except ImportError:
        raise BaseModelError("reading a .gguf base model needs the gguf package: pip install gguf") from None
    try:
        field = GGUFReader(path).fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except Exception as exc:  # gguf raises plain ValueError/KeyError/struct errors for damaged files
        raise BaseModelError(f"{path} is not a readable GGUF file: {_first_line(exc)}") from None
    if arch not in GGUF_ARCHITECTURES:
        raise BaseModelError(f"{path} is a GGUF of architecture {arch!r}, which transformers cannot load; "
                             f"supported: {', '.join(GGUF_ARCHITECTURES)}")


def _check_causal(config, name: str) -> None:
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    architectures = getattr(config, "architectures", None) or []
    causal = type(config) in MODEL_FOR_CAUSAL_LM_MAPPING
    heads_ok = not architectures or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    if not (causal and heads_ok):
        found = ", ".join(architectures) or config.model_type
        raise BaseModelError(f"base model {name!r} is not a causal language model ({found}); tweetgen fine-tunes "
                             "models like GPT2LMHeadModel or LlamaForCausalLM")


def _prepare_tokenizer(tokenizer) -> None:
    """Tweets are packed with a separator and no BOS: stop the tokenizer from adding special tokens itself."""
    if tokenizer("a").input_ids == tokenizer("a", add_special_tokens=False).input_ids:
        return
    for attribute in ("add_bos_token", "add_eos_token"):
        if hasattr(tokenizer, attribute):
            setattr(tokenizer, attribute, False)
    if tokenizer("a").input_ids != tokenizer("a", add_special_tokens=False).input_ids:
        log.warning("the tokenizer still adds special tokens; the runtime will see them before every prompt")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def base_license(name: str) -> str:
    """The base model's license id, for the model card: from GGUF metadata or the folder's card; else "other"."""
    if name.startswith("scratch:"):
        return "mit"  # new weights, made by tweetgen itself
    path = Path(name).expanduser()
    try:
        if path.suffix == ".gguf":
            from gguf import GGUFReader

            field = GGUFReader(path).fields.get("general.license")
            return bytes(field.parts[field.data[0]]).decode() if field else "other"
        card = path / "README.md"
        if card.is_file():
            for line in card.read_text(encoding="utf-8", errors="replace").splitlines()[:30]:
                if line.startswith("license:"):
                    return line.split(":", 1)[1].strip() or "other"
    except Exception:  # a missing or unreadable license is not worth failing an export for
        log.debug("no license found for %s", name, exc_info=True)
    return {"gpt2": "mit", "distilgpt2": "apache-2.0"}.get(name, "other")

"""LoRA (`--lora`): low-rank adapters trained instead of every weight, merged into the base before saving.

peft wraps the base model; the Trainer then trains and checkpoints the adapters only (so `--resume` reloads them
onto the same base), and `merged` folds them back into the base weights, so that the saved model folder is the same
kind as any other (no adapter files) and exports as one.
"""

from __future__ import annotations

import logging

from tweetgen.errors import TweetgenError

log = logging.getLogger(__name__)
# The linear layers adapted by default: every attention and MLP projection. GPT-2's are Conv1D (peft handles them).
DEFAULT_TARGETS = {
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}


def target_modules(model, targets: str) -> list[str]:
    """The module names to adapt: `targets` (comma-separated) when given, else the architecture's default."""
    names = [t.strip() for t in targets.split(",") if t.strip()]
    model_type = model.config.model_type
    if not names:
        if model_type not in DEFAULT_TARGETS:
            raise TweetgenError(f"--lora has no default target modules for a {model_type!r} model (defaults exist for "
                                f"{', '.join(DEFAULT_TARGETS)}): name them with --lora-targets, e.g. q_proj,v_proj")
        names = list(DEFAULT_TARGETS[model_type])
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [n for n in names if n not in present]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if type(module).__name__ in ("Linear", "Conv1D")})
        raise TweetgenError(f"--lora-targets: this {model_type} model has no module named {', '.join(missing)}; its "
                            f"linear layers are {', '.join(linear)}")
    return names


def with_lora(model, rank: int, alpha: float, dropout: float, targets: str):
    """The model wrapped with fresh LoRA adapters (a peft PeftModel); only the adapters train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise TweetgenError("--lora needs the peft package: pip install 'tweetgen[train]' (or pip install peft)"
                            ) from None
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules(model, targets),
                        task_type="CAUSAL_LM", fan_in_fan_out=model.config.model_type == "gpt2")
    wrapped = get_peft_model(model, config)
    trainable, total = wrapped.get_nb_trainable_parameters()
    log.info("LoRA rank %d on %s: %s of %s parameters train (%.2f%%)", rank, ", ".join(config.target_modules),
             f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return wrapped


def is_lora(model) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def merged(model):
    """The base model with the adapters folded into its weights (the model itself when it has no adapters)."""
    return model.merge_and_unload() if is_lora(model) else model

"""The model card (README.md) of an exported folder, in Hugging Face's format, rendered from plain dicts.

It holds counts and settings only, never the text of a tweet: the card is meant to be published with the model.
"""

from __future__ import annotations

import json
from typing import Any

STAT_COLUMNS = ("downloaded", "retweets", "short", "duplicates", "kept")  # the per-user table, in this order
OPTIONAL_STAT_COLUMNS = ("replies",)  # shown only when some user has them
VARIANT_ROLES = {"model.onnx": "fp32, any device", "model_quantized.onnx": "int8, CPU (default there)",
                 "model_fp16.onnx": "fp16, CUDA (default there)"}


def render_card(*, name: str, users: dict[str, dict[str, Any]], base_model: str, training: dict[str, Any],
                evaluation: dict[str, Any], export: dict[str, Any], prompt_start: str = "",
                license: str = "mit") -> str:
    """The README.md text of an exported model folder.

    Args:
        name: the model's name (the folder's name under exported/).
        users: user name -> {"prefix": str, "stats": {downloaded, retweets, short, duplicates, kept}}.
        base_model: the model fine-tuned (a Hugging Face id or a path).
        training: hyperparameters, name -> value (empty for a model trained elsewhere).
        evaluation: e.g. {"perplexity_before": ..., "perplexity_after": ...}.
        export: the export report as a dict (see trainer.export.ExportReport).
        prompt_start: text the runtime puts before every prompt (shown in the Optimum example).
        license: a Hugging Face license id; it should follow the base model's.
    """
    sections = [
        _front_matter(base_model, license),
        _intro(name, users, base_model),
        _data_section(users),
        _training_section(base_model, training, evaluation),
        _export_section(export),
        _usage_section(name, users, prompt_start, fused=export.get("graph") == "fused"),
        _limitations_section(users),
    ]
    return "\n\n".join(section.strip("\n") for section in sections) + "\n"


def _front_matter(base_model: str, license: str) -> str:
    return "\n".join(["---", "language: en", f"license: {license}", "tags: [tweetgen, text-generation, onnx]",
                      f"base_model: {base_model}", "pipeline_tag: text-generation", "---"])


def _handles(users: dict[str, Any]) -> str:
    return ", ".join(f"@{user}" for user in users) or "one or more people"


def _intro(name: str, users: dict[str, Any], base_model: str) -> str:
    if not users:
        return (f"# {name}\n\nA text generator exported to ONNX by tweetgen from `{base_model}`, a causal language "
                "model trained outside tweetgen.\n\n**The text it generates is not written by any real person.** It "
                "is made up by a language model and must not be presented as someone's words.")
    return (f"# {name}\n\n"
            f"A text generator that writes tweets in the style of {_handles(users)}: {_origin(base_model)} on "
            "their tweets with tweetgen and exported to ONNX.\n\n"
            f"**The text it generates is not written by {_handles(users)}.** It is made up by a language model "
            "and must not be presented as their words.")


def _origin(base_model: str) -> str:
    if base_model.startswith("scratch:"):
        return "a new GPT-2 (random weights, a byte-level BPE tokenizer trained on the same tweets) trained from scratch"
    return f"`{base_model}` fine-tuned"


def _data_section(users: dict[str, dict[str, Any]]) -> str:
    if not users:
        return "## Training data\n\nThis model was trained outside tweetgen: no per-user data counts are known."
    stats = {user: entry.get("stats") or {} for user, entry in users.items()}
    columns = STAT_COLUMNS + tuple(c for c in OPTIONAL_STAT_COLUMNS if any(c in s for s in stats.values()))
    lines = ["## Training data", "",
             "Tweets per user: downloaded, dropped (retweets, short tweets, exact duplicates) and kept for training.",
             "", "| user | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for user, counts in stats.items():
        lines.append(f"| @{_cell(user)} | " + " | ".join(_count(counts.get(c)) for c in columns) + " |")
    if len(stats) > 1:
        totals = [sum(int(s.get(c) or 0) for s in stats.values()) for c in columns]
        lines.append("| **total** | " + " | ".join(str(t) for t in totals) + " |")
    lines += ["", "The card and the model folder hold counts only, never the text of a tweet."]
    return "\n".join(lines)


def _training_section(base_model: str, training: dict[str, Any], evaluation: dict[str, Any]) -> str:
    lines = ["## Training procedure", "", f"Base model: `{base_model}`: {_origin(base_model)}, as a causal "
             "language model on the kept tweets, each followed by `<|endoftext|>`." if training
             else f"Model: `{base_model}`."]
    if training:
        lines += ["", "| hyperparameter | value |", "|---|---|"]
        lines += [f"| {_cell(key)} | {_cell(_value(value))} |" for key, value in training.items()]
    else:
        lines += ["", "Hyperparameters: not recorded (the model was trained outside tweetgen)."]
    if evaluation:
        lines += ["", "Evaluation on held-out tweets:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {_cell(key)} | {_cell(_value(value))} |" for key, value in evaluation.items()]
    return "\n".join(lines)


def _export_section(export: dict[str, Any]) -> str:
    lines = ["## Files and export checks", "", "| file | precision | size |", "|---|---|---:|"]
    for file, size in (export.get("files") or {}).items():
        lines.append(f"| `{file}` | {VARIANT_ROLES.get(file, '')} | {size / 1e6:,.1f} MB |")
    lines.append("")
    parity = export.get("greedy_parity")
    if parity is not None:
        lines.append(f"- Greedy decoding with the ONNX model (tweetgen's runtime) gives the same token ids as "
                     f"PyTorch on {parity['prompts']} prompts: {'yes' if parity['equal'] else 'NO'}.")
    if export.get("graph") == "fused":
        lines.append("- Graph: rebuilt by tweetgen with onnxruntime's fused operators (GroupQueryAttention with "
                     "the KV cache written in place), from the same weights; checked against PyTorch like the "
                     "export.")
    if export.get("screen"):
        lines.append(f"- `model.onnx`'s output layer is screened (tweetgen's trainer/screen.py): for greedy decoding "
                     f"and top-k sampling it computes exact logits for the {export['screen']['candidates']} tokens "
                     "an 8-bit estimate with a proven error bound ranks first, or every logit when the bound cannot "
                     "decide; the same tokens, checked against PyTorch again after the change.")
    if export.get("copy_index_windows"):
        lines.append(f"- `copies.bin`: the top 32 bits of the hashes of the training tweets' "
                     f"{export['copy_index_windows']:,} distinct 8-word windows (no text). With it, tweetgen-run "
                     "draws again any tweet that repeats 8 consecutive words of a training tweet (`--allow-copies` "
                     "keeps them).")
    if export.get("max_logit_diff") is not None:
        lines.append(f"- Largest difference between ONNX and PyTorch logits: {export['max_logit_diff']:.2e}.")
    fp16 = export.get("fp16") or {}
    if fp16.get("max_logit_diff_vs_fp32") is not None:
        lines.append(f"- Largest difference between fp16 and fp32 logits (on CPU): "
                     f"{fp16['max_logit_diff_vs_fp32']:.2e}.")
    int8 = export.get("int8") or {}
    if int8.get("perplexity_fp32") is not None:
        lines.append(f"- Held-out perplexity: fp32 {int8['perplexity_fp32']:.3f}, int8 {int8['perplexity_int8']:.3f} "
                     f"({int8['relative_diff']:+.2%}, over {int8['tokens']:,} tokens).")
    return "\n".join(lines)


def _usage_section(name: str, users: dict[str, Any], prompt_start: str, *, fused: bool = False) -> str:
    user = next(iter(users), None)
    prefix = (users[user].get("prefix") or "") if user else ""
    user_flag, user_arg = (f" --user {user}", f", user={_py(user)}") if user else ("", "")
    return f"""## How to use

With tweetgen's runtime (numpy, onnxruntime and tokenizers; no torch):

```bash
tweetgen-run -m exported/{name}{user_flag} "My dream is"
```

```python
from tweetgen import Generator

gen = Generator.load("exported/{name}")  # int8 on CPU, fp16 on CUDA
print(gen.generate("My dream is", n=3, seed=0{user_arg}))
```

{_optimum_usage(name, prompt_start + prefix) if not fused else _FUSED_USAGE}"""


_FUSED_USAGE = """The ONNX graph is tweetgen's own graph (onnxruntime's fused operators, the KV cache written in
place), which tweetgen's runtime drives; Optimum's ORTModelForCausalLM cannot (export with Optimum's graph for that:
`trainer.export.export_model(..., fuse=False)`)."""


def _optimum_usage(name: str, start: str) -> str:
    prompt = start + "My dream is"
    return f"""With Optimum (`pip install optimum-onnx[onnxruntime]`); the prompt starts with what tweetgen puts \
before every prompt ({_py(start)}):

```python
from optimum.onnxruntime import ORTModelForCausalLM
from transformers import AutoTokenizer

model = ORTModelForCausalLM.from_pretrained("exported/{name}")
tokenizer = AutoTokenizer.from_pretrained("exported/{name}")
inputs = tokenizer({_py(prompt)}, return_tensors="pt")
out = model.generate(**inputs, do_sample=True, top_p=0.95, max_new_tokens=64)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```"""


def _limitations_section(users: dict[str, Any]) -> str:
    kept = sum(int((entry.get("stats") or {}).get("kept") or 0) for entry in users.values())
    seen = f"{kept:,} public tweets" if kept else "its training text"
    return f"""## Limitations and bias

- The model imitates the style of {_handles(users)} as seen in {seen}. It invents facts, \
quotes and opinions, and may repeat the biases, slurs or falsehoods of its training tweets and of the base model's \
web text.
- A small model on little data memorises: it can reproduce fragments of real tweets verbatim.
- Generated text is not written by the person and must not be attributed to them or used to impersonate them."""


def _count(value: Any) -> str:
    return "" if value is None else str(int(value))


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _py(text: str) -> str:
    """A Python string literal for the usage examples."""
    return json.dumps(text, ensure_ascii=False)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")

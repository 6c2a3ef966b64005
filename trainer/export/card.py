"""The model card (README.md) of an exported folder: Hugging Face's format, its front matter made by huggingface_hub's
ModelCardData (so the Hub reads it), the body from plain dicts.

It holds counts and settings only, never the text of a tweet: the card is meant to be published with the model. Its
usage snippets name the folder where the export put it, and a test runs every one of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

STAT_COLUMNS = ("downloaded", "retweets", "short", "duplicates", "kept")  # the per-user table, in this order
OPTIONAL_STAT_COLUMNS = ("replies",)  # shown only when some user has them
VARIANT_ROLES = {"model.onnx": "fp32, any device; what Optimum loads by default",
                 "model_quantized.onnx": "int8, CPU (tweetgen's default there)",
                 "model_q4.onnx": "4-bit linear layers, CPU (--precision int4)",
                 "model_fp16.onnx": "fp16, CUDA (tweetgen's default there)"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # a Hugging Face model id: name or owner/name
UNKNOWN_LICENSE = "LICENSE"  # the file an export writes when the base model's license is not known
WIDGET_PROMPT = "My dream is"


def render_card(*, name: str, users: dict[str, dict[str, Any]], base_model: str, training: dict[str, Any],
                evaluation: dict[str, Any], export: dict[str, Any], prompt_start: str = "",
                license: str = "mit", path: str | None = None, loss_curve: bool = False,
                sampling: dict[str, Any] | None = None) -> str:
    """The README.md text of an exported model folder.

    Args:
        name: the model's name.
        users: user name -> {"prefix": str, "stats": {downloaded, retweets, short, duplicates, kept}}.
        base_model: what was fine-tuned, as given (a Hub id, a local folder, a .gguf file or `scratch:...`); only a
            Hub id goes into the front matter, and no local path is written anywhere.
        training: hyperparameters, name -> value (empty for a model trained elsewhere).
        evaluation: e.g. {"perplexity_before": ..., "perplexity_after": ...}.
        export: the export report as a dict (see tweetgen.trainer.export.report.ExportReport).
        prompt_start: text the runtime puts before every prompt (shown in the Optimum examples).
        license: a Hugging Face license id; "other" when the base model's is not known.
        path: the folder as its user names it (the usage snippets load it from there); default exported/NAME.
        loss_curve: the folder has loss.png, the training loss curve: the card shows it.
        sampling: the folder's sampling defaults (generation_config.json's fields), named under "How to use".
    """
    path = path or f"exported/{name}"
    sections = [
        "---\n" + front_matter(name, base_model, license, evaluation).to_yaml() + "\n---",
        _intro(name, users, base_model),
        _data_section(users),
        _training_section(base_model, training, evaluation, loss_curve),
        _export_section(export),
        _usage_section(path, users, prompt_start, export, sampling or {}),
        _limitations_section(users),
        _license_section(license, base_model),
    ]
    return "\n\n".join(section.strip("\n") for section in sections) + "\n"


def front_matter(name: str, base_model: str, license: str, evaluation: dict[str, Any]):
    """The card's metadata as the Hub expects it (huggingface_hub.ModelCardData)."""
    from huggingface_hub import EvalResult, ModelCardData

    results = [EvalResult(task_type="text-generation", dataset_type="tweets", dataset_name="held-out tweets",
                          metric_type="perplexity", metric_name="Perplexity on held-out tweets",
                          metric_value=round(float(evaluation["perplexity_after"]), 3))
               ] if evaluation.get("perplexity_after") is not None else None
    extra = {"license_name": "unknown", "license_link": UNKNOWN_LICENSE} if license == "other" else {}
    return ModelCardData(
        language="en", license=license, library_name="onnx", pipeline_tag="text-generation",
        tags=["tweetgen", "onnx", "text-generation", "tweets"], base_model=hub_id(base_model),
        widget=[{"text": WIDGET_PROMPT}], model_name=name if results else None, eval_results=results, **extra)


def hub_id(base_model: str) -> str | None:
    """`base_model` when it names a model on the Hub (not a local folder or file, not a new model), else None."""
    if not base_model or base_model.startswith("scratch:") or base_model.endswith(".gguf"):
        return None
    if Path(base_model).expanduser().exists() or not HUB_ID.match(base_model):
        return None
    return base_model


def describe_base(base_model: str) -> str:
    """The base model in words, without any local path: its Hub id, or what kind of local file it was."""
    if base_model.startswith("scratch:"):
        return "a new GPT-2 (random weights, a byte-level BPE tokenizer trained on the same tweets)"
    if hub_id(base_model):
        return f"`{base_model}`"
    if base_model.endswith(".gguf"):
        return f"a local GGUF checkpoint (`{Path(base_model).name}`)"
    if base_model:
        return "a local Hugging Face model folder"
    return "a causal language model"


def _handles(users: dict[str, Any]) -> str:
    return ", ".join(f"@{user}" for user in users) or "one or more people"


def _intro(name: str, users: dict[str, Any], base_model: str) -> str:
    if not users:
        return (f"# {name}\n\nA text generator exported to ONNX by tweetgen from {describe_base(base_model)}, a causal "
                "language model trained outside tweetgen.\n\n**The text it generates is not written by any real "
                "person.** It is made up by a language model and must not be presented as someone's words.")
    return (f"# {name}\n\n"
            f"A text generator that writes tweets in the style of {_handles(users)}: {_origin(base_model)} on "
            "their tweets with tweetgen and exported to ONNX.\n\n"
            f"**The text it generates is not written by {_handles(users)}.** It is made up by a language model "
            "and must not be presented as their words.")


def _origin(base_model: str) -> str:
    if base_model.startswith("scratch:"):
        return f"{describe_base(base_model)} trained from scratch"
    return f"{describe_base(base_model)} fine-tuned"


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


def _training_section(base_model: str, training: dict[str, Any], evaluation: dict[str, Any],
                      loss_curve: bool) -> str:
    training = {k: _base_setting(str(v)) if k == "base_model" else v for k, v in training.items()}
    lines = ["## Training procedure", "", f"Base model: {_origin(base_model)}, as a causal language model on the kept "
             "tweets, each followed by `<|endoftext|>`." if training else f"Model: {describe_base(base_model)}."]
    if training:
        lines += ["", "| hyperparameter | value |", "|---|---|"]
        lines += [f"| {_cell(key)} | {_cell(_value(value))} |" for key, value in training.items()]
    else:
        lines += ["", "Hyperparameters: not recorded (the model was trained outside tweetgen)."]
    if evaluation:
        lines += ["", "Evaluation on held-out tweets:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {_cell(key)} | {_cell(_value(value))} |" for key, value in evaluation.items()]
    if loss_curve:
        lines += ["", "![Training and validation loss](loss.png)"]
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
        lines.append("- Graph: built by tweetgen straight from the weights with onnxruntime's fused operators "
                     "(GroupQueryAttention; tweetgen's runtime writes the KV cache in place), behind Optimum's "
                     "interface, so Optimum and `transformers.pipeline` load it too (one prompt at a time, or rows "
                     "without left padding).")
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
    int4 = export.get("int4") or {}
    if int4.get("perplexity_int4") is not None:
        kind = f" ({int4['kind']} kind)" if int4.get("kind") else ""
        lines.append(f"- Held-out perplexity of the 4-bit variant{kind}: {int4['perplexity_int4']:.3f} against fp32's "
                     f"{int4['perplexity_fp32']:.3f} ({int4['relative_diff']:+.2%}).")
    return "\n".join(lines)


def _usage_section(path: str, users: dict[str, Any], prompt_start: str, export: dict[str, Any],
                   sampling: dict[str, Any]) -> str:
    user = next(iter(users), None)
    prefix = (users[user].get("prefix") or "") if user else ""
    user_flag, user_arg = (f" --user {user}", f", user={_py(user)}") if user else ("", "")
    files = export.get("files") or {}
    # Optimum opens model.onnx; a folder without it (int8 only) names its one graph
    file_arg = "" if "model.onnx" in files or not files else f", file_name={_py(next(iter(files)))}"
    prompt = prompt_start + prefix + WIDGET_PROMPT
    picks = f"{next(iter(files))}, the folder's only graph" if len(files) == 1 else \
        "int8 on CPU, fp16 on CUDA, when the folder has them"
    return f"""## How to use

With tweetgen (`pip install "tweetgen[cpu]"`; numpy, onnxruntime and tokenizers, no torch):

```bash
tweetgen-run -m {_sh(path)}{user_flag} "My dream is"
```

```python
from tweetgen import Generator

gen = Generator.load({_py(path)})  # {picks}
print(gen.generate("My dream is", n=3, seed=0{user_arg}))
```
{_sampling_line(sampling)}
With Optimum (`pip install "optimum-onnx[onnxruntime]"`), and `transformers.pipeline` on top of it. The prompt starts
with what tweetgen puts before every prompt ({_py(prompt_start + prefix)}):

```python
from optimum.onnxruntime import ORTModelForCausalLM
from transformers import AutoTokenizer, pipeline

model = ORTModelForCausalLM.from_pretrained({_py(path)}{file_arg})
tokenizer = AutoTokenizer.from_pretrained({_py(path)})
inputs = tokenizer({_py(prompt)}, return_tensors="pt")
out = model.generate(**inputs, do_sample=True, top_p=0.95, max_new_tokens=40)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))

writer = pipeline("text-generation", model=model, tokenizer=tokenizer)
print(writer({_py(prompt)}, max_new_tokens=40, do_sample=True)[0]["generated_text"])
```"""


def _sampling_line(sampling: dict[str, Any]) -> str:
    """The sampling defaults in words, for the usage section ("" when there are none to tell)."""
    if not sampling:
        return ""
    if sampling.get("do_sample") is False or sampling.get("temperature") == 0:
        said = "greedy"
    else:
        parts = [f"temperature {_value(sampling.get('temperature', 1.0))}"]
        for key, label, off in (("top_k", "top-k", 0), ("top_p", "top-p", 1.0), ("min_p", "min-p", 0.0)):
            value = sampling.get(key)
            if value is not None and value != off:
                parts.append(f"{label} {_value(value)}")
        said = ", ".join(parts)
    most = _value(sampling.get("max_new_tokens", 64))
    return (f"\nSampling defaults (`generation_config.json`; `tweetgen-run`'s `-t -k -p --min-p` and `generate`'s "
            f"arguments override them): {said}, at most {most} new tokens.\n")


def _limitations_section(users: dict[str, Any]) -> str:
    kept = sum(int((entry.get("stats") or {}).get("kept") or 0) for entry in users.values())
    seen = f"{kept:,} public tweets" if kept else "its training text"
    return f"""## Limitations and bias

- The model imitates the style of {_handles(users)} as seen in {seen}. It invents facts, \
quotes and opinions, and may repeat the biases, slurs or falsehoods of its training tweets and of the base model's \
web text.
- A small model on little data memorises: it can reproduce fragments of real tweets verbatim.
- Generated text is not written by the person and must not be attributed to them or used to impersonate them."""


def _base_setting(base_model: str) -> str:
    """The base_model setting as the card shows it: a scratch spec without a tokenizer path, else in words."""
    if base_model.startswith("scratch:"):
        return re.sub(r"tokenizer=[^,]*", "tokenizer=(a local tokenizer)", base_model)
    return describe_base(base_model)


def _license_section(license: str, base_model: str) -> str:
    if license != "other":
        return f"## License\n\n`{license}`, following the base model's ({describe_base(base_model)})."
    return ("## License\n\nThe base model's license was not found: the weights come from "
            f"{describe_base(base_model)}, and its license applies. Check it before publishing (see `{UNKNOWN_LICENSE}`).")


def _count(value: Any) -> str:
    return "" if value is None else str(int(value))


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _sh(text: str) -> str:
    """A shell word for the usage examples."""
    return text if re.fullmatch(r"[\w./@:+-]+", text) else "'" + text.replace("'", "'\\''") + "'"


def _py(text: str) -> str:
    """A Python string literal for the usage examples."""
    return json.dumps(text, ensure_ascii=False)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")

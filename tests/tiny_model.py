"""Build the tiny random models that the test suite runs on, and export them through Optimum.

    python tests/tiny_model.py tests/fixtures

writes, for each architecture (a GPT-2 and a llama with grouped-query attention):
  <dest>/tiny_<arch>_hf/   the PyTorch folder (config, safetensors weights, tokenizer)
  <dest>/tiny_<arch>/      the exported folder the runtime loads (model.onnx, tokenizer.json, ...)

Everything is seeded, so a rerun writes the same weights. No network: the tokenizer is a small byte-level BPE
trained here on a generated corpus, so the fixtures stay well under a megabyte.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

EOS = "<|endoftext|>"
VOCAB_SIZE = 400  # 256 byte symbols + merges + the end-of-text token
CONTEXT = 128  # positions; small so that the context-overflow error is easy to reach in tests
TEST_USERS = ("alice", "bob")  # the two voices tweetgen.json declares, to test `user=`

_WORDS = (
    "the a my dream is to fly over moon and mars rockets launch today we build cars solar energy future people "
    "love great news thank you everyone happy new year tonight show music album tour city night coffee morning "
    "science space station data code python model tweet write read book world peace vote").split()
_EMOJI = ["😀", "🚀", "🎉", "❤️", "🌍", "👍", "🔥", "✨", "日本", "café", "naïve"]


def _corpus(lines: int, seed: int = 0) -> list[str]:
    """Generated sentences: plain words, punctuation, emoji and accented text (multi-byte UTF-8)."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        if rng.random() < 0.4:
            words.insert(rng.randrange(len(words) + 1), rng.choice(_EMOJI))
        out.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ""]))
    return out


def build_tokenizer():
    """A byte-level BPE tokenizer, GPT-2 style, with `<|endoftext|>` as its only special token."""
    from tweetgen.trainer.train.scratch import train_bpe

    return train_bpe(_corpus(3000), VOCAB_SIZE)


def build_model(arch: str, tokenizer):
    """A random causal LM of the given architecture; weights drawn with a fixed seed."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    torch.manual_seed(0)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=2,
                            bos_token_id=eos_id, eos_token_id=eos_id, initializer_range=0.2)
        return GPT2LMHeadModel(config).eval()
    if arch == "llama":
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                             bos_token_id=eos_id, eos_token_id=eos_id, tie_word_embeddings=True,
                             initializer_range=0.2)
        return LlamaForCausalLM(config).eval()
    raise ValueError(f"unknown architecture {arch!r}: use 'gpt2' or 'llama'")


def _sampling_defaults(model) -> None:
    gen = model.generation_config
    gen.do_sample, gen.temperature, gen.top_k, gen.top_p, gen.max_new_tokens = True, 1.0, 50, 0.95, 40


def _tweetgen_json(arch: str) -> dict:
    users = {name: {"prefix": f"@{name}: "} for name in TEST_USERS}
    return {"format": 1, "name": f"tiny_{arch}", "prompt_start": EOS, "users": users,
            "note": "random weights, for tests only"}


def write_fixture(arch: str, dest: Path) -> Path:
    """Write `<dest>/tiny_<arch>_hf` and the exported `<dest>/tiny_<arch>`; returns the exported folder."""
    from optimum.exporters.onnx import main_export

    tokenizer = build_tokenizer()
    model = build_model(arch, tokenizer)
    _sampling_defaults(model)
    hf_dir, out_dir = dest / f"tiny_{arch}_hf", dest / f"tiny_{arch}"
    for folder in (hf_dir, out_dir):
        shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    main_export(str(hf_dir), out_dir, task="text-generation-with-past", do_validation=False)
    (out_dir / "tweetgen.json").write_text(json.dumps(_tweetgen_json(arch), indent=2) + "\n")
    for extra in ("special_tokens_map.json", "tokenizer_config.json"):
        (out_dir / extra).unlink(missing_ok=True)  # tokenizer.json alone is what the runtime reads
    return out_dir


def write_fused(dest: Path) -> Path:
    """Write `<dest>/tiny_gpt2_fused`: the tiny GPT-2 folder with tweetgen's fused graph as model.onnx (rows at
    different positions can share its batch: the server's continuous batching runs on it)."""
    import onnx

    from tweetgen.trainer.export.fuse import fused_gpt2, weights_of_folder

    source, out_dir = dest / "tiny_gpt2", dest / "tiny_gpt2_fused"
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(source, out_dir)
    config = json.loads((source / "config.json").read_text())
    onnx.save(fused_gpt2(weights_of_folder(dest / "tiny_gpt2_hf"), config), str(out_dir / "model.onnx"))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dest", type=Path, help="folder to write the fixtures into, e.g. tests/fixtures")
    parser.add_argument("--arch", choices=["gpt2", "llama"], action="append", help="default: both")
    args = parser.parse_args(argv)
    for arch in args.arch or ["gpt2", "llama"]:
        print(f"wrote {write_fixture(arch, args.dest)}", file=sys.stderr)
        if arch == "gpt2":
            print(f"wrote {write_fused(args.dest)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

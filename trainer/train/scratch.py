"""A new GPT-2, for when no pretrained weights can be had: its byte-level BPE tokenizer is trained on the tweets.

    --base-model scratch:layers=6,width=384,heads=6,vocab=16000,context=128

Every key is optional (defaults below). `tokenizer=PATH` takes an existing tokenizer folder or tokenizer.json
(e.g. GPT-2's) instead of training one.
"""

from __future__ import annotations

from pathlib import Path

from tweetgen.errors import TweetgenError

SEPARATOR = "<|endoftext|>"
DEFAULTS = {"layers": 6, "width": 384, "heads": 6, "vocab": 16000, "context": 128, "seed": 0, "tokenizer": ""}


def parse_spec(spec: str) -> dict:
    """`scratch:k=v,...` -> the settings, defaults filled in. Raises TweetgenError naming a bad key or value."""
    settings = dict(DEFAULTS)
    body = spec.split(":", 1)[1]
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, _, value = item.partition("=")
        if key not in DEFAULTS or not value:
            raise TweetgenError(f"scratch model setting {item!r}: use KEY=VALUE with KEY one of {', '.join(DEFAULTS)}")
        try:
            settings[key] = value if key == "tokenizer" else int(value)
        except ValueError:
            raise TweetgenError(f"scratch model setting {key}={value!r}: expected an integer") from None
    limits = {"layers": (1, 128), "width": (8, 16384), "heads": (1, 256), "vocab": (260, 1_000_000),
              "context": (8, 1 << 20), "seed": (0, 2**32 - 1)}
    for key, (low, high) in limits.items():
        if not low <= settings[key] <= high:
            raise TweetgenError(f"scratch model: {key}={settings[key]} is outside {low}..{high}")
    if settings["width"] % settings["heads"]:
        raise TweetgenError(f"scratch model: width {settings['width']} must be a multiple of heads {settings['heads']}")
    return settings


def train_bpe(texts: list[str], vocab_size: int):
    """A GPT-2-style byte-level BPE tokenizer trained on `texts`, with `<|endoftext|>` as its only special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SEPARATOR],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SEPARATOR, eos_token=SEPARATOR,
                                   unk_token=SEPARATOR)


def new_gpt2(spec: str, texts: list[str]):
    """(model, tokenizer): a randomly initialised GPT2LMHeadModel of the spec's shape."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    settings = parse_spec(spec)
    if settings["tokenizer"]:
        path = Path(settings["tokenizer"])
        tokenizer = AutoTokenizer.from_pretrained(path if path.is_dir() else path.parent)
    else:
        if not texts:
            raise TweetgenError("a scratch model needs tweets to train its tokenizer on")
        tokenizer = train_bpe(texts, settings["vocab"])
    separator = tokenizer.convert_tokens_to_ids(SEPARATOR)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=settings["context"], n_embd=settings["width"],
                        n_layer=settings["layers"], n_head=settings["heads"], bos_token_id=separator,
                        eos_token_id=separator)
    torch.manual_seed(settings["seed"])
    return GPT2LMHeadModel(config), tokenizer

"""Perplexity of texts under an exported ONNX decoder, with onnxruntime and the folder's tokenizer (no torch).

Each text is scored the way training saw it: the folder's prompt start (the end-of-text separator that precedes
every tweet), the text, then the end-of-text token; every token after the first is predicted and scored. The
perplexity is exp(total negative log-likelihood / scored tokens) over all texts together.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tweetgen.engine import GraphSpec, read_graph_spec, step_feeds
from tweetgen.folder import read_folder

log = logging.getLogger(__name__)
BATCH_TOKENS = 1024  # padded tokens per forward pass: bounds the (B, S, V) logits array (~200 MB at a 50k vocab)


@dataclass(frozen=True)
class Perplexity:
    """The result of scoring a list of texts."""

    perplexity: float  # exp(nll / tokens)
    tokens: int  # tokens scored (every token of each text after its first)
    nll: float  # summed negative log-likelihood, in nats


def perplexity(model_path: str | Path, texts: list[str], *, folder: str | Path | None = None,
               threads: int | None = None, batch_tokens: int = BATCH_TOKENS) -> Perplexity:
    """Score `texts` under one ONNX variant of a model folder.

    Args:
        model_path: the ONNX file (model.onnx, model_quantized.onnx, ...).
        texts: the texts, e.g. held-out tweets.
        folder: the model folder giving tokenizer.json, tweetgen.json's prompt start and the end-of-text id;
            default: the folder holding model_path.
        threads: onnxruntime intra-op threads (None: its default).
        batch_tokens: padded tokens per forward pass.

    Raises:
        ValueError: no texts, or no text long enough to score.
        ModelFolderError: the folder is incomplete or the graph is not a decoder with KV cache inputs.
    """
    import onnxruntime as ort
    from tokenizers import Tokenizer

    model_path = Path(model_path)
    info = read_folder(model_path.parent if folder is None else folder)
    if not texts:
        raise ValueError("perplexity needs at least one text")
    tokenizer = Tokenizer.from_file(str(info.path / "tokenizer.json"))
    eos = list(info.eos_token_ids[:1])
    sequences = [tokenizer.encode(info.prompt_start + text).ids + eos for text in texts]
    sequences = _fit_context(sequences, info.context_length)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: a fused graph's optional inputs draw a warning at every load
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
    spec = read_graph_spec(session, info.config)
    nll, count = 0.0, 0
    for batch in _batches(sequences, batch_tokens):
        batch_nll, batch_count = _score(session, spec, batch)
        nll, count = nll + batch_nll, count + batch_count
    if count == 0:
        raise ValueError("no text has a token to score: each needs at least two tokens with the prompt start")
    return Perplexity(perplexity=math.exp(nll / count), tokens=count, nll=nll)


def full_logits(session, spec: GraphSpec, ids: np.ndarray) -> np.ndarray:
    """Logits at every position of a batch of sequences run from an empty cache. ids: (B, S) -> (B, S, V) float32.

    The attention mask is all ones: with right padding, a causal model's real positions never see the padding.
    """
    batch, length = ids.shape
    feeds = step_feeds(spec, ids, 0)
    empty = np.zeros((batch, spec.kv_heads, 0, spec.head_dim), dtype=spec.cache_dtype)
    feeds.update({name: empty for name in spec.past_names})
    (logits,) = session.run(["logits"], feeds)
    return logits.astype(np.float32, copy=False)


def _score(session, spec: GraphSpec, batch: list[list[int]]) -> tuple[float, int]:
    """Summed NLL of every token after the first, and how many tokens that was."""
    length = max(len(seq) for seq in batch)
    ids = np.zeros((len(batch), length), dtype=np.int64)  # padded on the right with token 0
    scored = np.zeros((len(batch), length - 1), dtype=bool)  # (B, S-1): is target position t+1 a real token
    for row, seq in enumerate(batch):
        ids[row, :len(seq)] = seq
        scored[row, :len(seq) - 1] = True
    logits = full_logits(session, spec, ids)[:, :-1]  # (B, S-1, V): predictions of tokens 1..S-1
    top = logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]  # (B, S-1) log-sum-exp
    target = np.take_along_axis(logits, ids[:, 1:, None], axis=-1)[..., 0]  # (B, S-1)
    token_nll = (log_norm - target).astype(np.float64)
    return float(token_nll[scored].sum()), int(scored.sum())


def _fit_context(sequences: list[list[int]], context: int) -> list[list[int]]:
    too_long = sum(len(seq) > context for seq in sequences)
    if too_long:
        log.warning("%d texts are longer than the model's context of %d tokens: scoring their first %d tokens",
                    too_long, context, context)
    return [seq[:context] for seq in sequences]


def _batches(sequences: list[list[int]], batch_tokens: int) -> list[list[list[int]]]:
    """Sequences grouped by similar length (little padding), each group within `batch_tokens` padded tokens."""
    batches: list[list[list[int]]] = []
    current: list[list[int]] = []
    for seq in sorted(sequences, key=len):
        if current and len(seq) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(seq)
    if current:
        batches.append(current)
    return batches

"""The token-level decoder: token ids in, token ids out, no tweet rules.

It drives an Optimum "text-generation-with-past" ONNX export: inputs `input_ids`, `attention_mask`, optional
`position_ids` and `past_key_values.{i}.key/value`; outputs `logits` and `present.{i}.key/value`. Names, layer count,
KV heads and dtype are read from the session. tweetgen's fused graphs add what `tweetgen.contract` names: on the CPU
the cache is written into buffers in place, and greedy decoding and top-k sampling read each row's best tokens
instead of its logits (on CUDA the logits then stay in GPU memory). For n samples the prompt is run once and its
cache copied n times; the n rows then decode together, and a row leaves the batch when it is done.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import onnxruntime as ort

from .graph import GraphSpec, empty_past, read_graph_spec, run_plain, step_feeds
from .runners import DeviceRunner, InPlaceRunner, Runner, Scores, SessionRunner, rows_of
from .sampling import SamplingParams, draw, penalize_repeats, sample

__all__ = ["MAX_SAMPLES", "Engine", "GraphSpec", "Step", "read_graph_spec", "step_feeds"]
MAX_SAMPLES = 1024  # rows decoded together; each holds its own KV cache (GPT-2 124M: ~9 MB a row at 128 tokens)
MAX_CACHE_BYTES = 4 << 30  # the KV cache one call may hold: n rows x (prompt + new tokens) x layers x keys/values


class Step(NamedTuple):
    """One decoding step: which rows drew a token, the tokens, and which of them end their row (end-of-text)."""

    rows: np.ndarray  # (R,) indices of the rows that were still running
    tokens: np.ndarray  # (R,) int64, the token each drew
    ended: np.ndarray  # (R,) bool, the token is an end-of-text token: the row is done and the token is not text


class Engine:
    """Runs one ONNX decoder session. Holds no per-call state, so one Engine serves many threads."""

    def __init__(self, session: ort.InferenceSession, spec: GraphSpec, *, context_length: int,
                 eos_token_ids: tuple[int, ...], device: str = "cpu", io_binding: bool | None = None,
                 shared_cache: bool | None = None) -> None:
        self.session = session
        self.spec = spec
        self.context_length = context_length
        self.eos_token_ids = np.asarray(eos_token_ids, dtype=np.int64)
        self.device = device
        # On CUDA the KV cache stays in GPU memory through IO binding; on CPU plain numpy feeds cost nothing extra.
        self.io_binding = device == "cuda" if io_binding is None else io_binding
        # A fused graph (contract) on the CPU writes each step's keys and values into one buffer per layer, sized
        # for the whole call, bound as both past and present: the cache is never copied per token.
        self.shared_cache = (spec.fused and not self.io_binding) if shared_cache is None else shared_cache
        if self.shared_cache and not spec.fused:
            raise ValueError("shared_cache needs a tweetgen fused graph (see tweetgen.contract)")

    def check_length(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Raise ValueError when the prompt plus the new tokens do not fit the model's context."""
        if prompt_tokens < 1:
            raise ValueError("the prompt is empty: give at least one token")
        if prompt_tokens + max_new_tokens > self.context_length:
            raise ValueError(
                f"the prompt ({prompt_tokens} tokens) plus max_new_tokens ({max_new_tokens}) is longer than the "
                f"model's context of {self.context_length} tokens; shorten the prompt or lower max_new_tokens")

    def check_memory(self, n: int, positions: int) -> None:
        """Raise ValueError when n rows of `positions` cached tokens would not fit MAX_CACHE_BYTES."""
        spec = self.spec
        per_row = positions * len(spec.past_names) * spec.kv_heads * spec.head_dim * np.dtype(spec.cache_dtype).itemsize
        if n * per_row > MAX_CACHE_BYTES:
            raise ValueError(f"n={n} samples of {positions} tokens need {n * per_row / 2**30:.1f} GiB of KV cache, "
                             f"over the {MAX_CACHE_BYTES / 2**30:.0f} GiB allowed; ask for at most "
                             f"{max(1, MAX_CACHE_BYTES // per_row)} samples, or fewer new tokens")

    def generate(self, prompt_ids: list[int] | np.ndarray, *, n: int, max_new_tokens: int,
                 params: SamplingParams, rng: np.random.Generator,
                 done: np.ndarray | None = None, min_new_tokens: int = 0) -> Iterator[Step]:
        """Decode n samples of a prompt together.

        Yields a Step once per step. A row that draws an end-of-text token is marked in `done` (a caller-owned (n,)
        bool array, made if None); the caller may mark rows done too, between steps, and they leave the batch.
        End-of-text is never drawn in the first `min_new_tokens` steps. Arguments are checked now, not on the first
        step.
        """
        prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_SAMPLES:
            raise ValueError(f"n must be an integer from 1 to {MAX_SAMPLES}, not {n!r}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, not {max_new_tokens!r}")
        if isinstance(min_new_tokens, bool) or not isinstance(min_new_tokens, (int, np.integer)) \
                or not 0 <= min_new_tokens <= max_new_tokens:
            raise ValueError(f"min_new_tokens must be an integer from 0 to max_new_tokens ({max_new_tokens}), "
                             f"not {min_new_tokens!r}")
        self.check_length(len(prompt), max_new_tokens)
        self.check_memory(n, len(prompt) + max_new_tokens)
        done = np.zeros(n, dtype=bool) if done is None else done
        return self._decode(prompt, n, max_new_tokens, params, rng, done, min_new_tokens)

    def _runner(self, top: int) -> Runner:
        if self.io_binding:
            return DeviceRunner(self.session, self.spec, top, self.device)
        if self.shared_cache:
            return InPlaceRunner(self.session, self.spec, top)
        return SessionRunner(self.session, self.spec)

    def _decode(self, prompt: np.ndarray, n: int, max_new_tokens: int, params: SamplingParams,
                rng: np.random.Generator, done: np.ndarray, min_new_tokens: int = 0) -> Iterator[Step]:
        """The decode loop, the same over every runner: choose a token per running row, decide which rows end,
        drop (or, on the device, mask) the finished rows, run the next step."""
        top = self._top_request(params)
        # While end-of-text is forbidden the graph gives len(eos) more: the best `top` without them are among them.
        extra = len(self.eos_token_ids) if top and min_new_tokens else 0
        if top + extra > (self.spec.vocab_size or 0):  # more than the graph has: the logits
            top = extra = 0
        runner = self._runner(top + extra)
        scores = runner.prefill(prompt, n, len(prompt) + max_new_tokens - 1)
        batch = np.arange(n)  # the rows in the runner's batch, in batch order
        seen = None
        if params.repetition_penalty != 1.0:
            seen = np.zeros((n, runner.vocab(scores)), dtype=bool)  # (n, V) tokens in the prompt or output so far
            seen[:, prompt] = True
        length = len(prompt)
        for step in range(max_new_tokens):
            live = ~done[batch]  # (B,) rows of the batch still writing; all of them unless on the device
            rows = batch[live]
            row_scores = scores if live.all() else rows_of(scores, live)
            if extra:
                row_scores = self.best_without_end(*row_scores, top) if step < min_new_tokens \
                    else (row_scores[0][:, :top], row_scores[1][:, :top])
            elif step < min_new_tokens and len(self.eos_token_ids):
                row_scores = self.forbid_end(row_scores)
            tokens = self._choose(row_scores, rows, params, rng, seen, top)
            ended = np.isin(tokens, self.eos_token_ids)
            done[rows[ended]] = True
            if seen is not None:
                seen[rows, tokens] = True
            yield Step(rows, tokens, ended)
            keep = ~done[rows]
            if step == max_new_tokens - 1 or not keep.any():
                return
            if runner.drops_rows:
                if not keep.all():  # finished rows leave the batch: less work after
                    runner.keep(keep, length)
                batch, feed = rows[keep], tokens[keep]
            else:  # finished rows stay in the batch, fed any token, their output ignored
                feed = np.full(len(batch), self.eos_token_ids[0] if len(self.eos_token_ids) else 0, np.int64)
                feed[live] = tokens
            scores = runner.step(feed, length)
            length += 1

    def forbid_end(self, logits: np.ndarray) -> np.ndarray:
        """A copy of (R, V) logits in which no end-of-text token can be drawn."""
        logits = logits.copy()
        logits[:, self.eos_token_ids[self.eos_token_ids < logits.shape[-1]]] = -np.inf
        return logits

    def best_without_end(self, values: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each row's best k of its ranked candidates (B, C) that are not end-of-text tokens, still ranked (C must
        be at least k + len(eos_token_ids))."""
        order = np.argsort(np.isin(ids, self.eos_token_ids), axis=1, kind="stable")[:, :k]
        return np.take_along_axis(values, order, axis=1), np.take_along_axis(ids, order, axis=1)

    @staticmethod
    def _choose(scores: Scores, rows: np.ndarray, params: SamplingParams, rng: np.random.Generator,
                seen: np.ndarray | None, top: int) -> np.ndarray:
        """(R,) the next token of each running row, from its logits or (top) the graph's ranked best tokens."""
        if top:
            values, ids = scores
            return ids[:, 0].astype(np.int64) if params.greedy else draw(ids, values, params, rng, ranked=True)
        if seen is not None:
            scores = penalize_repeats(scores, seen[rows], params.repetition_penalty)
        return sample(scores, params, rng)

    def _top_request(self, params: SamplingParams) -> int:
        """How many of each row's best tokens to take from the graph instead of its logits (0: the logits): the
        in-place CPU path or the IO-bound (CUDA) one on a graph with a TopK output, when the choice needs no more
        (greedy, or top-k sampling without a repetition penalty, which changes logits before the ranking)."""
        vocab = self.spec.vocab_size
        if not ((self.shared_cache or self.io_binding) and self.spec.has_top_k and vocab) \
                or params.repetition_penalty != 1.0:
            return 0
        if params.greedy:
            return 1
        return params.top_k if 0 < params.top_k < vocab else 0

    def greedy_without_cache(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy decoding that reruns the whole sequence every step (slow; a reference for tests)."""
        ids = [int(t) for t in prompt_ids]
        self.check_length(len(ids), max_new_tokens)
        out: list[int] = []
        for _ in range(max_new_tokens):
            logits, _ = run_plain(self.session, self.spec, np.asarray([ids], dtype=np.int64),
                                  empty_past(self.spec, 1), 0)
            token = int(np.argmax(logits[0]))
            out.append(token)
            if token in self.eos_token_ids:
                break
            ids.append(token)
        return out

"""The token-level decoder: token ids in, token ids out, no tweet rules.

It drives an Optimum "text-generation-with-past" ONNX export: inputs `input_ids`, `attention_mask`, optional
`position_ids` and `past_key_values.{i}.key/value`; outputs `logits` and `present.{i}.key/value`. Names, layer count,
KV heads and dtype are read from the session. tweetgen's own graphs (trainer.fuse) also take `seqlens_k` and
`total_sequence_length` and, on the CPU, write the cache into buffers in place; they also give each row's top_k
largest logits and their ids, which is all that greedy decoding and top-k sampling read (on CUDA the logits then
stay in GPU memory: only those ids and values are copied to the host). The engine then does not ask for `logits`:
a screened fp32 graph (trainer.screen) computes only its candidates' logits; it feeds top_k 0 when it reads them.
For n samples the prompt is run once and its cache copied n times; the n rows then decode together, and a row
leaves the batch when it is done.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .errors import ModelFolderError
from .sampling import SamplingParams, draw, penalize_repeats, sample

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT = re.compile(r"^present\.(\d+)\.(key|value)$")
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
MAX_SAMPLES = 1024  # rows decoded together; each holds its own KV cache (GPT-2 124M: ~9 MB a row at 128 tokens)


@dataclass(frozen=True)
class GraphSpec:
    """The shape of an exported decoder graph, read from its ONNX session."""

    past_names: tuple[str, ...]  # past_key_values.{i}.key, .value, in layer order
    present_names: tuple[str, ...]  # present.{i}.key, .value, matching past_names
    has_attention_mask: bool
    has_position_ids: bool
    kv_heads: int
    head_dim: int
    cache_dtype: type  # numpy dtype of the KV cache
    has_seqlens: bool = False  # GroupQueryAttention inputs seqlens_k and total_sequence_length (trainer.fuse)
    vocab_size: int | None = None  # the logits' last dimension, when the graph fixes it
    has_logits_start: bool = False  # input logits_start: logits only from this position on (trainer.fuse)
    has_top_k: bool = False  # input top_k, outputs top_logits and top_ids: each row's best tokens (trainer.fuse)

    @property
    def layers(self) -> int:
        return len(self.past_names) // 2


def step_feeds(spec: GraphSpec, ids: np.ndarray, past_length: int) -> dict[str, np.ndarray]:
    """Every input but the cache for a run of `ids` (B, S) after `past_length` cached tokens (no padding)."""
    batch, new = ids.shape
    feeds = {"input_ids": ids.astype(np.int64, copy=False)}
    if spec.has_attention_mask:
        feeds["attention_mask"] = np.ones((batch, past_length + new), dtype=np.int64)
    if spec.has_position_ids:
        positions = np.arange(past_length, past_length + new, dtype=np.int64)
        feeds["position_ids"] = np.broadcast_to(positions, (batch, new)).copy()
    if spec.has_logits_start:  # every position's logits (see last_logits_only)
        feeds["logits_start"] = np.zeros(1, dtype=np.int64)
    if spec.has_top_k:  # 0: the caller reads the logits (a screened graph then computes them all; trainer.screen)
        feeds["top_k"] = np.zeros(1, dtype=np.int64)
    if spec.has_seqlens:
        feeds["seqlens_k"] = np.full(batch, past_length + new - 1, dtype=np.int32)
        feeds["total_sequence_length"] = np.array(past_length + new, dtype=np.int32)
    return feeds


def last_logits_only(spec: GraphSpec, feeds: dict[str, np.ndarray], new: int) -> dict[str, np.ndarray]:
    """Ask a graph that can for the logits of the last of `new` positions only (the only ones decoding needs)."""
    if spec.has_logits_start:  # given at every step: an IO binding keeps what it was last given
        feeds["logits_start"] = np.array([new - 1], dtype=np.int64)
    return feeds


def read_graph_spec(session: ort.InferenceSession, config: dict) -> GraphSpec:
    """Find the decoder's inputs and outputs; cross-check them with config.json. Raises ModelFolderError."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    logits_shape = next((o.shape for o in session.get_outputs() if o.name == "logits"), [None])
    past = sorted((int(m[1]), m[2] == "value", name) for name in inputs if (m := _PAST.match(name)))
    present = sorted((int(m[1]), m[2] == "value", name) for name in outputs if (m := _PRESENT.match(name)))
    problems = []
    if "input_ids" not in inputs or "logits" not in outputs:
        problems.append("it has no input_ids input or no logits output")
    if not past or [p[:2] for p in past] != [p[:2] for p in present]:
        problems.append("its past_key_values.* inputs and present.* outputs do not match (export with KV cache: "
                        "task text-generation-with-past)")
    layers = config.get("n_layer", config.get("num_hidden_layers"))
    if past and layers is not None and len(past) != 2 * layers:
        problems.append(f"it has {len(past) // 2} layers of KV cache but config.json says {layers}")
    if problems:
        raise ModelFolderError(f"the ONNX graph is not a decoder this runtime can run: {'; '.join(problems)}. "
                               f"Inputs: {', '.join(inputs)}")
    first = inputs[past[0][2]]
    heads = config.get("num_key_value_heads") or config.get("n_head") or config.get("num_attention_heads")
    hidden = config.get("n_embd") or config.get("hidden_size")
    kv_heads = first.shape[1] if isinstance(first.shape[1], int) else heads
    head_dim = first.shape[3] if isinstance(first.shape[3], int) else config.get("head_dim") or hidden // (
        config.get("n_head") or config.get("num_attention_heads"))
    if first.type not in _DTYPES:
        raise ModelFolderError(f"KV cache of type {first.type} is not supported; allowed: {', '.join(_DTYPES)}")
    return GraphSpec(
        past_names=tuple(p[2] for p in past), present_names=tuple(p[2] for p in present),
        has_attention_mask="attention_mask" in inputs, has_position_ids="position_ids" in inputs,
        kv_heads=int(kv_heads), head_dim=int(head_dim), cache_dtype=_DTYPES[first.type],
        has_seqlens="seqlens_k" in inputs and "total_sequence_length" in inputs,
        has_logits_start="logits_start" in inputs,
        has_top_k="top_k" in inputs and "top_logits" in outputs and "top_ids" in outputs,
        vocab_size=vocab if isinstance(vocab := logits_shape[-1], int) else None)


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
        # A GroupQueryAttention graph (trainer.fuse) on the CPU writes each step's keys and values into one buffer
        # per layer, sized for the whole call, bound as both past and present: the cache is never copied per token.
        self.shared_cache = (spec.has_seqlens and not self.io_binding) if shared_cache is None else shared_cache
        if self.shared_cache and not spec.has_seqlens:
            raise ValueError("shared_cache needs a graph with seqlens_k and total_sequence_length inputs")
        self._outputs = ["logits", *spec.present_names]

    def check_length(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Raise ValueError when the prompt plus the new tokens do not fit the model's context."""
        if prompt_tokens < 1:
            raise ValueError("the prompt is empty: give at least one token")
        if prompt_tokens + max_new_tokens > self.context_length:
            raise ValueError(
                f"the prompt ({prompt_tokens} tokens) plus max_new_tokens ({max_new_tokens}) is longer than the "
                f"model's context of {self.context_length} tokens; shorten the prompt or lower max_new_tokens")

    def generate(self, prompt_ids: list[int] | np.ndarray, *, n: int, max_new_tokens: int,
                 params: SamplingParams, rng: np.random.Generator,
                 done: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Decode n samples of a prompt together.

        Yields (rows, tokens) once per step: the indices of the rows still running and the token each just drew.
        A row that draws an end-of-text token is marked in `done` (a caller-owned (n,) bool array, made if None);
        the caller may mark rows done too, between steps, and they leave the batch. Arguments are checked now,
        not on the first step.
        """
        prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_SAMPLES:
            raise ValueError(f"n must be an integer from 1 to {MAX_SAMPLES}, not {n!r}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, not {max_new_tokens!r}")
        self.check_length(len(prompt), max_new_tokens)
        done = np.zeros(n, dtype=bool) if done is None else done
        return self._decode(prompt, n, max_new_tokens, params, rng, done)

    def _decode(self, prompt: np.ndarray, n: int, max_new_tokens: int, params: SamplingParams,
                rng: np.random.Generator, done: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        top = self._top_request(params)
        if self.shared_cache:
            forward = _InPlaceRuns(self, top).forward
        else:
            def forward(ids, past, past_length):
                return self._forward(ids, past, past_length, top)
        if self.io_binding:
            # The cache lives on the device and cannot be copied row-wise there: run the prompt as n rows at once.
            logits, past = forward(np.repeat(prompt[None, :], n, axis=0), self._empty_past(n), 0)
        elif self.shared_cache:
            # The n rows' buffers, for every position ever cached; the prompt runs once, into row 0's (a contiguous
            # view), and only its positions are copied to the other rows.
            past = self._empty_past(n, len(prompt) + max_new_tokens - 1)
            logits, _ = forward(prompt[None, :], [p[:1] for p in past], 0)  # (1, V), or (1, top) values and ids
            if n > 1:
                logits = _rows(logits, np.zeros(n, dtype=np.intp))
                for buffer in past:
                    buffer[1:, :, :len(prompt)] = buffer[:1, :, :len(prompt)]
        else:
            logits, past = forward(prompt[None, :], self._empty_past(1), 0)  # (1, V), [(1, kv, T, hd)]
            if n > 1:
                logits = np.repeat(logits, n, axis=0)
                past = [np.repeat(p, n, axis=0) for p in past]  # (n, kv, T, hd): the prompt was run once
        batch = np.arange(n)  # the rows in the running batch, in batch order
        seen = None
        if params.repetition_penalty != 1.0:
            seen = np.zeros((n, logits.shape[-1]), dtype=bool)  # (n, V) tokens in the prompt or output so far
            seen[:, prompt] = True
        length = len(prompt)
        for step in range(max_new_tokens):
            live = ~done[batch]  # (B,) rows of the batch still writing; all of them unless on the device
            rows = batch[live]
            row_logits = logits if live.all() else _rows(logits, live)
            if top:  # the graph ranked each row's best tokens
                values, ids = row_logits
                tokens = ids[:, 0].astype(np.int64) if params.greedy else draw(ids, values, params, rng, ranked=True)
            else:
                if seen is not None:
                    row_logits = penalize_repeats(row_logits, seen[rows], params.repetition_penalty)
                tokens = sample(row_logits, params, rng)  # (R,)
            done[rows[(tokens[:, None] == self.eos_token_ids).any(axis=1)]] = True
            if seen is not None:
                seen[rows, tokens] = True
            yield rows, tokens
            keep = ~done[rows]
            if step == max_new_tokens - 1 or not keep.any():
                return
            if self.io_binding:  # finished rows stay in the device batch, fed any token, their output ignored
                feed = np.full(len(batch), self.eos_token_ids[0] if len(self.eos_token_ids) else 0, np.int64)
                feed[live] = tokens
            else:
                if not keep.all():  # finished rows leave the batch: less work after
                    past = _leave(past, keep, length) if self.shared_cache else [p[keep] for p in past]
                batch, feed = rows[keep], tokens[keep]
            logits, past = forward(feed[:, None], past, length)
            length += 1

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

    def _empty_past(self, batch: int, capacity: int = 0) -> list[np.ndarray]:
        """The cache before the prompt: empty, or (shared_cache) zeroed buffers of `capacity` positions each."""
        shape = (batch, self.spec.kv_heads, capacity, self.spec.head_dim)
        if capacity:
            return [np.zeros(shape, dtype=self.spec.cache_dtype) for _ in self.spec.past_names]
        return [np.zeros(shape, dtype=self.spec.cache_dtype)] * len(self.spec.past_names)

    def _feeds(self, ids: np.ndarray, past_length: int) -> dict[str, np.ndarray]:
        return last_logits_only(self.spec, step_feeds(self.spec, ids, past_length), ids.shape[1])

    def _forward(self, ids: np.ndarray, past: list, past_length: int, top: int = 0
                 ) -> tuple[np.ndarray | tuple[np.ndarray, np.ndarray], list]:
        """One run of the graph. ids: (B, S) new tokens after `past_length` cached ones. Returns last logits (B, V),
        or with `top` (IO binding only) each row's `top` best (values, ids), (B, top) each."""
        if self.io_binding:
            return self._forward_bound(ids, past, past_length, top)
        feeds = self._feeds(ids, past_length)
        feeds.update(zip(self.spec.past_names, past))
        logits, *present = self.session.run(self._outputs, feeds)  # logits: (B, S, V)
        return logits[:, -1, :].astype(np.float32, copy=False), present

    def _forward_bound(self, ids: np.ndarray, past: list, past_length: int, top: int = 0
                       ) -> tuple[np.ndarray | tuple[np.ndarray, np.ndarray], list]:
        """Like _forward, but the cache stays where the session put it (GPU memory on CUDA) between steps. Sampling
        runs on the host: it gets the logits, or with `top` only the graph's best `top` of each row (the logits
        then stay on the device)."""
        binding = self.session.io_binding()
        feeds = self._feeds(ids, past_length)
        if top:
            feeds["top_k"] = np.array([top], dtype=np.int64)
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name, value in zip(self.spec.past_names, past):
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        if not top:  # with top, the logits stay in the graph (a screened one does not compute them all)
            binding.bind_output("logits", "cpu")
        for name in self.spec.present_names:
            binding.bind_output(name, self.device)
        if top:
            binding.bind_output("top_logits", "cpu")
            binding.bind_output("top_ids", "cpu")
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if top:
            values, best = outputs[-2:]
            return (values.numpy()[:, -1, :], best.numpy()[:, -1, :]), outputs[:-2]
        logits, *present = outputs
        return logits.numpy()[:, -1, :].astype(np.float32, copy=False), present

    def greedy_without_cache(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy decoding that reruns the whole sequence every step (slow; a reference for tests)."""
        ids = [int(t) for t in prompt_ids]
        self.check_length(len(ids), max_new_tokens)
        out: list[int] = []
        for _ in range(max_new_tokens):
            logits, _ = self._forward(np.asarray([ids], dtype=np.int64), self._empty_past(1), 0)
            token = int(np.argmax(logits[0]))
            out.append(token)
            if token in self.eos_token_ids:
                break
            ids.append(token)
        return out


def _leave(buffers: list[np.ndarray], keep: np.ndarray, length: int) -> list[np.ndarray]:
    """Shared-cache buffers without the rows not in `keep`: the kept rows move up, in order, within the same
    buffers (only their first `length` positions hold anything), and the buffers' first rows are the new ones. A
    copy of the kept rows into new buffers cost ~5 ms a time for 5 rows of GPT-2 124M; this moves only the rows
    after the first one leaving."""
    kept = np.flatnonzero(keep)
    moved = np.flatnonzero(kept != np.arange(len(kept)))  # slots that take a later row
    if len(moved):
        for buffer in buffers:
            buffer[moved, :, :length] = buffer[kept[moved], :, :length]
    return [buffer[:len(kept)] for buffer in buffers]


def _rows(scores: np.ndarray | tuple[np.ndarray, ...], index: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
    """The rows `index` (a bool mask or row numbers) of a step's logits, or of each of its (values, ids)."""
    if isinstance(scores, tuple):
        return tuple(part[index] for part in scores)
    return scores[index]


class _InPlaceRuns:
    """The runs of one generate call on a shared-cache graph: one buffer per layer is bound as both past and present,
    and the graph writes each step's keys and values into it. The binding of the buffers is kept while they stay
    the same list (they change when the prompt's cache is copied to n rows, or rows leave the batch). So are the
    inputs and the logits buffer while the step's shape stays the same: a decoding step only writes its token ids
    and positions into the bound arrays. With `top` > 0 a call returns each row's `top` largest logits and their ids
    (the graph's TopK) instead of the logits. What a call returns is overwritten by the next call."""

    def __init__(self, engine: Engine, top: int = 0) -> None:
        self.engine = engine
        self.top = top
        self.binding = engine.session.io_binding()
        self.bound: list | None = None
        self.feeds: dict[str, np.ndarray] = {}  # bound by pointer: alive and in place while bound
        self.shape: tuple[int, int] | None = None  # the (B, S) the feeds are bound for
        self.logits: np.ndarray | None = None
        self.best: tuple[np.ndarray, np.ndarray] | None = None  # top_logits and top_ids, when top

    def forward(self, ids: np.ndarray, past: list, past_length: int
                ) -> tuple[np.ndarray | tuple[np.ndarray, np.ndarray], list]:
        """One run: the last position's logits (B, V), or with `top` its (values, ids) (B, top) each; the cache."""
        spec, binding = self.engine.spec, self.binding
        if past is not self.bound:
            for past_name, present_name, buffer in zip(spec.past_names, spec.present_names, past):
                binding.bind_input(past_name, "cpu", 0, buffer.dtype.type, list(buffer.shape), buffer.ctypes.data)
                binding.bind_output(present_name, "cpu", 0, buffer.dtype.type, list(buffer.shape),
                                    buffer.ctypes.data)
            self.bound = past
        if ids.shape == self.shape and not spec.has_attention_mask:  # (a mask grows every step)
            self._update(ids, past_length)
        else:
            self._bind(ids, past_length)
        self.engine.session.run_with_iobinding(binding)
        if self.best is not None:
            best_values, best_ids = self.best
            return (best_values[:, -1, :], best_ids[:, -1, :]), past
        logits = self.logits if self.logits is not None else binding.get_outputs()[0].numpy()
        return logits[:, -1, :].astype(np.float32, copy=False), past

    def _bind(self, ids: np.ndarray, past_length: int) -> None:
        spec, binding = self.engine.spec, self.binding
        self.feeds = last_logits_only(spec, step_feeds(spec, ids, past_length), ids.shape[1])
        if self.top:
            self.feeds["top_k"][...] = self.top
        for name, value in self.feeds.items():
            binding.bind_cpu_input(name, value)
        self.shape = ids.shape
        rows = 1 if "logits_start" in self.feeds else ids.shape[1]
        if self.top:  # the best values and ids only (a screened graph does not compute every logit)
            shape = (ids.shape[0], rows, self.top)
            self.best = (self._bind_output("top_logits", shape, spec.cache_dtype),
                         self._bind_output("top_ids", shape, np.int64))
        elif spec.vocab_size is not None:  # written straight into an array of ours
            self.logits = self._bind_output("logits", (ids.shape[0], rows, spec.vocab_size), spec.cache_dtype)
        else:
            self.logits = None
            binding.bind_output("logits", "cpu")

    def _bind_output(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        array = np.empty(shape, dtype=dtype)
        self.binding.bind_output(name, "cpu", 0, array.dtype.type, list(shape), array.ctypes.data)
        return array

    def _update(self, ids: np.ndarray, past_length: int) -> None:
        """What step_feeds would give for this step, written into the bound arrays (same shapes)."""
        feeds, new = self.feeds, ids.shape[1]
        feeds["input_ids"][...] = ids
        if "position_ids" in feeds:
            feeds["position_ids"][...] = np.arange(past_length, past_length + new)
        if "seqlens_k" in feeds:
            feeds["seqlens_k"][...] = past_length + new - 1
            feeds["total_sequence_length"][...] = past_length + new

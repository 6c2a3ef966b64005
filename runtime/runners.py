"""The three ways one generate call runs the graph, behind one interface (`Runner`): plain numpy feeds (any graph),
in place on the CPU (fused graphs), and IO-bound on a device (CUDA). The engine's decode loop drives any of them."""

from __future__ import annotations

from typing import Union

import numpy as np
import onnxruntime as ort

from .contract import ATTENTION_MASK, LOGITS_START, TOP_IDS, TOP_K, TOP_LOGITS
from .graph import GraphSpec, empty_past, feeds_for, run_plain

Scores = Union[np.ndarray, tuple[np.ndarray, np.ndarray]]  # a step's last logits (B, V), or (values, ids) (B, top)


def leave(buffers: list[np.ndarray], keep: np.ndarray, length: int) -> list[np.ndarray]:
    """Shared-cache buffers without the rows not in `keep`: the kept rows move up, in order, within the same buffers
    (only their first `length` positions hold anything), and the buffers' first rows are the new ones. Only the rows
    after the first one leaving are copied."""
    kept = np.flatnonzero(keep)
    moved = np.flatnonzero(kept != np.arange(len(kept)))  # slots that take a later row
    if len(moved):
        for buffer in buffers:
            buffer[moved, :, :length] = buffer[kept[moved], :, :length]
    return [buffer[:len(kept)] for buffer in buffers]


def bind_array(binding, name: str, array: np.ndarray) -> None:
    """Bind a host array as an input by its memory: it must stay alive, unchanged unless on purpose, until the run.
    (bind_cpu_input cannot bind a fused graph's optional inputs, which onnxruntime keeps apart from the others.)"""
    if not array.flags.c_contiguous:
        raise ValueError(f"{name}: only a contiguous array can be bound by its memory")
    binding.bind_input(name, "cpu", 0, array.dtype.type, list(array.shape), array.ctypes.data)


def rows_of(scores: Scores, index: np.ndarray) -> Scores:
    """The rows `index` (a bool mask or row numbers) of a step's logits, or of each of its (values, ids)."""
    if isinstance(scores, tuple):
        return tuple(part[index] for part in scores)
    return scores[index]


class Runner:
    """How one generate call runs the graph: `prefill` the prompt for n rows, then one `step` per token; `keep`
    drops finished rows (when `drops_rows`). What a call returns may be overwritten by the next call."""

    drops_rows = True

    def prefill(self, prompt: np.ndarray, n: int, capacity: int) -> Scores:
        raise NotImplementedError

    def step(self, tokens: np.ndarray, past_length: int) -> Scores:
        raise NotImplementedError

    def keep(self, mask: np.ndarray, past_length: int) -> None:
        raise NotImplementedError

    @staticmethod
    def vocab(scores: Scores) -> int:
        return scores.shape[-1]


class SessionRunner(Runner):
    """Plain numpy feeds and outputs (any Optimum graph): the cache is the last run's present, copied per row."""

    def __init__(self, session: ort.InferenceSession, spec: GraphSpec) -> None:
        self.session, self.spec = session, spec
        self.past: list[np.ndarray] = []

    def prefill(self, prompt: np.ndarray, n: int, capacity: int) -> Scores:
        logits, self.past = run_plain(self.session, self.spec, prompt[None, :], empty_past(self.spec, 1), 0)
        if n > 1:  # (n, kv, T, hd): the prompt was run once
            logits = np.repeat(logits, n, axis=0)
            self.past = [np.repeat(p, n, axis=0) for p in self.past]
        return logits

    def step(self, tokens: np.ndarray, past_length: int) -> Scores:
        logits, self.past = run_plain(self.session, self.spec, tokens[:, None], self.past, past_length)
        return logits

    def keep(self, mask: np.ndarray, past_length: int) -> None:
        self.past = [p[mask] for p in self.past]


class InPlaceRunner(Runner):
    """A fused graph on the CPU: one buffer per layer, for every position the call will cache, is bound as both past
    and present, and the graph writes each step's keys and values into it. The bindings of the buffers, the inputs
    and the outputs are kept while their shapes stay the same: a decoding step writes its token ids and positions
    into the bound arrays and binds the attention mask (a view of one buffer of ones). With `top` > 0 a step gives
    each row's `top` largest logits and their ids (the graph's TopK) instead of the logits."""

    def __init__(self, session: ort.InferenceSession, spec: GraphSpec, top: int) -> None:
        self.session, self.spec = session, spec
        self.top = top
        self.binding = session.io_binding()
        self.past: list[np.ndarray] = []
        self.feeds: dict[str, np.ndarray] = {}  # bound by pointer: alive and in place while bound
        self.shape: tuple[int, int] | None = None  # the (B, S) the feeds are bound for
        self.ones = np.ones(0, dtype=np.int64)  # the attention masks' memory (contract: only sums and length count)
        self.out: Scores | None = None  # the bound output arrays: logits (B, 1, V), or top (values, ids)

    def prefill(self, prompt: np.ndarray, n: int, capacity: int) -> Scores:
        # The n rows' buffers, for every position ever cached; the prompt runs once, into row 0's (a contiguous
        # view), and only its positions are copied to the other rows.
        self.ones = np.ones(n * (capacity + 1), dtype=np.int64)
        buffers = empty_past(self.spec, n, capacity)
        self._bind_cache([b[:1] for b in buffers])
        scores = self._run(prompt[None, :], 0)  # (1, V), or (1, top) values and ids
        self._bind_cache(buffers)
        if n > 1:
            scores = rows_of(scores, np.zeros(n, dtype=np.intp))
            for buffer in buffers:
                buffer[1:, :, :len(prompt)] = buffer[:1, :, :len(prompt)]
        return scores

    def step(self, tokens: np.ndarray, past_length: int) -> Scores:
        return self._run(tokens[:, None], past_length)

    def keep(self, mask: np.ndarray, past_length: int) -> None:
        self._bind_cache(leave(self.past, mask, past_length))

    def _bind_cache(self, past: list[np.ndarray]) -> None:
        spec, binding = self.spec, self.binding
        for past_name, present_name, buffer in zip(spec.past_names, spec.present_names, past):
            binding.bind_input(past_name, "cpu", 0, buffer.dtype.type, list(buffer.shape), buffer.ctypes.data)
            binding.bind_output(present_name, "cpu", 0, buffer.dtype.type, list(buffer.shape), buffer.ctypes.data)
        self.past = past

    def _run(self, ids: np.ndarray, past_length: int) -> Scores:
        if ids.shape == self.shape:
            self._update(ids, past_length)
        else:
            self._bind(ids, past_length)
        if self.spec.has_attention_mask:
            batch, length = ids.shape[0], past_length + ids.shape[1]
            bind_array(self.binding, ATTENTION_MASK, self.ones[:batch * length].reshape(batch, length))
        self.session.run_with_iobinding(self.binding)
        if isinstance(self.out, tuple):
            values, best = self.out
            return values[:, -1, :], best[:, -1, :]
        logits = self.out if self.out is not None else self.binding.get_outputs()[0].numpy()
        return logits[:, -1, :].astype(np.float32, copy=False)

    def _bind(self, ids: np.ndarray, past_length: int) -> None:
        spec, binding = self.spec, self.binding
        self.feeds = feeds_for(spec, ids, past_length)
        self.feeds.pop(ATTENTION_MASK, None)  # bound at every run
        if self.top:
            self.feeds[TOP_K][...] = self.top
        for name, value in self.feeds.items():
            bind_array(binding, name, value)
        self.shape = ids.shape
        rows = 1 if LOGITS_START in self.feeds else ids.shape[1]
        if self.top:  # the best values and ids only
            shape = (ids.shape[0], rows, self.top)
            self.out = (self._bind_output(TOP_LOGITS, shape, spec.cache_dtype),
                        self._bind_output(TOP_IDS, shape, np.int64))
        elif spec.vocab_size is not None:  # written straight into an array of ours
            self.out = self._bind_output("logits", (ids.shape[0], rows, spec.vocab_size), spec.cache_dtype)
        else:
            self.out = None
            binding.bind_output("logits", "cpu")

    def _bind_output(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        array = np.empty(shape, dtype=dtype)
        self.binding.bind_output(name, "cpu", 0, array.dtype.type, list(shape), array.ctypes.data)
        return array

    def _update(self, ids: np.ndarray, past_length: int) -> None:
        """What the feeds would be for this step, written into the bound arrays (same shapes)."""
        feeds, new = self.feeds, ids.shape[1]
        feeds["input_ids"][...] = ids
        if "position_ids" in feeds:
            feeds["position_ids"][...] = np.arange(past_length, past_length + new)


class DeviceRunner(Runner):
    """IO binding on a device (CUDA): the cache stays where the session put it between steps, and cannot be copied
    row-wise there, so the prompt runs as n rows at once and finished rows stay in the batch. Sampling runs on the
    host: it gets the logits, or with `top` only the graph's best `top` of each row (the logits stay on the
    device)."""

    drops_rows = False

    def __init__(self, session: ort.InferenceSession, spec: GraphSpec, top: int, device: str) -> None:
        self.session, self.spec = session, spec
        self.top = top
        self.device = device
        self.past: list = []

    def prefill(self, prompt: np.ndarray, n: int, capacity: int) -> Scores:
        return self._run(np.repeat(prompt[None, :], n, axis=0), empty_past(self.spec, n), 0)

    def step(self, tokens: np.ndarray, past_length: int) -> Scores:
        return self._run(tokens[:, None], self.past, past_length)

    def _run(self, ids: np.ndarray, past: list, past_length: int) -> Scores:
        binding = self.session.io_binding()
        feeds = feeds_for(self.spec, ids, past_length)
        if self.top:
            feeds[TOP_K] = np.array([self.top], dtype=np.int64)
        for name, value in feeds.items():  # alive until the run below
            bind_array(binding, name, value)
        for name, value in zip(self.spec.past_names, past):
            if isinstance(value, np.ndarray):
                bind_array(binding, name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        if not self.top:  # with top, the logits stay in the graph
            binding.bind_output("logits", "cpu")
        for name in self.spec.present_names:
            binding.bind_output(name, self.device)
        if self.top:
            binding.bind_output(TOP_LOGITS, "cpu")
            binding.bind_output(TOP_IDS, "cpu")
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if self.top:
            values, best = outputs[-2:]
            self.past = outputs[:-2]
            return values.numpy()[:, -1, :], best.numpy()[:, -1, :]
        logits, *self.past = outputs
        return logits.numpy()[:, -1, :].astype(np.float32, copy=False)

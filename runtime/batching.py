"""Continuous batching: the rows of many requests decode as one batch, each request with its own prompt, sampling
options, seed and cache position; a request's rows join the running batch at the next step and leave when done.

`Scheduler` owns a Generator's engine in one thread. Callers `submit` a `Job` and read its events (thread-safe
callbacks). With `batching=False`, or on a graph that cannot share its cache across rows at different positions (not
a tweetgen fused graph on the CPU), jobs run one at a time through the Generator's own decode loop.

Why rows at different positions can share a batch: a fused graph's GroupQueryAttention reads each row's length from
its attention-mask row sum (rows padded on the right; `tweetgen.trainer.export.fuse`), GPT-2 takes each row's
position ids, and the cache is one buffer per layer with a slot per row, written in place. A joining request's
prompt runs into its first slot (a contiguous view of the buffers), and is copied to its other n - 1 slots; one-row
requests that join at the same step with prompts of the same length run theirs together, a slot each. As in Engine,
a step gives each row's best tokens (the graph's TopK) instead of its logits when every running request chooses
among its top-k or greedily without a repetition penalty; the logits otherwise.
Each request draws from its own random generator in the order the Generator would (its running rows, in row order,
at every step), so a request's text does not depend on the others in the batch, up to the graph's numerics (a
quantized graph scales activations over the whole batch).
"""

from __future__ import annotations

import logging
import mmap
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .contract import ATTENTION_MASK, TOP_IDS, TOP_K, TOP_LOGITS
from .engine import MAX_CACHE_BYTES, Engine
from .graph import step_feeds
from .request import Request
from .runners import Scores, bind_array, leave, rows_of
from .text import TweetText

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The scheduler's queue of waiting requests is full: try again later."""


@dataclass
class Job:
    """One request's n rows. `emit(kind, *args)` is called from the scheduler thread: ("delta", i, text) for text
    of row i that can no longer change (only when `deltas`), ("done", i, text, finish_reason, tokens) when row i
    ends, ("end",) once every row has ended, ("error", message) when the job failed (no "end" then)."""

    ids: list[int]  # the prompt's tokens
    n: int
    request: Request
    held: int  # trailing spaces of the prompt left out of ids (see Generator.encode_prompt)
    emit: Callable[..., None]
    cancelled: bool = False  # set by the caller (a client went away): the rows leave at the next step
    deltas: bool = True  # emit "delta" events; off for a caller that reads only the ended rows' texts
    # the scheduler's state of the job
    texts: list[TweetText] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # new tokens of each row, end-of-text included
    ended: list[bool] = field(default_factory=list)
    rng: np.random.Generator | None = None
    seen: np.ndarray | None = None
    step: int = 0  # how many tokens each running row has drawn


class _Draws:
    """Random numbers for the rows of several jobs that choose together: `random(n)` gives each job's share from
    its own generator, in row order, as a draw for that job alone would."""

    def __init__(self, parts: list[tuple[np.random.Generator, int]]) -> None:
        self.parts = parts

    def random(self, count: int) -> np.ndarray:
        if count != sum(n for _, n in self.parts):
            raise ValueError(f"{count} draws asked of jobs with {sum(n for _, n in self.parts)} rows")
        return np.concatenate([rng.random(n) for rng, n in self.parts])


PREFILL_TOKENS = 2048  # the most prompt tokens that joining prompts run together


def _prefill_groups(jobs: list[Job]) -> list[list[Job]]:
    """The admitted jobs in prefill groups, in order of their first job: one-row jobs whose prompts have the same
    length run together (up to PREFILL_TOKENS tokens), a row each; a job of n > 1 rows runs its prompt alone."""
    groups: list[list[Job]] = []
    open_groups: dict[int, list[Job]] = {}  # prompt length -> the group still taking jobs
    for job in jobs:
        size = len(job.ids)
        group = open_groups.get(size) if job.n == 1 else None
        if group is None or (len(group) + 1) * size > PREFILL_TOKENS:
            group = []
            groups.append(group)
            if job.n == 1:
                open_groups[size] = group
        group.append(job)
    return groups


def _merge(scores: Scores, fresh: Scores, vocab: int | None) -> Scores:
    """The running rows' scores, then a joining job's: logits, or the graph's best values and ids (each row has as
    many as its job needs; the narrower side is padded with -inf and id -1). When one side is logits, the other's
    best tokens become logits (-inf elsewhere), which rank and draw as they did."""
    if isinstance(scores, tuple) != isinstance(fresh, tuple):
        scores, fresh = (_as_logits(part, vocab) if isinstance(part, tuple) else part for part in (scores, fresh))
    if not isinstance(scores, tuple):
        return np.concatenate([scores, fresh])
    width = max(scores[0].shape[1], fresh[0].shape[1])

    def padded(array: np.ndarray, fill: float) -> np.ndarray:
        extra = width - array.shape[1]
        return array if not extra else np.pad(array, ((0, 0), (0, extra)), constant_values=fill)

    return (np.concatenate([padded(scores[0], -np.inf), padded(fresh[0], -np.inf)]),
            np.concatenate([padded(scores[1], -1), padded(fresh[1], -1)]))


def _as_logits(best: tuple[np.ndarray, np.ndarray], vocab: int | None) -> np.ndarray:
    values, ids = best
    logits = np.full((len(ids), vocab), -np.inf, dtype=np.float32)
    real = ids >= 0  # not padding
    logits[np.nonzero(real)[0], ids[real]] = values[real]
    return logits


def _small_page_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Zeros in anonymous memory of 4 KB pages. NumPy advises huge pages for large arrays; in a slot buffer a row
    uses a few KB at the start of each head's context-long stretch, and a 2 MB page made every such write resident
    for the whole context (GPT-2 124M: ~75 MB a row instead of ~1 MB; a server at 32 rows held 2.6 GB)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    memory = mmap.mmap(-1, max(size, 1))
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        memory.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(memory, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


class SlotBatch:
    """The KV cache of up to `rows` rows, each at its own position, on a fused graph on the CPU. Running rows are
    the first `len(self.lengths)` slots, in batch order; a row that leaves moves the later ones up."""

    def __init__(self, engine: Engine, rows: int) -> None:
        if not engine.shared_cache:
            raise ValueError("rows at different positions need a tweetgen fused graph on the CPU")
        spec = engine.spec
        self.engine, self.spec = engine, spec
        self.capacity = engine.context_length
        per_row = self.capacity * len(spec.past_names) * spec.kv_heads * spec.head_dim \
            * np.dtype(spec.cache_dtype).itemsize
        self.rows = max(1, min(rows, MAX_CACHE_BYTES // per_row))
        self.buffers = [_small_page_zeros((self.rows, spec.kv_heads, self.capacity, spec.head_dim), spec.cache_dtype)
                        for _ in spec.past_names]  # (rows, kv, capacity, hd) each
        self.lengths = np.zeros(0, dtype=np.int64)  # (B,) tokens cached for each running row
        self.session = engine.session
        self._binding = None  # the decoding steps' IO binding, kept while the batch has `_bound` rows
        self._bound = -1
        self._feeds: dict[str, np.ndarray] = {}  # bound by pointer: alive and in place while bound
        self._out: np.ndarray | tuple[np.ndarray, np.ndarray] | None = None  # bound: logits (B, 1, V) or top
        self._top = 0  # the bound steps' top (0: logits)
        self._mask = np.zeros((0, 0), dtype=np.int64)

    @property
    def free(self) -> int:
        return self.rows - len(self.lengths)

    def join(self, prompts: np.ndarray, n: int = 1, top: int = 0) -> Scores:
        """Run prompts of one length (k, S) in one run into the next k free slots, a row each; or one prompt (1, S)
        into the next slot, its cache copied to n - 1 more. The scores of the next token of each new row: logits
        (rows, V), or with `top` the graph's best `top` values and ids, (rows, top) each."""
        start, (count, size) = len(self.lengths), prompts.shape
        if count > 1 and n > 1:
            raise ValueError("several prompts join a row each")
        if max(count, n) > self.free:
            raise ValueError(f"{max(count, n)} rows do not fit the {self.free} free slots")
        scores = self._run(prompts, [b[start:start + count] for b in self.buffers], np.zeros(count, np.int64), top)
        for buffer in self.buffers:
            buffer[start + 1:start + n, :, :size] = buffer[start:start + 1, :, :size]
        self.lengths = np.concatenate([self.lengths, np.full(max(count, n), size, dtype=np.int64)])
        self._bound = -1
        return scores if n == 1 else rows_of(scores, np.zeros(n, dtype=np.intp))

    def keep(self, mask: np.ndarray) -> None:
        """Only the running rows in `mask` stay; the others' slots are free."""
        if mask.all():
            return
        count = len(self.lengths)
        leave([b[:count] for b in self.buffers], mask, int(self.lengths.max()))
        self.lengths = self.lengths[mask]
        self._bound = -1

    def step(self, tokens: np.ndarray, top: int = 0) -> Scores:
        """Feed each running row its token; the scores of each row's next token (views that the next step
        overwrites): (B, V) logits, or with `top` the graph's best `top` values and ids, (B, top) each. The bindings
        are kept while the batch keeps its size and `top`; only the attention mask, whose length grows, is bound at
        every step."""
        count, spec = len(self.lengths), self.spec
        top = top if spec.has_top_k else 0
        if self._bound != count or self._top != top or self._out is None and spec.vocab_size is not None:
            self._bind_step(count, top)
        binding, feeds = self._binding, self._feeds
        feeds["input_ids"][:, 0] = tokens
        if "position_ids" in feeds:
            feeds["position_ids"][:, 0] = self.lengths
        if spec.has_attention_mask:
            total = int(self.lengths.max()) + 1
            self._mask = (np.arange(total)[None, :] <= self.lengths[:, None]).astype(np.int64)
            bind_array(binding, ATTENTION_MASK, self._mask)
        self.session.run_with_iobinding(binding)
        self.lengths = self.lengths + 1
        if isinstance(self._out, tuple):
            return self._out[0][:, -1, :], self._out[1][:, -1, :]
        logits = self._out if self._out is not None else binding.get_outputs()[0].numpy()
        return logits[:, -1, :].astype(np.float32, copy=False)

    def _bind_step(self, count: int, top: int) -> None:
        spec = self.spec
        binding = self.session.io_binding()
        feeds = step_feeds(spec, np.zeros((count, 1), dtype=np.int64), 0)
        feeds.pop(ATTENTION_MASK, None)
        if top:
            feeds[TOP_K][...] = top
        for name, value in feeds.items():
            bind_array(binding, name, value)
        if top:  # the best values and ids only, written straight into arrays of ours
            self._out = (np.empty((count, 1, top), dtype=spec.cache_dtype), np.empty((count, 1, top), dtype=np.int64))
            for name, array in zip((TOP_LOGITS, TOP_IDS), self._out):
                binding.bind_output(name, "cpu", 0, array.dtype.type, list(array.shape), array.ctypes.data)
        elif spec.vocab_size is not None:  # written straight into an array of ours
            self._out = np.empty((count, 1, spec.vocab_size), dtype=spec.cache_dtype)
            binding.bind_output("logits", "cpu", 0, self._out.dtype.type, list(self._out.shape),
                                self._out.ctypes.data)
        else:
            self._out = None
            binding.bind_output("logits", "cpu")
        for past_name, present_name, buffer in zip(spec.past_names, spec.present_names, self.buffers):
            view = buffer[:count]
            binding.bind_input(past_name, "cpu", 0, view.dtype.type, list(view.shape), view.ctypes.data)
            binding.bind_output(present_name, "cpu", 0, view.dtype.type, list(view.shape), view.ctypes.data)
        self._binding, self._feeds, self._bound, self._top = binding, feeds, count, top

    def _run(self, ids: np.ndarray, past: list[np.ndarray], lengths: np.ndarray, top: int = 0) -> Scores:
        """One run of ids (B, S) after each row's `lengths` cached tokens, into the buffers `past` (a prompt); the
        last position's logits, or with `top` its best `top` values and ids."""
        spec, binding = self.spec, self.session.io_binding()
        batch, new = ids.shape
        feeds = step_feeds(spec, ids, 0)
        total = int(lengths.max()) + new
        if "position_ids" in feeds:
            feeds["position_ids"] = (lengths[:, None] + np.arange(new)[None, :]).astype(np.int64)
        if spec.has_attention_mask:  # right-padded: each row's own length (only the row sums count)
            feeds[ATTENTION_MASK] = (np.arange(total)[None, :] < (lengths + new)[:, None]).astype(np.int64)
        if spec.has_logits_start:
            feeds["logits_start"] = np.array([new - 1], dtype=np.int64)
        top = top if spec.has_top_k else 0
        if top:
            feeds[TOP_K] = np.array([top], dtype=np.int64)
        for name, value in feeds.items():
            bind_array(binding, name, np.ascontiguousarray(value))
        # first: get_outputs() gives the outputs in the order bound
        for name in (TOP_LOGITS, TOP_IDS) if top else ("logits",):
            binding.bind_output(name, "cpu")
        for past_name, present_name, buffer in zip(spec.past_names, spec.present_names, past):
            binding.bind_input(past_name, "cpu", 0, buffer.dtype.type, list(buffer.shape), buffer.ctypes.data)
            binding.bind_output(present_name, "cpu", 0, buffer.dtype.type, list(buffer.shape), buffer.ctypes.data)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if top:
            return outputs[0].numpy()[:, -1, :], outputs[1].numpy()[:, -1, :]
        return outputs[0].numpy()[:, -1, :].astype(np.float32, copy=False)


class Scheduler:
    """One thread that owns the engine and decodes the jobs submitted to it (see the module docstring)."""

    def __init__(self, generator, *, batching: bool = True, max_rows: int = 64, max_queue: int = 64) -> None:
        self.generator = generator
        self.engine: Engine = generator.engine
        self.batching = batching and self.engine.shared_cache
        self.slots = SlotBatch(self.engine, max_rows) if self.batching else None
        self.max_rows = self.slots.rows if self.slots else max_rows
        self.max_queue = max_queue
        self._waiting: deque[Job] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="tweetgen-scheduler", daemon=True)
        self.running_rows = 0  # rows in the batch after the last step
        self.cancelled_rows = 0  # rows that left because their client went away
        self.steps = 0  # decoding steps run (for tests and the page's numbers)
        self.peak_rows = 0  # the most rows decoded together in one step

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def submit(self, job: Job) -> None:
        """Queue a job; QueueFull when max_queue jobs already wait, ValueError when its rows can never fit."""
        if job.n > self.max_rows:
            raise ValueError(f"n={job.n} rows do not fit a batch of at most {self.max_rows} rows")
        with self._wake:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting, the most this server queues")
            self._waiting.append(job)
            self._wake.notify()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no row is running and no job waits (False if `timeout` seconds pass first)."""
        with self._wake:
            return self._wake.wait_for(lambda: not self.running_rows and not self._waiting, timeout)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _next(self, block: bool) -> Job | None:
        with self._wake:
            while block and not self._waiting and not self._stopping:
                self._wake.wait()  # idle: no spinning
            return None if self._stopping or not self._waiting else self._waiting[0]

    def _loop(self) -> None:
        running: list[Job] = []  # jobs with rows in the batch
        rows: list[tuple[Job, int]] = []  # (job, row of the job) of each running row, in batch order
        scores = np.zeros((0, 0), dtype=np.float32)
        while True:
            job = self._next(block=not rows)
            if self._stopping:
                for j in running:
                    j.emit("error", "the server is shutting down")
                return
            # admit waiting jobs while their rows fit (one at a time without batching)
            admitted: list[Job] = []
            reserved = 0  # rows of the admitted jobs, not yet in the batch
            while job is not None and (self.batching and job.n <= self.slots.free - reserved
                                       or not self.batching and not rows):
                with self._wake:
                    self._waiting.popleft()
                    self.running_rows += job.n  # counted from here: wait_idle never sees it in between
                if job.cancelled or not self.batching:
                    if not job.cancelled:
                        self._run_alone(job)
                    with self._wake:
                        self.running_rows = len(rows) + reserved
                        self._wake.notify_all()
                else:
                    admitted.append(job)
                    reserved += job.n
                job = self._next(block=False)
            for group in _prefill_groups(admitted):  # the prompts of a group run together
                reserved -= sum(j.n for j in group)
                try:
                    fresh = self._admit(group)
                except Exception as exc:  # noqa: BLE001 (a job's failure is its own; the loop goes on)
                    log.exception("a request failed to start")
                    for j in group:
                        j.emit("error", f"the model could not run this prompt: {exc}")
                    with self._wake:
                        self.running_rows = len(rows) + reserved
                        self._wake.notify_all()
                else:
                    scores = fresh if not rows else _merge(scores, fresh, self.engine.spec.vocab_size)
                    running += group
                    rows += [(j, i) for j in group for i in range(j.n)]
            if not rows:
                continue
            try:
                tokens = self._choose(running, rows, scores)
                keep = self._follow(rows, tokens)
                self.slots.keep(keep)
                rows = [r for r, k in zip(rows, keep) if k]
                for j in [j for j in running if all(j.ended)]:
                    running.remove(j)
                    if not j.cancelled:
                        j.emit("end")
                self.peak_rows = max(self.peak_rows, len(rows))
                if not rows:
                    with self._wake:
                        self.running_rows = 0
                        self._wake.notify_all()
                self.running_rows = len(rows)
                if rows:
                    scores = self.slots.step(tokens[keep], self._top(running))
                    self.steps += 1
            except Exception as exc:  # noqa: BLE001 (fail the running jobs, keep serving)
                log.exception("a decoding step failed")
                for j in running:
                    j.emit("error", f"the model failed while decoding: {exc}")
                running, rows = [], []
                self.slots.keep(np.zeros(len(self.slots.lengths), dtype=bool))
                with self._wake:
                    self.running_rows = 0
                    self._wake.notify_all()

    def _admit(self, group: list[Job]) -> Scores:
        """Start the jobs of a prefill group (_prefill_groups): their prompts run, their rows' first scores."""
        for job in group:
            request = job.request
            job.texts = [TweetText(self.generator.tokenizer, max_chars=request.max_chars,
                                   stop_at_newline=request.stop_at_newline, skip_spaces=job.held, stop=request.stop)
                         for _ in range(job.n)]
            job.tokens, job.ended = [0] * job.n, [False] * job.n
            job.rng = np.random.default_rng(request.seed)
        prompts = np.array([job.ids for job in group], dtype=np.int64)
        scores = self.slots.join(prompts, group[0].n, self._top(group))
        for job in group:
            if job.request.sampling.repetition_penalty != 1.0:  # (its scores are logits: _top)
                job.seen = np.zeros((job.n, scores.shape[-1]), dtype=bool)
                job.seen[:, job.ids] = True
        return scores

    def _top(self, jobs: list[Job]) -> int:
        """How many of each row's best tokens the graph gives for the next draw of `jobs` instead of the logits (0:
        the logits), as Engine does for one call: when every job chooses among its top-k (or greedy) without a
        repetition penalty; len(eos) more while a job may not end yet (its best without them are among them)."""
        vocab, eos = self.engine.spec.vocab_size, len(self.engine.eos_token_ids)
        if vocab is None:
            return 0
        need = 0
        for job in jobs:
            sampling = job.request.sampling
            if sampling.repetition_penalty != 1.0 or not (sampling.greedy or 0 < sampling.top_k < vocab):
                return 0
            need = max(need, (1 if sampling.greedy else sampling.top_k)
                       + (eos if job.step < job.request.min_new_tokens else 0))
        return need if need <= vocab else 0  # (not more than the graph has)

    def _choose(self, running: list[Job], rows: list[tuple[Job, int]], scores: np.ndarray) -> np.ndarray:
        """The next token of every running row: each job draws for its rows, in row order, from its own generator
        (what Engine's loop does for the job alone). Jobs whose choice is row by row (greedy, or top-k candidates,
        and no repetition penalty) and that share their sampling settings choose together, each row still with its
        own job's random numbers."""
        tokens = np.zeros(len(rows), dtype=np.int64)
        where: dict[int, list[int]] = {}
        for i, (job, _) in enumerate(rows):
            where.setdefault(id(job), []).append(i)
        groups: dict[object, list[Job]] = {}
        vocab = self.engine.spec.vocab_size or 0
        for job in running:
            sampling = job.request.sampling
            rowwise = job.seen is None and (sampling.greedy or 0 < sampling.top_k < vocab)
            groups.setdefault(sampling if rowwise else id(job), []).append(job)
        eos = len(self.engine.eos_token_ids)
        for jobs in groups.values():
            at = np.array([i for job in jobs for i in where[id(job)]])
            sampling = jobs[0].request.sampling
            group_scores = rows_of(scores, at)
            early = np.array([job.step < job.request.min_new_tokens for job in jobs for _ in where[id(job)]])
            top = 0
            if isinstance(group_scores, tuple):  # the graph's best tokens, ranked: each row's best k are drawn from
                top = 1 if sampling.greedy else sampling.top_k
                values, ids = (part[:, :top].copy() for part in group_scores)
                if eos and early.any():
                    values[early], ids[early] = self.engine.best_without_end(
                        group_scores[0][early], group_scores[1][early], top)
                group_scores = (values, ids)
            elif eos and early.any():
                group_scores = group_scores.copy()
                group_scores[early] = self.engine.forbid_end(group_scores[early])
            index = np.array([r for job in jobs for i in where[id(job)] for r in (rows[i][1],)])
            draws = jobs[0].rng if len(jobs) == 1 else _Draws([(job.rng, len(where[id(job)])) for job in jobs])
            tokens[at] = Engine._choose(group_scores, index, sampling, draws, jobs[0].seen, top)
            for job in jobs:
                if job.seen is not None:
                    job.seen[index, tokens[at]] = True
                job.step += 1
        return tokens

    def _follow(self, rows: list[tuple[Job, int]], tokens: np.ndarray) -> np.ndarray:
        """Give each row its token; (B,) which rows keep running."""
        keep = np.ones(len(rows), dtype=bool)
        eos = set(self.engine.eos_token_ids.tolist())
        for i, ((job, row), token) in enumerate(zip(rows, tokens.tolist())):
            text = job.texts[row]
            job.tokens[row] += 1
            if job.cancelled:
                keep[i] = False
                job.ended[row] = True
                self.cancelled_rows += 1
                continue
            reason = None
            if token in eos:
                text.finish()
                reason = "stop"
            else:
                text.add(token)
                if text.done:
                    reason = "stop" if text.stopped else "length"
                elif job.tokens[row] >= job.request.max_new_tokens:
                    reason = "length"
            if reason is None:
                if job.deltas:  # (release decodes the row's text so far: only for a caller that streams it)
                    piece = text.release()
                    if piece:
                        job.emit("delta", row, piece)
                continue
            text.finish()
            piece = text.release() if job.deltas else ""
            if piece:
                job.emit("delta", row, piece)
            keep[i] = False
            job.ended[row] = True
            job.emit("done", row, text.text, reason, job.tokens[row])
        return keep

    def _run_alone(self, job: Job) -> None:
        """A job through the Generator's own decode loop (no batching across requests)."""
        request, gen = job.request, self.generator
        try:
            texts = [TweetText(gen.tokenizer, max_chars=request.max_chars, stop_at_newline=request.stop_at_newline,
                               skip_spaces=job.held, stop=request.stop) for _ in range(job.n)]
            done = np.zeros(job.n, dtype=bool)
            counts = [0] * job.n
            eos_ended = [False] * job.n
            steps = self.engine.generate(job.ids, n=job.n, max_new_tokens=request.max_new_tokens,
                                         params=request.sampling, rng=np.random.default_rng(request.seed),
                                         done=done, min_new_tokens=request.min_new_tokens)
            for step in steps:
                self.steps += 1
                for row, token, ended in zip(step.rows.tolist(), step.tokens.tolist(), step.ended.tolist()):
                    counts[row] += 1
                    text = texts[row]
                    if ended:
                        text.finish()
                        eos_ended[row] = True
                    else:
                        text.add(token)
                        done[row] = text.done
                    piece = text.release() if job.deltas else ""
                    if piece:
                        job.emit("delta", row, piece)
                if job.cancelled:
                    return
            for row, text in enumerate(texts):
                text.finish()
                piece = text.release() if job.deltas else ""
                if piece:
                    job.emit("delta", row, piece)
                reason = "stop" if eos_ended[row] or text.stopped else "length"
                job.emit("done", row, text.text, reason, counts[row])
            job.emit("end")
        except Exception as exc:  # noqa: BLE001 (a job's failure is its own)
            log.exception("a request failed")
            job.emit("error", f"the model failed while decoding: {exc}")

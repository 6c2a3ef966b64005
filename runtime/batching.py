"""Continuous batching: the rows of many requests decode as one batch, each request with its own prompt, sampling
options, seed and cache position; a request's rows join the running batch at the next step and leave when done.

`Scheduler` owns a Generator's engine in one thread. Callers `submit` a `Job` and read its events (thread-safe
callbacks). With `batching=False`, or on a graph that cannot share its cache across rows at different positions (not
a tweetgen fused graph on the CPU), jobs run one at a time through the Generator's own decode loop.

Why rows at different positions can share a batch: a fused graph's GroupQueryAttention reads each row's length from
its attention-mask row sum (rows padded on the right; `tweetgen.trainer.export.fuse`), GPT-2 takes each row's
position ids, and the cache is one buffer per layer with a slot per row, written in place. A joining request's
prompt runs alone into its first slot (a contiguous view of the buffers), and is copied to its other n - 1 slots.
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

from .contract import ATTENTION_MASK
from .engine import MAX_CACHE_BYTES, Engine
from .graph import step_feeds
from .request import Request
from .runners import bind_array, leave
from .text import TweetText

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The scheduler's queue of waiting requests is full: try again later."""


@dataclass
class Job:
    """One request's n rows. `emit(kind, *args)` is called from the scheduler thread: ("delta", i, text) for text
    of row i that can no longer change, ("done", i, text, finish_reason, tokens) when row i ends, ("end",) once
    every row has ended, ("error", message) when the job failed (no "end" then)."""

    ids: list[int]  # the prompt's tokens
    n: int
    request: Request
    held: int  # trailing spaces of the prompt left out of ids (see Generator.encode_prompt)
    emit: Callable[..., None]
    cancelled: bool = False  # set by the caller (a client went away): the rows leave at the next step
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
        self._out: np.ndarray | None = None  # the bound logits (B, 1, V)
        self._mask = np.zeros((0, 0), dtype=np.int64)

    @property
    def free(self) -> int:
        return self.rows - len(self.lengths)

    def join(self, prompt: np.ndarray, n: int) -> np.ndarray:
        """Run a prompt into the next free slot and copy its cache to n - 1 more; (n, V) logits of its next token."""
        start = len(self.lengths)
        if n > self.free:
            raise ValueError(f"{n} rows do not fit the {self.free} free slots")
        size = len(prompt)
        logits = self._run(prompt[None, :], [b[start:start + 1] for b in self.buffers], np.array([0]))
        for buffer in self.buffers:
            buffer[start + 1:start + n, :, :size] = buffer[start:start + 1, :, :size]
        self.lengths = np.concatenate([self.lengths, np.full(n, size, dtype=np.int64)])
        self._bound = -1
        return np.repeat(logits, n, axis=0)

    def keep(self, mask: np.ndarray) -> None:
        """Only the running rows in `mask` stay; the others' slots are free."""
        if mask.all():
            return
        count = len(self.lengths)
        leave([b[:count] for b in self.buffers], mask, int(self.lengths.max()))
        self.lengths = self.lengths[mask]
        self._bound = -1

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed each running row its token; (B, V) logits of each row's next token (a view that the next step
        overwrites). The bindings are kept while the batch keeps its size; only the attention mask, whose length
        grows, is bound at every step."""
        count, spec = len(self.lengths), self.spec
        if self._bound != count or self._out is None and spec.vocab_size is not None:
            self._bind_step(count)
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
        logits = self._out if self._out is not None else binding.get_outputs()[0].numpy()
        return logits[:, -1, :].astype(np.float32, copy=False)

    def _bind_step(self, count: int) -> None:
        spec = self.spec
        binding = self.session.io_binding()
        feeds = step_feeds(spec, np.zeros((count, 1), dtype=np.int64), 0)
        feeds.pop(ATTENTION_MASK, None)
        for name, value in feeds.items():
            bind_array(binding, name, value)
        if spec.vocab_size is not None:  # written straight into an array of ours
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
        self._binding, self._feeds, self._bound = binding, feeds, count

    def _run(self, ids: np.ndarray, past: list[np.ndarray], lengths: np.ndarray) -> np.ndarray:
        """One run of ids (B, S) after each row's `lengths` cached tokens, into the buffers `past` (a prompt)."""
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
        for name, value in feeds.items():
            bind_array(binding, name, np.ascontiguousarray(value))
        binding.bind_output("logits", "cpu")  # first: get_outputs() gives the outputs in the order bound
        for past_name, present_name, buffer in zip(spec.past_names, spec.present_names, past):
            binding.bind_input(past_name, "cpu", 0, buffer.dtype.type, list(buffer.shape), buffer.ctypes.data)
            binding.bind_output(present_name, "cpu", 0, buffer.dtype.type, list(buffer.shape), buffer.ctypes.data)
        self.session.run_with_iobinding(binding)
        logits = binding.get_outputs()[0].numpy()
        return logits[:, -1, :].astype(np.float32, copy=False)


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
            while job is not None and (self.batching and job.n <= self.slots.free or not self.batching and not rows):
                with self._wake:
                    self._waiting.popleft()
                    self.running_rows += job.n  # counted from here: wait_idle never sees it in between
                if job.cancelled or not self.batching:
                    if not job.cancelled:
                        self._run_alone(job)
                    with self._wake:
                        self.running_rows = len(rows)
                        self._wake.notify_all()
                    job = self._next(block=False)
                    continue
                try:
                    fresh = self._admit(job)
                except Exception as exc:  # noqa: BLE001 (a job's failure is its own; the loop goes on)
                    log.exception("a request failed to start")
                    job.emit("error", f"the model could not run this prompt: {exc}")
                    with self._wake:
                        self.running_rows = len(rows)
                        self._wake.notify_all()
                else:
                    scores = fresh if not rows else np.concatenate([scores, fresh])
                    running.append(job)
                    rows += [(job, i) for i in range(job.n)]
                job = self._next(block=False)
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
                    scores = self.slots.step(tokens[keep])
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

    def _admit(self, job: Job) -> np.ndarray:
        request = job.request
        job.texts = [TweetText(self.generator.tokenizer, max_chars=request.max_chars,
                               stop_at_newline=request.stop_at_newline, skip_spaces=job.held, stop=request.stop)
                     for _ in range(job.n)]
        job.tokens, job.ended = [0] * job.n, [False] * job.n
        job.rng = np.random.default_rng(request.seed)
        prompt = np.asarray(job.ids, dtype=np.int64)
        scores = self.slots.join(prompt, job.n)
        if request.sampling.repetition_penalty != 1.0:
            job.seen = np.zeros((job.n, scores.shape[-1]), dtype=bool)
            job.seen[:, prompt] = True
        return scores

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
        for job in running:
            sampling = job.request.sampling
            rowwise = job.seen is None and (sampling.greedy or 0 < sampling.top_k < scores.shape[-1])
            groups.setdefault(sampling if rowwise else id(job), []).append(job)
        eos = len(self.engine.eos_token_ids)
        for jobs in groups.values():
            at = np.array([i for job in jobs for i in where[id(job)]])
            group_scores = scores[at]
            early = np.array([job.step < job.request.min_new_tokens for job in jobs for _ in where[id(job)]])
            if eos and early.any():
                group_scores = group_scores.copy()
                group_scores[early] = self.engine.forbid_end(group_scores[early])
            index = np.array([r for job in jobs for i in where[id(job)] for r in (rows[i][1],)])
            draws = jobs[0].rng if len(jobs) == 1 else _Draws([(job.rng, len(where[id(job)])) for job in jobs])
            tokens[at] = Engine._choose(group_scores, index, jobs[0].request.sampling, draws, jobs[0].seen, 0)
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
                piece = text.release()
                if piece:
                    job.emit("delta", row, piece)
                continue
            text.finish()
            piece = text.release()
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
                    piece = text.release()
                    if piece:
                        job.emit("delta", row, piece)
                if job.cancelled:
                    return
            for row, text in enumerate(texts):
                text.finish()
                piece = text.release()
                if piece:
                    job.emit("delta", row, piece)
                reason = "stop" if eos_ended[row] or text.stopped else "length"
                job.emit("done", row, text.text, reason, counts[row])
            job.emit("end")
        except Exception as exc:  # noqa: BLE001 (a job's failure is its own)
            log.exception("a request failed")
            job.emit("error", f"the model failed while decoding: {exc}")

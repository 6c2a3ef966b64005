"""`Generator`: a loaded model folder that writes tweets. The public face of the runtime."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import nullcontext, redirect_stdout
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from .copies import FILE as COPY_INDEX_FILE
from .copies import CopyIndex
from .engine import MAX_SAMPLES, Engine, Step, read_graph_spec
from .errors import ModelFolderError, TweetgenError
from .folder import DEVICES, VARIANTS, ModelFolder, read_folder
from .hugepages import AUTO_MIN_BYTES, huge_page_heap, return_free_memory
from .lookups import read_rows_on_demand
from .request import Request
from .text import TweetText

log = logging.getLogger(__name__)
COPY_ATTEMPTS = 5  # generate: draws in all (the first included) for a text that copies a training tweet
MAX_THREADS = 4 * (os.cpu_count() or 1)  # more onnxruntime threads than this only fight over the cores


def cuda_available() -> bool:
    """True when the installed onnxruntime can run on an NVIDIA GPU (the onnxruntime-gpu package)."""
    return "CUDAExecutionProvider" in ort.get_available_providers()


class Generator:
    """A model folder loaded for generation. Holds only immutable state: one instance serves many threads."""

    def __init__(self, folder: ModelFolder, engine: Engine, tokenizer: Tokenizer, model_path: Path,
                 copy_index: CopyIndex | None = None) -> None:
        self.folder = folder
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_path = model_path
        self.copy_index = copy_index  # the training tweets' 8-word windows, when the folder ships copies.bin
        # characters of the longest token (byte-level BPE shows each byte as one character): bounds a prompt's tokens
        self._longest_token = max((len(t) for t in tokenizer.get_vocab()), default=1) + 1

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "auto", precision: str = "auto",
             threads: int | None = None, huge_pages: bool | None = False) -> Generator:
        """Load an exported model folder. Never touches the network.

        Args:
            path: the folder (tweetgen export, or a plain Optimum export with model.onnx, tokenizer.json, config.json).
            device: "cpu", "cuda", or "auto" (cuda when onnxruntime-gpu sees a GPU and the folder has a float
                variant for it: an int8 graph is built for the CPU, whose quantized operators CUDA lacks).
            precision: "auto" (int8 on CPU, fp16 on CUDA, when the folder has them; else fp32), "fp32", "int8", "fp16".
            threads: CPU threads for onnxruntime (None: one per physical core).
            huge_pages: put a CPU session's weights on 2 MB pages where the system allows (Linux, glibc): faster
                decoding of large models, at the cost of changing glibc's malloc settings for the whole process
                (tweetgen.hugepages says which, and to what). False (the default): no change. None: for weights of
                64 MB and more (what tweetgen-run does).

        Raises:
            ModelFolderError: the folder is missing, incomplete (every missing file is listed) or unreadable.
            ValueError: an option outside its allowed values.
        """
        if device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or not 1 <= threads <= MAX_THREADS):
            raise ValueError(f"threads must be an integer from 1 to {MAX_THREADS}, or None (one per core), "
                             f"not {threads!r}")
        asked = device
        if device == "cuda" and not cuda_available():
            raise TweetgenError("device 'cuda' needs onnxruntime-gpu and a visible NVIDIA GPU; "
                                f"this onnxruntime offers {', '.join(ort.get_available_providers())}")
        folder = read_folder(path)
        if device == "auto":
            device = "cuda" if cuda_available() and folder.variant_path(precision, "cuda").name != VARIANTS["int8"] \
                else "cpu"
        elif device == "cuda" and folder.variant_path(precision, device).name == VARIANTS["int8"]:
            log.warning("running %s's int8 graph on CUDA: its quantized operators run on the CPU, with copies between "
                        "the two at every step (export the model with fp16 for the GPU)", folder.path)
        try:
            tokenizer = Tokenizer.from_file(str(folder.path / "tokenizer.json"))
        except Exception as exc:  # the tokenizers library raises a bare Exception for a bad file
            raise ModelFolderError(f"cannot read {folder.path / 'tokenizer.json'}: {exc}") from None
        # Parsing tokenizer.json leaves its temporaries free in the heap (GPT-2's: 14 MB); returned before the
        # session loads, they are not resident beside the weights.
        return_free_memory()
        model_path, session = _open(folder, precision, device, threads, huge_pages)
        if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            # onnxruntime-gpu falls back to the CPU when its CUDA provider cannot start (see its own error above)
            problem = ("onnxruntime-gpu could not start its CUDA provider (a GPU it can use, or the CUDA and cuDNN "
                       "libraries it was built for: pip install 'onnxruntime-gpu[cuda,cudnn]')")
            if asked == "cuda":
                raise TweetgenError(f"device 'cuda': {problem}; run with device 'cpu' or 'auto' to use the CPU")
            log.warning("%s: running on the CPU", problem)
            device = "cpu"
            model_path, session = _open(folder, precision, device, threads, huge_pages)
        eos = folder.eos_token_ids or _eos_from_tokenizer(tokenizer)
        try:
            spec = read_graph_spec(session, folder.config)
        except ModelFolderError as exc:
            raise ModelFolderError(f"{model_path}: {exc}") from None
        vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        if spec.vocab_size is not None and vocab > spec.vocab_size:
            raise ModelFolderError(f"{folder.path}: tokenizer.json has {vocab} tokens but {model_path.name} scores "
                                   f"only {spec.vocab_size}: they are not the same model's")
        if spec.positions is not None and folder.context_length > spec.positions:
            raise ModelFolderError(f"{folder.path}: config.json gives a context of {folder.context_length} tokens "
                                   f"but {model_path.name} holds only {spec.positions} positions: they are not the "
                                   "same model's")
        engine = Engine(session, spec, context_length=folder.context_length, eos_token_ids=eos, device=device)
        log.info("loaded %s on %s", model_path, device)
        return cls(folder, engine, tokenizer, model_path, _read_copy_index(folder.path))

    @property
    def users(self) -> list[str]:
        """The voices of a multi-user model (pass one as `user=`); empty for a single-voice model."""
        return sorted(self.folder.users)

    def encode_prompt(self, prompt: str, user: str | None = None) -> list[int]:
        """The token ids the model sees for a prompt: the folder's prompt start, the user's prefix, the prompt.

        Trailing spaces are left out: byte-level BPE attaches a space to the word after it, so a prompt that ends
        in a space (or an empty prompt after "@user: ") would show the model a lone space it never saw in training.
        The continuation brings the space back, and the text layer drops it again.
        """
        return self._encode(prompt, user)[0]

    def _encode(self, prompt: str, user: str | None) -> tuple[list[int], int]:
        """(ids, trailing spaces left out of them)."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
        if user is not None and user not in self.folder.users:
            known = ", ".join(self.users) or "none: this model has a single voice"
            raise ValueError(f"unknown user {user!r}; this model knows: {known}")
        prefix = self.folder.users.get(user, "") if user is not None else ""
        # Every token is at least one character: a prompt with more characters than the context holds tokens times
        # the longest token is too long whatever it says, and is refused before it is tokenized in full.
        if len(prompt) > self.engine.context_length * self._longest_token:
            raise ValueError(f"the prompt ({len(prompt):,} characters) is far longer than the model's context of "
                             f"{self.engine.context_length} tokens; shorten it")
        text = self.folder.prompt_start + prefix + prompt
        body = text.rstrip(" ")
        return self.tokenizer.encode(body).ids, len(text) - len(body)

    def request(self, **options: object) -> Request:
        """The Request that generate/stream build from their keyword options (checked; None takes the folder's
        defaults). Raises ValueError or TypeError naming the first bad option."""
        return Request.resolve(self.folder.sampling, **options)

    def generate(self, prompt: str, n: int = 1, *, max_new_tokens: int | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 repetition_penalty: float | None = None, seed: int | None = None, user: str | None = None,
                 max_chars: int | None = 280, stop_at_newline: bool = False, allow_copies: bool = False,
                 stop: str | list[str] | tuple[str, ...] = (), min_new_tokens: int = 0,
                 min_p: float | None = None) -> list[str]:
        """Write n continuations of `prompt` (the prompt itself is not repeated).

        When the folder ships a copy index (copies.bin), a text that repeats 8 consecutive words of a training tweet
        is drawn again, up to COPY_ATTEMPTS draws in all, unless allow_copies; one still copying after that is left
        out, so fewer than n texts come back (logged; rare).

        Args:
            prompt: the start of the tweet; may be "".
            n: how many samples; the prompt is run once and the n samples decode as one batch.
            max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty: None takes the folder's
                generation_config.json default. temperature 0 is greedy.
            seed: the same seed gives the same texts; None draws fresh randomness.
            user: one voice of a multi-user model (see `users`).
            max_chars: cut each text to this many characters on a word boundary (None: no cut).
            stop_at_newline: end each text at its first newline.
            allow_copies: keep texts that copy a training tweet.
            stop: a string, or up to 4: a text ends where it first holds one (the text is cut before it).
            min_new_tokens: end-of-text cannot be drawn before this many new tokens.

        Returns:
            n strings (fewer only as said above).

        Raises:
            ValueError: an option outside its allowed range, an unknown user, or a prompt that does not fit.
        """
        request = self.request(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                               repetition_penalty=repetition_penalty, min_p=min_p, seed=seed, user=user,
                               max_chars=max_chars, stop_at_newline=stop_at_newline, allow_copies=allow_copies,
                               stop=stop, min_new_tokens=min_new_tokens)
        return self.generate_request(prompt, n, request)

    def generate_request(self, prompt: str, n: int, request: Request) -> list[str]:
        """`generate` with its options as one Request."""
        out = self._texts(prompt, n, request)
        if self.copy_index is None or request.allow_copies:
            return out
        # the prompt's own words count only when it does not copy a training tweet by itself
        whole = not self.copy_index.copies(prompt)
        fresh, dropped = redraw_copies(
            lambda count, draw_seed: self._texts(prompt, count, replace(request, seed=draw_seed)),
            out, lambda t: self.copy_index.copies(prompt + t if whole else t), n, request.seed, COPY_ATTEMPTS)
        if dropped:
            log.warning("%d of %d texts still copied a training tweet after %d draws: left out", dropped, n,
                        COPY_ATTEMPTS)
        return fresh

    def _texts(self, prompt: str, n: int, request: Request) -> list[str]:
        steps, texts = self._start(prompt, n, request)
        for _ in steps:
            pass
        return [t.text for t in texts]

    def stream(self, prompt: str, *, max_new_tokens: int | None = None, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
               seed: int | None = None, user: str | None = None, max_chars: int | None = 280,
               stop_at_newline: bool = False, stop: str | list[str] | tuple[str, ...] = (),
               min_new_tokens: int = 0, min_p: float | None = None) -> Iterator[str]:
        """Yield the text of one sample piece by piece (whole words, never half a character).

        Joined, the pieces equal `generate(prompt, n=1, allow_copies=True, ...)[0]` with the same arguments: what
        is shown cannot be taken back, so a stream is never checked against the copy index. Arguments are checked
        when this is called, not on the first `next()`.
        """
        request = self.request(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                               repetition_penalty=repetition_penalty, min_p=min_p, seed=seed, user=user,
                               max_chars=max_chars, stop_at_newline=stop_at_newline, allow_copies=True, stop=stop,
                               min_new_tokens=min_new_tokens)
        steps, texts = self._start(prompt, 1, request)
        return self._pieces(steps, texts[0])

    @staticmethod
    def _pieces(steps: Iterator[None], text: TweetText) -> Iterator[str]:
        for _ in steps:
            piece = text.release()
            if piece:
                yield piece
        piece = text.release()
        if piece:
            yield piece

    def _start(self, prompt: str, n: int, request: Request) -> tuple[Iterator[None], list[TweetText]]:
        """Check the prompt and n, then return the step iterator and the n texts it fills."""
        ids, held = self._encode(prompt, request.user)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_SAMPLES:
            raise ValueError(f"n must be an integer from 1 to {MAX_SAMPLES}, not {n!r}")
        texts = [TweetText(self.tokenizer, max_chars=request.max_chars, stop_at_newline=request.stop_at_newline,
                           skip_spaces=held, stop=request.stop) for _ in range(n)]
        done = np.zeros(n, dtype=bool)
        steps = self.engine.generate(ids, n=n, max_new_tokens=request.max_new_tokens, params=request.sampling,
                                     rng=np.random.default_rng(request.seed), done=done,
                                     min_new_tokens=request.min_new_tokens)
        return self._follow(steps, texts, done), texts

    @staticmethod
    def _follow(steps: Iterator[Step], texts: list[TweetText], done: np.ndarray) -> Iterator[None]:
        """Feed each step's tokens to the texts; a text that is complete stops its row."""
        for step in steps:
            for row, token, ended in zip(step.rows.tolist(), step.tokens.tolist(), step.ended.tolist()):
                text = texts[row]
                if ended:
                    text.finish()
                    continue
                text.add(token)
                if text.done:
                    done[row] = True
            yield
        for text in texts:
            text.finish()


def redraw_copies(draw: Callable[[int, int | None], list[str]], first: list[str], is_copy: Callable[[str], bool],
                  n: int, seed: int | None, attempts: int) -> tuple[list[str], int]:
    """Keep the texts of `first` that are not copies and draw the others again with `draw(count, seed)`, up to
    `attempts` draws in all (the first included); each retry's seed is derived from `seed` and the attempt (None
    stays None). Returns (the texts kept, how many were left out)."""
    fresh = [t for t in first if not is_copy(t)]
    for attempt in range(1, attempts):
        if len(fresh) == n:
            break
        retry_seed = None if seed is None else int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])
        fresh += [t for t in draw(n - len(fresh), retry_seed) if not is_copy(t)]
    return fresh, n - len(fresh)


def _read_copy_index(folder: Path) -> CopyIndex | None:
    path = folder / COPY_INDEX_FILE
    if not path.is_file():
        return None
    try:
        return CopyIndex.load(path)
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"cannot read the copy index {path}: {exc}; remove the file to generate without "
                               "the copy check") from None


def _open(folder: ModelFolder, precision: str, device: str, threads: int | None, huge_pages: bool | None
          ) -> tuple[Path, ort.InferenceSession]:
    """The variant of `folder` to run on `device`, and its session (on 2 MB pages when `huge_pages`)."""
    model_path = folder.variant_path(precision, device)
    # the graph's external weights (model_quantized.onnx.data, model.onnx_data), if any
    data = sorted(model_path.parent.glob(model_path.name + "*data"))
    weights = sum(f.stat().st_size for f in (model_path, *data))
    if huge_pages is None:
        huge_pages = weights >= AUTO_MIN_BYTES
    # the load's allocations (weights, their packed copies, temporaries) fit in three times the files
    heap = huge_page_heap(3 * weights + (64 << 20)) if huge_pages and device == "cpu" else nullcontext()
    with heap:
        session = open_session(model_path, device, threads)
    if device == "cpu":
        read_rows_on_demand(data)  # what the load left mapped is looked up a row at a time (tweetgen.lookups)
    return model_path, session


def _preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries of the nvidia-* pip packages (onnxruntime-gpu[cuda,cudnn], or torch's)
    when they are installed: onnxruntime's CUDA provider does not find them there by itself. What it prints goes to
    stderr (stdout carries the tweets)."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is None:
        return
    try:
        with redirect_stdout(sys.stderr):
            preload()
    except Exception as exc:  # a missing or partial CUDA install: the session's own error says more
        log.debug("onnxruntime.preload_dlls: %s", exc)


def open_session(model_path: Path, device: str, threads: int | None) -> ort.InferenceSession:
    """The runtime's onnxruntime session for one graph file; ModelFolderError when it cannot be loaded."""
    options = ort.SessionOptions()
    # Warnings off: onnxruntime warns at every load that a fused graph's optional inputs (contract) are initializers
    # that can be overridden, which is what they are for. Errors still come through.
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No CPU arena: a decoder's intermediate tensors are small, and the arena keeps the largest it ever held (after a
    # long prompt, for good).
    options.enable_cpu_mem_arena = False
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    if device == "cuda":
        _preload_cuda_libraries()
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise ModelFolderError(f"cannot load {model_path}: it is not a valid ONNX model ({exc})") from None


def _eos_from_tokenizer(tokenizer: Tokenizer) -> tuple[int, ...]:
    token = tokenizer.token_to_id("<|endoftext|>")
    return () if token is None else (token,)

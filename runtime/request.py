"""`Request`: the options of one generate or stream call, resolved against the model folder's defaults and checked
once, then carried as one frozen object through the layers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .folder import SamplingDefaults
from .sampling import SamplingParams

MAX_STOPS = 4  # stop strings a request may give (OpenAI's limit)


@dataclass(frozen=True)
class Request:
    """What to write for a prompt, beyond the prompt itself."""

    max_new_tokens: int  # tokens added at most
    sampling: SamplingParams  # temperature, top-k, top-p, min-p, repetition penalty
    seed: int | None = None  # the same seed gives the same texts; None draws fresh randomness
    user: str | None = None  # one voice of a multi-user model
    max_chars: int | None = 280  # each text cut to this many characters on a word boundary (None: no cut)
    stop_at_newline: bool = False  # end each text at its first newline
    allow_copies: bool = False  # keep texts that copy a training tweet (generate only; a stream is never checked)
    stop: tuple[str, ...] = ()  # a text ends where it first holds one of these strings (cut before it)
    min_new_tokens: int = 0  # end-of-text cannot be drawn before this many new tokens

    def __post_init__(self) -> None:
        if _bad_int(self.max_new_tokens, 1):
            raise ValueError(f"max_new_tokens must be an integer >= 1, not {self.max_new_tokens!r}")
        if self.max_chars is not None and _bad_int(self.max_chars, 1):
            raise ValueError(f"max_chars must be an integer >= 1 or None (no limit), not {self.max_chars!r}")
        if self.seed is not None and _bad_int(self.seed, 0):
            raise ValueError(f"seed must be an integer >= 0 or None, not {self.seed!r}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if not isinstance(self.stop, (tuple, list)) or not all(isinstance(s, str) and s for s in self.stop) \
                or len(self.stop) > MAX_STOPS:
            raise ValueError(f"stop must be a string or a list of at most {MAX_STOPS} non-empty strings, "
                             f"not {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        if _bad_int(self.min_new_tokens, 0) or self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be an integer from 0 to max_new_tokens ({self.max_new_tokens}), "
                             f"not {self.min_new_tokens!r}")
        if self.user is not None and not isinstance(self.user, str):
            raise TypeError(f"user must be a str or None, not {type(self.user).__name__}")

    @classmethod
    def resolve(cls, defaults: SamplingDefaults, *, max_new_tokens: int | None = None,
                temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                repetition_penalty: float | None = None, min_p: float | None = None, **options: object) -> Request:
        """A Request from a call's keyword options; None takes the folder's default (generation_config.json)."""
        sampling = SamplingParams(
            temperature=_number(defaults.temperature if temperature is None else temperature),
            top_k=defaults.top_k if top_k is None else top_k,
            top_p=_number(defaults.top_p if top_p is None else top_p),
            repetition_penalty=_number(defaults.repetition_penalty if repetition_penalty is None
                                       else repetition_penalty),
            min_p=_number(defaults.min_p if min_p is None else min_p))
        return cls(max_new_tokens=defaults.max_new_tokens if max_new_tokens is None else max_new_tokens,
                   sampling=sampling, **options)  # type: ignore[arg-type]


def _bad_int(value: object, least: int) -> bool:
    return isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least


def _number(value: object) -> object:
    """numpy scalars count as the numbers they hold."""
    return float(value) if isinstance(value, (np.floating, np.integer)) else value

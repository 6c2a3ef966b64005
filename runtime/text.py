"""Tweet rules on top of token ids: decoding, stop strings, the newline stop, the character limit, safe streaming.

A `TweetText` follows one sample token by token. Its final text is the decoded continuation, cut at the first
stop string and at the first newline (when asked), cut to `max_chars` on a word boundary, trailing whitespace removed. While the sample runs it
releases only text that the final text is sure to start with: whole words, never half a UTF-8 character.
"""

from __future__ import annotations

from tokenizers import Tokenizer

_REPLACEMENT = "\ufffd"  # what the byte-level decoder gives for an incomplete UTF-8 sequence


def cut_to_limit(text: str, max_chars: int | None) -> str:
    """Cut `text` to at most `max_chars` characters on a word boundary (hard cut if one word is too long)."""
    if max_chars is None or len(text) <= max_chars:
        return text
    head = text[:max_chars + 1]  # one more character: a space right after the limit makes a clean cut
    boundary = max((head.rfind(space) for space in (" ", "\n", "\t")))
    if boundary > 0 and head[:boundary].strip():
        return head[:boundary].rstrip()
    return text[:max_chars].rstrip()


class TweetText:
    """The text of one sample, built from its tokens."""

    def __init__(self, tokenizer: Tokenizer, *, max_chars: int | None, stop_at_newline: bool,
                 skip_spaces: int = 0, stop: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._skip_spaces = skip_spaces  # leading spaces to drop: the prompt already ended with them
        self._max_chars = max_chars
        self._stop_at_newline = stop_at_newline
        self._stop = tuple(stop)  # the text ends before the first of these it holds
        self._hold = max((len(s) for s in self._stop), default=1) - 1  # characters a stream keeps back (see release)
        self._ids: list[int] = []
        self._decoded = 0  # how many of the ids `_text` holds
        self._text = ""
        self._bound = 0  # at least the length of the decoded text (see add)
        self.done = False
        self.stopped = False  # ended by a stop string or the newline rule
        self.released = 0  # characters of the final text already handed out

    def add(self, token: int) -> None:
        """Append a token; sets `done` when the text is past its limit or hit a newline that ends it.

        The text is decoded only when a limit may have been reached: a token never decodes to more characters than
        its vocabulary entry has plus one (a joining space), so the text is checked once that bound passes
        max_chars, and for the newline rule once the token itself decodes to a newline. `done` only ends the sample
        early: the final text applies both rules to the whole decoded text.
        """
        self._ids.append(token)
        if self._stop_at_newline and "\n" in self._tokenizer.decode([token], skip_special_tokens=True):
            self.done = "\n" in self._current()
        if self._stop and not self.done:
            self.done = _stop_at(self._current(), self._stop) is not None
        self.stopped = self.done  # a newline or a stop string ended it (not the character limit)
        if self._max_chars is not None and not self.done:
            self._bound += len(self._tokenizer.id_to_token(token) or "") + 1
            if self._bound > self._max_chars:
                self.done = len(self._current().rstrip(_REPLACEMENT)) > self._max_chars

    def _current(self) -> str:
        """The decoded text of every id so far (decoding them all again keeps multi-token characters right)."""
        if self._decoded != len(self._ids):
            text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
            if self._skip_spaces:
                text = text[min(self._skip_spaces, len(text) - len(text.lstrip(" "))):]
            self._text, self._decoded = text, len(self._ids)
        return self._text

    def finish(self) -> None:
        self.done = True

    @property
    def text(self) -> str:
        """The final text if done; else the text so far with the same rules applied."""
        text = self._current().rstrip(_REPLACEMENT)
        if self._stop:
            end = _stop_at(text, self._stop)
            text = text if end is None else text[:end]
        if self._stop_at_newline:
            text = text.split("\n", 1)[0]
        return cut_to_limit(text, self._max_chars).rstrip()

    def release(self) -> str:
        """The text not yet handed out that can no longer change: all of it when done, else up to the last word."""
        text = self.text
        if not self.done:
            if self._hold:  # a stop string may be starting in the last characters: they may still be cut away
                text = text[:max(0, len(text) - self._hold)]
            last_space = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
            text = text[:last_space].rstrip() if last_space > 0 else ""
        if len(text) <= self.released:
            return ""
        delta = text[self.released:]
        self.released = len(text)
        return delta


def _stop_at(text: str, stop: tuple[str, ...]) -> int | None:
    """Where the first of the `stop` strings starts in `text`, or None."""
    found = [i for s in stop if (i := text.find(s)) >= 0]
    return min(found) if found else None

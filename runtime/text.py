"""Tweet rules on top of token ids: decoding, the newline stop, the character limit, safe streaming.

A `TweetText` follows one sample token by token. Its final text is the decoded continuation, cut at the first
newline (when asked), cut to `max_chars` on a word boundary, trailing whitespace removed. While the sample runs it
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
                 skip_spaces: int = 0) -> None:
        self._tokenizer = tokenizer
        self._skip_spaces = skip_spaces  # leading spaces to drop: the prompt already ended with them
        self._max_chars = max_chars
        self._stop_at_newline = stop_at_newline
        self._ids: list[int] = []
        self._text = ""
        self.done = False
        self.released = 0  # characters of the final text already handed out

    def add(self, token: int) -> None:
        """Append a token; sets `done` when the text is past its limit or hit a newline that ends it."""
        self._ids.append(token)
        # Decoding all ids again keeps multi-token characters right; a tweet is under a hundred tokens.
        self._text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if self._skip_spaces:
            self._text = self._text[min(self._skip_spaces, len(self._text) - len(self._text.lstrip(" "))):]
        if self._stop_at_newline and "\n" in self._text:
            self.done = True
        elif self._max_chars is not None and len(self._text.rstrip(_REPLACEMENT)) > self._max_chars:
            self.done = True

    def finish(self) -> None:
        self.done = True

    @property
    def text(self) -> str:
        """The final text if done; else the text so far with the same rules applied."""
        text = self._text.rstrip(_REPLACEMENT)
        if self._stop_at_newline:
            text = text.split("\n", 1)[0]
        return cut_to_limit(text, self._max_chars).rstrip()

    def release(self) -> str:
        """The text not yet handed out that can no longer change: all of it when done, else up to the last word."""
        text = self.text
        if not self.done:
            last_space = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
            text = text[:last_space].rstrip() if last_space > 0 else ""
        if len(text) <= self.released:
            return ""
        delta = text[self.released:]
        self.released = len(text)
        return delta

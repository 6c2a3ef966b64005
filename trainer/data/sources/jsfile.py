"""Read the `window.YTD.tweets.part0 = [...]` files of an X archive as JSON: never evaluated as JavaScript."""
from __future__ import annotations

import json
import re
from typing import Any

from tweetgen.trainer.errors import DataError

_ASSIGNMENT = re.compile(r"\s*(?:window\.)?[A-Za-z_$][\w$.]*\s*=\s*")


def decode_utf8(data: bytes, where: str) -> str:
    """Decode UTF-8 (a BOM is allowed); a bad byte is a DataError naming the file and the byte offset."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{where}: not UTF-8 text (line {line}, byte {e.start}: "
            f"{data[e.start:e.start + 1]!r}); "
            "save it as UTF-8 and try again"
        ) from None


def parse_json_text(text: str, where: str, *, start: int = 0) -> Any:
    """Parse `text[start:]` as JSON; an error names the file, line and column in the whole text."""
    body = text[start:].rstrip()
    if body.endswith(";"):
        body = body[:-1]
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        pos = start + e.pos
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        raise DataError(f"{where}: malformed JSON at line {line} column {column}: {e.msg}") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to be tweets (thousands of levels)") from None


def parse_js(data: bytes, where: str) -> Any:
    """Parse an archive file: `window.YTD.<type>.partN = <JSON>` (or plain JSON) without evaluating anything.

    Raises:
        DataError: the file is not UTF-8, not an assignment of JSON, or the JSON is malformed (with line and column).
    """
    text = decode_utf8(data, where)
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        return parse_json_text(text, where)
    match = _ASSIGNMENT.match(text)
    if not match:
        raise DataError(
            f"{where}: not an X archive file; expected `window.YTD.tweets.part0 = [ ... ]` or a JSON array"
        )
    return parse_json_text(text, where, start=match.end())

"""Lookup tables mapped from a model's external data: only the rows a run reads stay resident (Linux, glibc).

onnxruntime maps a large model's external weights (`model_quantized.onnx.data`) and copies most of them into packed
buffers at load; what it keeps mapped afterwards are tables it only looks rows up in, such as the token embedding
(GPT-2 124M int8: 38 MB, of which a tweet reads a few dozen 768-byte rows). Reading one row should bring in one 4 KB
page, but the kernel answers a fault on a file mapping with its readahead window (`read_ahead_kb`, 8 MB on some
disks) and maps large page-cache folios whole: here 5 tweets of 64 tokens left 36 MB of the table resident in the
process.

`read_rows_on_demand` advises each mapping that the load left untouched: random access for the mapping (no readahead
on its faults) and, for its range of the file, that the cached pages are not needed (posix_fadvise DONTNEED: clean
pages that no process maps are dropped, so the range comes back from the disk a page at a time, as its rows are
read). Measured on that model: 36 MB resident after 5 x 64 tokens before, 1 MB after (benchmarks/README.md). The
price is a read from the disk, not the page cache, the first time a row is needed after a load. Dirty pages cannot be
dropped, so the file is synced first: instant for a file written long ago, the rest of its write-back for a fresh
export. Nothing is done where the calls do not exist (other systems) or fail: the advice changes what stays
resident, never what is read.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .hugepages import glibc

log = logging.getLogger("tweetgen.runtime")
_MADV_RANDOM = 1
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) \S+ \d+\s*(.*)$")


@dataclass(frozen=True)
class Mapping:
    """One file mapping of a /proc/PID/smaps text: its address range, where it starts in the file, and how much of
    it is resident."""

    start: int
    end: int
    offset: int
    path: str
    rss_kb: int


def file_mappings(smaps: str) -> list[Mapping]:
    """The mappings of a /proc/PID/smaps text that have a file path, with their `Rss`."""
    found: list[Mapping] = []
    current: list | None = None
    for line in smaps.splitlines():
        header = _HEADER.match(line)
        if header:
            if current is not None:
                found.append(Mapping(*current))
            path = header.group(4).strip()
            current = [int(header.group(1), 16), int(header.group(2), 16), int(header.group(3), 16), path, 0] \
                if path.startswith("/") else None
        elif current is not None and line.startswith("Rss:"):
            current[4] = int(line.split()[1])
    if current is not None:
        found.append(Mapping(*current))
    return found


def untouched(mappings: list[Mapping], files: list[Path]) -> list[Mapping]:
    """The mappings of `files` with nothing resident."""
    names = {os.path.realpath(f) for f in files}
    return [m for m in mappings if m.rss_kb == 0 and m.path in names]


def read_rows_on_demand(files: list[Path]) -> int:
    """Advise this process's untouched mappings of `files` (a session's external data, just after its load) to bring
    in only the pages that are read. Returns the bytes advised (0 where it cannot be done)."""
    libc = glibc()
    if not files or libc is None:
        return 0
    try:
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
            spans = untouched(file_mappings(smaps.read()), files)
    except OSError as exc:
        log.debug("lookup tables: left as mapped (%s)", exc)
        return 0
    advised = 0
    for path in sorted({span.path for span in spans}):  # ORT maps each initializer on its own: a file has many
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            log.debug("lookup tables: cannot open %s (%s)", path, exc)
            continue
        try:
            try:
                os.fdatasync(fd)  # pages not yet written back cannot be dropped (a fresh export); instant when clean
            except OSError as exc:
                log.debug("lookup tables: fdatasync failed on %s (%s)", path, exc)
            for span in (s for s in spans if s.path == path):
                length = span.end - span.start
                if libc.madvise(span.start, length, _MADV_RANDOM) != 0:
                    log.debug("lookup tables: madvise refused (errno %d)", ctypes.get_errno())
                    continue
                try:
                    os.posix_fadvise(fd, span.offset, length, os.POSIX_FADV_DONTNEED)
                except OSError as exc:
                    log.debug("lookup tables: posix_fadvise failed on %s (%s)", path, exc)
                advised += length
        finally:
            os.close(fd)
    return advised

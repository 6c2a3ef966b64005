"""2 MB pages for a session's weights, on Linux with glibc: opt-in (`Generator.load(huge_pages=...)`; tweetgen-run
turns it on for models of 64 MB and more).

Batch-1 decoding streams every weight once a token. onnxruntime copies the weights into its own packed buffers at
load, which the kernel backs with 4 KB pages unless asked otherwise (transparent huge pages are usually "madvise"
only): GPT-2 124M int8 is then ~32,000 pages a token, far more than the TLB holds. `huge_page_heap` makes the
allocations of a load come from glibc's main heap, first grown by enough for them and advised (MADV_HUGEPAGE) to take
2 MB pages. What it gains and costs is measured in benchmarks/README.md.

What stays changed in the process afterwards (glibc cannot report its settings, so they cannot be put back as they
were): mallopt's M_MMAP_THRESHOLD is 32 MB, M_TRIM_THRESHOLD 64 MB and M_TOP_PAD 128 KB, fixed, where glibc would
otherwise tune the first two itself; these are the values its own tuning reaches once it has seen large allocations.
Loads on huge pages are serialized by a lock (the settings are process-wide); other threads' allocations during a
load also come from the grown heap. Nothing changes where this cannot work (another OS or C library, no [heap]
mapping, a refused call): the load goes on as usual.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("tweetgen.runtime")

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc mallopt parameters
_MADV_HUGEPAGE = 14
_HUGE_PAGE = 2 << 20
_AFTER_MMAP_THRESHOLD = 32 << 20  # glibc's dynamic threshold's ceiling on 64-bit
_AFTER_TRIM_THRESHOLD = 64 << 20  # twice that, as glibc sets it when it raises the threshold
_AFTER_TOP_PAD = 128 << 10  # glibc's default
_NEVER = 1 << 30
AUTO_MIN_BYTES = 64 << 20  # huge_pages=None (tweetgen-run's default) uses them for weights of this size and more
_LOCK = threading.Lock()  # one load at a time changes the process-wide settings


def heap_span(maps: str) -> tuple[int, int] | None:
    """The [heap] mapping's (start, end) in a /proc/PID/maps text, or None."""
    for line in maps.splitlines():
        if line.rstrip().endswith("[heap]"):
            start, end = (int(part, 16) for part in line.split()[0].split("-"))
            return start, end
    return None


def glibc() -> ctypes.CDLL | None:
    """The C library, with the calls the runtime makes typed, on Linux with glibc; None elsewhere."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def return_free_memory() -> bool:
    """Give the memory glibc's heap holds free back to the system (malloc_trim), e.g. after a parse that built and
    dropped large temporaries. False where that cannot be done (another OS or C library)."""
    libc = glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@contextmanager
def huge_page_heap(reserve: int) -> Iterator[bool]:
    """While open, this process's allocations (up to 1 GB each) come from glibc's main heap, grown by `reserve`
    bytes and advised to use 2 MB pages. Yields whether that was set up; the caller's work runs either way."""
    libc = glibc()
    if libc is None:
        yield False
        return
    with _LOCK:
        yield from _on_huge_pages(libc, reserve)


def _on_huge_pages(libc: ctypes.CDLL, reserve: int) -> Iterator[bool]:
    reserve = min(reserve, _NEVER - _HUGE_PAGE)  # larger blocks are mapped on their own whatever the threshold
    libc.mallopt(_M_MMAP_THRESHOLD, _NEVER)
    libc.mallopt(_M_TRIM_THRESHOLD, _NEVER)
    libc.mallopt(_M_TOP_PAD, 0)
    try:
        block = libc.malloc(reserve)  # grows the heap; freed at once, it stays as the heap's free end
        libc.free(block)
        with open("/proc/self/maps", encoding="ascii") as maps:
            span = heap_span(maps.read())
        advised = False
        if block and span is not None:
            start = -(-span[0] // _HUGE_PAGE) * _HUGE_PAGE
            advised = span[1] > start and libc.madvise(start, span[1] - start, _MADV_HUGEPAGE) == 0
        if not advised:
            log.info("huge pages: not available here (errno %d); loading as usual", ctypes.get_errno())
        yield advised
    finally:
        libc.mallopt(_M_TOP_PAD, _AFTER_TOP_PAD)
        libc.mallopt(_M_MMAP_THRESHOLD, _AFTER_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _AFTER_TRIM_THRESHOLD)
        libc.malloc_trim(0)  # what the load freed goes back to the system

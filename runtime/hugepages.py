"""2 MB pages for a session's weights, on Linux with glibc (Generator.load: by default for weights from 64 MB up).

Batch-1 decoding streams every weight once a token. onnxruntime copies the weights into its own packed buffers at
load, which the kernel backs with 4 KB pages unless asked otherwise (transparent huge pages are usually "madvise"
only): GPT-2 124M int8 is then ~32,000 pages a token, far more than the TLB holds. `huge_page_heap` makes the
allocations of a load come from glibc's main heap, first grown by enough for them and advised (MADV_HUGEPAGE) to
take 2 MB pages. Measured on GPT-2 124M (2 cores, a VM; benchmarks/README.md): ~120-140 MB of the int8 session on
2 MB pages, int8 decoding 5.5 -> 4.8 ms a token and 5 x 64 sampled 0.55 -> 0.43 s in one benchmark run; in
interleaved process pairs, int8 5.84 -> 5.27 ms a token and fp32 faster in 5 pairs of 5 by 2-8% (the benchmark's
fp32 rows moved more than that between runs, either way). The int8 load costs from nothing to ~0.2 s more (the
kernel zeroes and maps whole 2 MB pages, here through a hypervisor), so `tweetgen-run -n 5` as a whole took the same
time (1.05 vs 1.16 s, 5 runs each); the fp32 load ~1.1 s more and ~180 MB more peak memory. Small models (the
default one: 9 MB) load as usual.

Nothing changes where this cannot work (another OS or C library, no [heap] mapping, a refused call): the load goes
on as usual. Afterwards glibc runs with the limits its own dynamic tuning reaches once it has seen large
allocations: allocations over 32 MB are mapped on their own, and free memory at the heap's end over 64 MB goes back
to the system.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys
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
AUTO_MIN_BYTES = 64 << 20  # Generator.load uses huge pages by default for weights of this size and more


def heap_span(maps: str) -> tuple[int, int] | None:
    """The [heap] mapping's (start, end) in a /proc/PID/maps text, or None."""
    for line in maps.splitlines():
        if line.rstrip().endswith("[heap]"):
            start, end = (int(part, 16) for part in line.split()[0].split("-"))
            return start, end
    return None


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


@contextmanager
def huge_page_heap(reserve: int) -> Iterator[bool]:
    """While open, this process's allocations (up to 1 GB each) come from glibc's main heap, grown by `reserve`
    bytes and advised to use 2 MB pages. Yields whether that was set up; the caller's work runs either way."""
    libc = _glibc()
    if libc is None:
        yield False
        return
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

"""The huge-page load: the heap trick works where it can, is the default for large models only, changes no output."""
from __future__ import annotations

import ctypes
import platform
import sys

import numpy as np
import pytest
from conftest import TINY_GPT2

from tweetgen import Generator
from tweetgen.hugepages import heap_span, huge_page_heap

GLIBC_LINUX = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def test_heap_span_reads_the_heap_line_of_a_maps_file():
    maps = ("55d0c0a00000-55d0c0a21000 r--p 00000000 08:01 1234 /usr/bin/python3\n"
            "55d0c1e00000-55d0c2400000 rw-p 00000000 00:00 0                          [heap]\n"
            "7f1200000000-7f1200021000 rw-p 00000000 00:00 0 \n")
    assert heap_span(maps) == (0x55d0c1e00000, 0x55d0c2400000)
    assert heap_span(maps.replace("[heap]", "")) is None


def _in_heap(array: np.ndarray) -> bool:
    """Whether the array's data lies in the main heap: from its start (maps) to the program break (sbrk(0); the
    advised part of the heap may be listed in maps as a mapping of its own)."""
    libc = ctypes.CDLL(None)
    libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
    with open("/proc/self/maps", encoding="ascii") as maps:
        start, _ = heap_span(maps.read())
    return start <= array.ctypes.data < libc.sbrk(0)


@pytest.mark.skipif(not GLIBC_LINUX, reason="the heap trick is for Linux with glibc")
def test_large_allocations_come_from_the_advised_heap_only_while_it_is_open():
    with huge_page_heap(64 << 20) as advised:
        inside = np.ones(8 << 20, dtype=np.uint8)  # 8 MB: glibc would map it on its own otherwise
        assert advised and _in_heap(inside)
    after = np.ones(40 << 20, dtype=np.uint8)  # over the 32 MB threshold set on the way out: its own mapping again
    assert not _in_heap(after)
    del inside, after


def test_a_huge_page_load_writes_the_same_tweets():
    plain = Generator.load(TINY_GPT2, device="cpu", huge_pages=False)
    huge = Generator.load(TINY_GPT2, device="cpu", huge_pages=True)
    options = dict(n=3, seed=7, max_new_tokens=16)
    assert huge.generate("My dream is", **options) == plain.generate("My dream is", **options)


def test_huge_pages_are_opt_in_for_a_library_and_by_size_for_the_cli(monkeypatch):
    """Generator.load changes no process-wide setting unless asked; tweetgen-run asks (None) for large models."""
    import tweetgen.cli as cli_module
    import tweetgen.generator as generator_module

    reserves = []
    real = generator_module.huge_page_heap

    def spy(reserve):
        reserves.append(reserve)
        return real(reserve)

    monkeypatch.setattr(generator_module, "huge_page_heap", spy)
    monkeypatch.setattr(generator_module, "AUTO_MIN_BYTES", 1)  # as if the fixture were a large model
    Generator.load(TINY_GPT2, device="cpu")  # the library's default: never
    assert reserves == []
    Generator.load(TINY_GPT2, device="cpu", huge_pages=True)
    assert len(reserves) == 1 and reserves[0] > 64 << 20
    Generator.load(TINY_GPT2, device="cpu", huge_pages=None)  # by size: this "large" model
    assert len(reserves) == 2
    monkeypatch.setattr(generator_module, "AUTO_MIN_BYTES", 64 << 20)
    Generator.load(TINY_GPT2, device="cpu", huge_pages=None)  # by size: a few hundred KB, as usual
    assert len(reserves) == 2
    # the CLI loads by size, and not at all with --no-huge-pages
    asked = []
    monkeypatch.setattr(generator_module.Generator, "load", lambda *a, **k: asked.append(k["huge_pages"]) or 1 / 0)
    for argv in ([], ["--no-huge-pages"]):
        try:
            cli_module.run(cli_module.build_parser().parse_args(["-m", str(TINY_GPT2), *argv, "Hi"]))
        except ZeroDivisionError:
            pass
    assert asked == [None, False]


@pytest.mark.skipif(not GLIBC_LINUX, reason="the heap trick is for Linux with glibc")
def test_concurrent_huge_page_loads_take_turns():
    """The settings are process-wide: two loads in threads never hold the heap open at once."""
    import threading

    import tweetgen.hugepages as hugepages

    inside, most = [0], [0]
    real = hugepages._on_huge_pages

    def counting(libc, reserve):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        try:
            yield from real(libc, reserve)
        finally:
            inside[0] -= 1

    hugepages._on_huge_pages, original = counting, real
    try:
        threads = [threading.Thread(target=Generator.load, args=(TINY_GPT2,), kwargs={"huge_pages": True})
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        hugepages._on_huge_pages = original
    assert most[0] == 1 and inside[0] == 0

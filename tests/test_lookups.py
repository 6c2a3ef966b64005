"""tweetgen.lookups: a session's untouched external-data mappings bring in only the pages that are read."""

import mmap
import os

import numpy as np
import pytest

from tweetgen.hugepages import glibc
from tweetgen.lookups import file_mappings, read_rows_on_demand, untouched

SMAPS = """\
55d0c0000000-55d0c0021000 r--p 00000000 fd:01 1234    /usr/bin/python3.11
Size:                132 kB
Rss:                 132 kB
55d0c2000000-55d0c4000000 rw-p 00000000 00:00 0       [heap]
Rss:                2048 kB
7f0000000000-7f0002600000 r--s 00001000 fd:01 777     /models/gpt2/model_quantized.onnx.data
Size:              38912 kB
Rss:                   0 kB
7f0003000000-7f0003100000 r--s 02600000 fd:01 777     /models/gpt2/model_quantized.onnx.data
Rss:                  12 kB
7f0004000000-7f0004001000 rw-p 00000000 00:00 0
Rss:                   4 kB
"""


def test_file_mappings_reads_ranges_offsets_and_rss():
    found = file_mappings(SMAPS)
    assert [(m.path.rsplit("/", 1)[-1], m.offset, m.rss_kb) for m in found] == [
        ("python3.11", 0, 132), ("model_quantized.onnx.data", 0x1000, 0), ("model_quantized.onnx.data", 0x2600000, 12)]
    table = found[1]
    assert (table.start, table.end) == (0x7F0000000000, 0x7F0002600000)


def test_only_untouched_mappings_of_the_given_files_are_chosen(tmp_path):
    found = file_mappings(SMAPS.replace("/models/gpt2", str(tmp_path)))
    (tmp_path / "model_quantized.onnx.data").write_bytes(b"")
    chosen = untouched(found, [tmp_path / "model_quantized.onnx.data"])
    assert [(m.offset, m.rss_kb) for m in chosen] == [(0x1000, 0)]
    assert untouched(found, [tmp_path / "other.data"]) == []


def _rss_kb(path) -> int:
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        return sum(m.rss_kb for m in file_mappings(smaps.read()) if m.path == os.path.realpath(path))


@pytest.mark.skipif(glibc() is None, reason="reads /proc/self/smaps and uses madvise (Linux, glibc)")
def test_a_mapped_table_keeps_only_the_pages_read(tmp_path):
    page = mmap.PAGESIZE
    path = tmp_path / "table.data"
    with open(path, "wb") as out:
        out.write(np.random.default_rng(0).integers(0, 255, 16 << 20, dtype=np.uint8).tobytes())
        out.flush()
        os.fsync(out.fileno())  # clean pages: the advice can drop them from the cache
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as table:
        assert read_rows_on_demand([path]) == 16 << 20
        rows = range(0, 16 << 20, 2 << 20)  # 8 rows, 2 MB apart
        _ = [table[row] for row in rows]  # one byte of each row
        resident = _rss_kb(path)
        # each read brings in its page, at most the kernel's fault-around (64 KB) of already cached neighbours
        assert 0 < resident * 1024 <= len(rows) * 16 * page
        assert read_rows_on_demand([path]) == 0  # touched now: left alone


def test_nothing_to_advise_without_files_or_mappings(tmp_path):
    assert read_rows_on_demand([]) == 0
    path = tmp_path / "unmapped.data"
    path.write_bytes(b"x" * 8192)
    assert read_rows_on_demand([path]) == 0

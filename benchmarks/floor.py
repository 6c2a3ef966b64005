"""The memory floor of a decoding step: the machine's measured copy bandwidth against the bytes a row reads per token.

Batch-1 decoding reads every weight once a token (the linear layers and the output layer), and only one row of an
embedding table. So a row's floor is (bytes of its weights, less the tables only looked up) / bandwidth, and
"% of floor" is floor time / measured decode time: 100% would be a step that does nothing but stream its weights.
The KV cache (a few hundred KB at these lengths) and the activations are left out.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

PROBE_MB = 512  # far larger than any cache here


def copy_bandwidth_gbs(threads: int, megabytes: int = PROBE_MB, repeats: int = 5) -> float:
    """GB/s of bytes read plus bytes written by `threads` threads, each copying its share of a large buffer (NumPy
    releases the GIL in the copy); the best of `repeats`."""
    source = np.ones(megabytes << 20, dtype=np.uint8)
    target = np.zeros_like(source)  # both touched before timing: no page faults in the probe
    parts = np.array_split(np.arange(len(source)), max(1, threads))
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts if len(p)]

    def copy(low: int, high: int) -> None:
        np.copyto(target[low:high], source[low:high])

    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=copy, args=bound) for bound in bounds]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best / 1e9


_ONNX_SIZES = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 10: 2, 11: 8, 16: 2, 21: 1, 22: 1}  # data type -> bytes


def onnx_bytes_per_token(path: str | Path) -> int:
    """The weight bytes one row reads a token in an ONNX graph: every initializer except those used only as the
    table of a Gather (an embedding lookup reads one row). 4-bit weights, stored two to a byte, count as stored."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    uses: dict[str, list[tuple[str, int]]] = {}
    for node in _all_nodes(model.graph):
        for position, name in enumerate(node.input):
            uses.setdefault(name, []).append((node.op_type, position))
    total = 0
    for tensor in model.graph.initializer:
        consumers = uses.get(tensor.name, [])
        if consumers and all(op == "Gather" and position == 0 for op, position in consumers):
            continue
        total += int(np.prod(tensor.dims, dtype=np.int64)) * _ONNX_SIZES.get(tensor.data_type, 4)
    return total


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.node:
                yield from _all_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _all_nodes(sub)


def gguf_bytes_per_token(path: str | Path) -> int:
    """The same for a GGUF file: every tensor but the position table, and the token table only when it is also
    the output layer (no separate output.weight)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    skip = {"position_embd.weight"}
    if "output.weight" in tensors:
        skip.add("token_embd.weight")
    return sum(size for name, size in tensors.items() if name not in skip)


def row_bytes_per_token(family: str, variant: str, models) -> int | None:
    """Bytes a token for one benchmark row (None where not worked out: PyTorch, CTranslate2)."""
    from benchmarks.engines.base import SMALL_PAGES

    try:
        if family == "tweetgen":
            return onnx_bytes_per_token(Path(models.onnx) / variant.removesuffix(SMALL_PAGES))
        if family == "optimum":
            return onnx_bytes_per_token(Path(models.optimum_onnx or models.onnx) / variant)
        if family == "llamacpp" and variant in models.gguf:
            return gguf_bytes_per_token(models.gguf[variant])
    except (OSError, ImportError, ValueError):
        return None
    return None

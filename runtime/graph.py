"""What the runtime knows of a decoder graph: its inputs and outputs read from the session, and the feeds of a run."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .contract import ATTENTION_MASK, FUSED_METADATA, LOGITS_START, POSITIONS_METADATA, TOP_IDS, TOP_K, TOP_LOGITS
from .errors import ModelFolderError

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT = re.compile(r"^present\.(\d+)\.(key|value)$")
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class GraphSpec:
    """The shape of an exported decoder graph, read from its ONNX session."""

    past_names: tuple[str, ...]  # past_key_values.{i}.key, .value, in layer order
    present_names: tuple[str, ...]  # present.{i}.key, .value, matching past_names
    has_attention_mask: bool
    has_position_ids: bool
    kv_heads: int
    head_dim: int
    cache_dtype: type  # numpy dtype of the KV cache
    fused: bool = False  # a tweetgen fused graph: one buffer may be bound as both past and present (contract)
    vocab_size: int | None = None  # the logits' last dimension, when the graph fixes it
    has_logits_start: bool = False  # input logits_start: logits only from this position on (contract)
    has_top_k: bool = False  # input top_k, outputs top_logits and top_ids: each row's best tokens (contract)
    positions: int | None = None  # the positions the graph's tables hold, when its metadata says (contract)

    @property
    def layers(self) -> int:
        return len(self.past_names) // 2


def step_feeds(spec: GraphSpec, ids: np.ndarray, past_length: int) -> dict[str, np.ndarray]:
    """Every input but the cache for a run of `ids` (B, S) after `past_length` cached tokens (no padding)."""
    batch, new = ids.shape
    feeds = {"input_ids": ids.astype(np.int64, copy=False)}
    if spec.has_attention_mask:
        feeds["attention_mask"] = np.ones((batch, past_length + new), dtype=np.int64)
    if spec.has_position_ids:
        positions = np.arange(past_length, past_length + new, dtype=np.int64)
        feeds["position_ids"] = np.broadcast_to(positions, (batch, new)).copy()
    if spec.has_logits_start:  # every position's logits (see last_logits_only)
        feeds[LOGITS_START] = np.zeros(1, dtype=np.int64)
    if spec.has_top_k:  # 0: the caller reads the logits
        feeds[TOP_K] = np.zeros(1, dtype=np.int64)
    return feeds


def last_logits_only(spec: GraphSpec, feeds: dict[str, np.ndarray], new: int) -> dict[str, np.ndarray]:
    """Ask a graph that can for the logits of the last of `new` positions only (the only ones decoding needs)."""
    if spec.has_logits_start:  # given at every step: an IO binding keeps what it was last given
        feeds[LOGITS_START] = np.array([new - 1], dtype=np.int64)
    return feeds


def read_graph_spec(session: ort.InferenceSession, config: dict) -> GraphSpec:
    """Find the decoder's inputs and outputs; cross-check them with config.json. Raises ModelFolderError."""
    inputs = {i.name: i for i in (*session.get_inputs(), *session.get_overridable_initializers())}
    outputs = [o.name for o in session.get_outputs()]
    logits_shape = next((o.shape for o in session.get_outputs() if o.name == "logits"), [None])
    past = sorted((int(m[1]), m[2] == "value", name) for name in inputs if (m := _PAST.match(name)))
    present = sorted((int(m[1]), m[2] == "value", name) for name in outputs if (m := _PRESENT.match(name)))
    problems = []
    if "input_ids" not in inputs or "logits" not in outputs:
        problems.append("it has no input_ids input or no logits output")
    if not past or [p[:2] for p in past] != [p[:2] for p in present]:
        problems.append("its past_key_values.* inputs and present.* outputs do not match (export with KV cache: "
                        "task text-generation-with-past)")
    layers = config.get("n_layer", config.get("num_hidden_layers"))
    if past and layers is not None and len(past) != 2 * layers:
        problems.append(f"it has {len(past) // 2} layers of KV cache but config.json says {layers}")
    fed = {"input_ids", ATTENTION_MASK, "position_ids", *(p[2] for p in past)}
    unknown = [i.name for i in session.get_inputs() if i.name not in fed]
    if unknown:
        problems.append(f"it needs inputs this runtime does not feed: {', '.join(unknown)} (an export from another "
                        "tweetgen version, or not a text-generation-with-past graph)")
    if problems:
        raise ModelFolderError(f"the ONNX graph is not a decoder this runtime can run: {'; '.join(problems)}. "
                               f"Inputs: {', '.join(inputs)}")
    first = inputs[past[0][2]]
    heads = config.get("num_key_value_heads") or config.get("n_head") or config.get("num_attention_heads")
    hidden = config.get("n_embd") or config.get("hidden_size")
    kv_heads = first.shape[1] if isinstance(first.shape[1], int) else heads
    head_dim = first.shape[3] if isinstance(first.shape[3], int) else config.get("head_dim") or hidden // (
        config.get("n_head") or config.get("num_attention_heads"))
    metadata = session.get_modelmeta().custom_metadata_map
    positions = metadata.get(POSITIONS_METADATA, "")
    if first.type not in _DTYPES:
        raise ModelFolderError(f"KV cache of type {first.type} is not supported; allowed: {', '.join(_DTYPES)}")
    return GraphSpec(
        past_names=tuple(p[2] for p in past), present_names=tuple(p[2] for p in present),
        has_attention_mask=ATTENTION_MASK in inputs, has_position_ids="position_ids" in inputs,
        kv_heads=int(kv_heads), head_dim=int(head_dim), cache_dtype=_DTYPES[first.type],
        fused=FUSED_METADATA in metadata and ATTENTION_MASK in inputs,
        has_logits_start=LOGITS_START in inputs,
        has_top_k=TOP_K in inputs and TOP_LOGITS in outputs and TOP_IDS in outputs,
        vocab_size=vocab if isinstance(vocab := logits_shape[-1], int) else None,
        positions=int(positions) if positions.isdigit() else None)


def feeds_for(spec: GraphSpec, ids: np.ndarray, past_length: int) -> dict[str, np.ndarray]:
    """Every input but the cache for a run of `ids` (B, S), asking for the last position's logits only."""
    return last_logits_only(spec, step_feeds(spec, ids, past_length), ids.shape[1])


def empty_past(spec: GraphSpec, batch: int, capacity: int = 0) -> list[np.ndarray]:
    """The cache before the prompt: empty, or zeroed buffers of `capacity` positions each (in-place runs)."""
    shape = (batch, spec.kv_heads, capacity, spec.head_dim)
    if capacity:
        return [np.zeros(shape, dtype=spec.cache_dtype) for _ in spec.past_names]
    return [np.zeros(shape, dtype=spec.cache_dtype)] * len(spec.past_names)


def run_plain(session: ort.InferenceSession, spec: GraphSpec, ids: np.ndarray, past: list, past_length: int
              ) -> tuple[np.ndarray, list]:
    """One run with numpy feeds: the last position's logits (B, V) and the new cache."""
    feeds = feeds_for(spec, ids, past_length)
    feeds.update(zip(spec.past_names, past))
    logits, *present = session.run(["logits", *spec.present_names], feeds)  # logits: (B, S, V)
    return logits[:, -1, :].astype(np.float32, copy=False), present

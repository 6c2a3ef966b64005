"""An fp32 graph whose output layer reads a quarter of its weights for greedy decoding and top-k sampling, with
the same result.

At batch 1 a decoding step reads every weight once, and GPT-2's output layer is a third of them (50,257 x 768 fp32:
154 MB of 494). Greedy decoding and top-k sampling need only each row's k largest logits, so `screen_output_layer`
puts an `If` on `top_k` in place of the output layer's MatMul and TopK:

- 0 < top_k <= CANDIDATES / 4: every logit is first estimated from an 8-bit copy of the output layer (a scale per
  token, 39 MB for GPT-2) by onnxruntime's MatMulInteger, each with a bound on its error (below). The CANDIDATES
  tokens of largest estimate + bound get their exact fp32 logits (their rows of the fp32 embedding table), and the
  top_k largest of those are the answer, provided the k-th of them is larger than every other token's estimate +
  bound: no token outside the candidates can then be in the top k. When that does not hold (flat logits, a NaN),
  the step computes every logit, as the plain graph does.
- otherwise (top_k 0: the caller reads `logits`; or a larger top_k): every logit, then TopK.

The estimate and its bound, for a hidden state h (one row, fp32) and a token's fp32 row w: h is rounded to 14-bit
integers u (a step and a zero point for the whole tensor: h~ = (u - zero) * step), fed to MatMulInteger as two
7-bit digits (two rows of uint8), and w~ is the 8-bit row times its scale; the estimate is h~ . w~. Since
h . w - h~ . w~ = h . (w - w~) + (h - h~) . w~, Cauchy-Schwarz gives |h . w - h~ . w~| <= |h| |w - w~| + |h - h~| |w~|.
The graph computes |h| and |h - h~| each step; |w - w~| and |w~| are stored per token, with margins for the float32
roundings of the estimate and of the exact logits. So the screened graph picks the tokens the full product would,
up to float rounding of exact ties (its candidates' logits come from another kernel: they may differ from the full
product's in the last bits). The digits are 7-bit because onnxruntime multiplies uint8 by int8 in pairs that
saturate at 16 bits on x86 CPUs without VNNI: 2 x 127 x 127 stays below that, and a saturated sum would break the
bound. A first try with h in 8 bits and 7-bit weights bounded SmolLM2-135M's logits within ~7 (its top-1 to
512th gaps: 6-10) and fell back in 25 of 96 greedy steps and all top-50 ones; this one fell back in none of 96
greedy and 96 top-50 steps, on SmolLM2-135M and on the GPT-2 124M shape with random weights.

Only tied output layers are screened (GPT-2, SmolLM2): the exact rows are then the embedding's, already in the
file; the screen adds the 8-bit copy and four numbers a token (GPT-2: +39 MB). The int8 and fp16 variants keep the
plain layer: int8's output layer is already a quarter of fp32's, and the fp16 graph is for CUDA, where
MatMulInteger has no kernel.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)
CANDIDATES = 512  # tokens whose exact logits a screened step computes
SCREEN_WEIGHT = "screen.weight"  # the 8-bit copy's initializer: marks a screened graph
_LEVELS = 127  # 8-bit symmetric weights
_DIGIT = 128.0  # h as two 7-bit digits: 14 bits
_STEPS = _DIGIT * _DIGIT - 1


class ScreenError(ValueError):
    """The graph is not one `screen_output_layer` can rewrite."""


def is_screened(model: onnx.ModelProto) -> bool:
    return any(t.name == SCREEN_WEIGHT for t in model.graph.initializer)


def screen_candidates(model: onnx.ModelProto) -> int:
    """The candidates for a graph's vocabulary (its `logits` output's last dimension): CANDIDATES, or a quarter of a
    smaller vocabulary."""
    logits = next((o for o in model.graph.output if o.name == "logits"), None)
    dims = logits.type.tensor_type.shape.dim if logits is not None else []
    vocab = dims[-1].dim_value if dims else 0
    return min(CANDIDATES, vocab // 4)


def screen_output_layer(model: onnx.ModelProto, *, candidates: int = CANDIDATES) -> onnx.ModelProto:
    """Rewrite, in place, a trainer.fuse graph's output layer (MatMul -> `logits`, TopK -> `top_logits`,
    `top_ids`), tied to the token embedding (the table a Gather reads at `input_ids`), as the screened `If`
    described above, with `candidates` exact logits a step and top_k up to a quarter of that. Returns `model`;
    ScreenError for a graph it cannot screen (the message says why)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    head = next((n for n in graph.node if n.op_type == "MatMul" and list(n.output) == ["logits"]), None)
    top = next((n for n in graph.node if n.op_type == "TopK" and list(n.output) == ["top_logits", "top_ids"]), None)
    if is_screened(model):
        raise ScreenError("the graph's output layer is screened already")
    if head is None or top is None or list(top.input) != ["logits", "top_k"] or head.input[1] not in inits:
        raise ScreenError("the graph has no output layer MatMul -> logits with a TopK on top_k (a trainer.fuse graph)")
    table = next((n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[1] == "input_ids"
                  and n.input[0] in inits), None)
    if table is None:
        raise ScreenError("the graph has no token embedding (a Gather of a constant table at input_ids)")
    rows = numpy_helper.to_array(inits[table])
    columns = numpy_helper.to_array(inits[head.input[1]])
    if rows.dtype != np.float32 or columns.shape != rows.shape[::-1] or not np.array_equal(columns.T, rows):
        raise ScreenError(f"the output layer is not tied to the float32 token embedding {table!r}: only a tied "
                          f"layer is screened")
    vocab, width = rows.shape
    if not 4 <= candidates < vocab:
        raise ScreenError(f"candidates must be at least 4 and fewer than the vocabulary ({vocab}), not {candidates}")

    quantized, scale, weight_error, quantized_norm, quantized_l1 = _quantize_rows(rows)
    margin = (4 * width + 64) * 2.0 ** -24  # float32 roundings of a dot product, relative to |h| |w|
    norms = np.linalg.norm(rows.astype(np.float64), axis=1)
    consts = [
        numpy_helper.from_array(np.ascontiguousarray(quantized.T), SCREEN_WEIGHT),  # (width, vocab) int8
        numpy_helper.from_array(scale, "screen.scale"),
        numpy_helper.from_array(quantized.sum(axis=1, dtype=np.int64).astype(np.float32), "screen.column_sum"),
        numpy_helper.from_array(_up(weight_error + margin * norms), "screen.per_h"),  # times |h|
        numpy_helper.from_array(_up(quantized_norm * (1 + margin)), "screen.per_e"),  # times |h - h~|
        # times the range of h: the estimate's integer part is rounded to float32 four times, each time by at most
        # 2^-24 of sums up to 2 x 16383 x sum|q|, i.e. 8 x 2^-24 x range x sum|w~| in all; twice that
        numpy_helper.from_array(_up(16 * 2.0 ** -24 * quantized_l1), "screen.per_range"),
        numpy_helper.from_array(np.array([[_DIGIT, 1.0]], dtype=np.float32), "screen.digits_row"),
        numpy_helper.from_array(np.float32(_STEPS), "screen.steps"),
        numpy_helper.from_array(np.float32(_DIGIT), "screen.digit"),
        numpy_helper.from_array(np.float32(0), "screen.fzero"),
        numpy_helper.from_array(np.float32(1e-30), "screen.tiny"),
        numpy_helper.from_array(np.array([candidates], dtype=np.int64), "screen.candidates"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "screen.zero"),
        numpy_helper.from_array(np.array([candidates // 4], dtype=np.int64), "screen.max_k"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "screen.last"),
        numpy_helper.from_array(np.array([-2], dtype=np.int64), "screen.second_last"),
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max], dtype=np.int64), "screen.end"),
    ]
    x, columns_name = head.input[0], head.input[1]
    make = helper.make_node

    def full(prefix: str, k: str) -> onnx.GraphProto:  # every logit, then TopK
        nodes = [make("MatMul", [x, columns_name], [f"{prefix}_logits"]),
                 make("TopK", [f"{prefix}_logits", k], [f"{prefix}_values", f"{prefix}_ids"], axis=-1, largest=1,
                      sorted=1)]
        return helper.make_graph(nodes, prefix, [], _outputs(prefix))

    nodes = [
        # h as 14-bit integers u in [0, 16383] (a scale and zero point for the whole tensor), in two 7-bit digits
        make("ReduceMin", [x], ["s_min"], keepdims=0), make("ReduceMax", [x], ["s_max"], keepdims=0),
        make("Min", ["s_min", "screen.fzero"], ["s_low"]), make("Max", ["s_max", "screen.fzero"], ["s_high"]),
        make("Sub", ["s_high", "s_low"], ["s_range"]),
        make("Div", ["s_range", "screen.steps"], ["s_step0"]),
        make("Max", ["s_step0", "screen.tiny"], ["s_step"]),  # (an all-zero h)
        make("Div", ["s_low", "s_step"], ["s_low_steps"]), make("Neg", ["s_low_steps"], ["s_zero_raw"]),
        make("Round", ["s_zero_raw"], ["s_zero"]),
        make("Div", [x, "s_step"], ["s_scaled"]), make("Round", ["s_scaled"], ["s_rounded"]),
        make("Add", ["s_rounded", "s_zero"], ["s_shifted"]),
        make("Clip", ["s_shifted", "screen.fzero", "screen.steps"], ["s_u"]),  # integers, exact in float32
        make("Div", ["s_u", "screen.digit"], ["s_u_high_raw"]), make("Floor", ["s_u_high_raw"], ["s_u_high"]),
        make("Mul", ["s_u_high", "screen.digit"], ["s_u_high_part"]), make("Sub", ["s_u", "s_u_high_part"], ["s_u_low"]),
        make("Unsqueeze", ["s_u_high", "screen.second_last"], ["s_high_row"]),
        make("Unsqueeze", ["s_u_low", "screen.second_last"], ["s_low_row"]),
        make("Concat", ["s_high_row", "s_low_row"], ["s_digits_f"], axis=-2),  # (B, S, 2, width)
        make("Cast", ["s_digits_f"], ["s_digits"], to=TensorProto.UINT8),
        # sum_i u_i q_ji = 128 (high digits . q_j) + (low digits . q_j), then minus the zero point's share
        make("MatMulInteger", ["s_digits", SCREEN_WEIGHT], ["s_acc"]),  # (B, S, 2, vocab) int32, exact
        make("Cast", ["s_acc"], ["s_accf"], to=TensorProto.FLOAT),
        make("MatMul", ["screen.digits_row", "s_accf"], ["s_uq_row"]),  # (B, S, 1, vocab)
        make("Squeeze", ["s_uq_row", "screen.second_last"], ["s_uq"]),
        make("Mul", ["s_zero", "screen.column_sum"], ["s_zero_share"]),
        make("Sub", ["s_uq", "s_zero_share"], ["s_integer_estimate"]),
        make("Mul", ["s_step", "screen.scale"], ["s_scale"]),
        make("Mul", ["s_integer_estimate", "s_scale"], ["s_estimate"]),  # (B, S, vocab)
        # the bound: |h| |w - w~| + |h - h~| |w~| + the float roundings of the estimate
        make("Sub", ["s_u", "s_zero"], ["s_centered"]), make("Mul", ["s_centered", "s_step"], ["s_dequantized"]),
        make("Sub", [x, "s_dequantized"], ["s_xerr"]),
        make("ReduceL2", ["s_xerr"], ["s_errnorm"], axes=[-1], keepdims=1),  # (B, S, 1)
        make("ReduceL2", [x], ["s_xnorm"], axes=[-1], keepdims=1),
        make("Mul", ["s_xnorm", "screen.per_h"], ["s_bound_h"]),
        make("Mul", ["s_errnorm", "screen.per_e"], ["s_bound_e"]),
        make("Mul", ["s_range", "screen.per_range"], ["s_bound_r"]),
        make("Add", ["s_estimate", "s_bound_h"], ["s_upper_h"]),
        make("Add", ["s_upper_h", "s_bound_e"], ["s_upper_e"]),
        make("Add", ["s_upper_e", "s_bound_r"], ["s_upper"]),  # no token's logit exceeds its upper
        make("TopK", ["s_upper", "screen.candidates"], ["s_cand_upper", "s_cand"], axis=-1, largest=1, sorted=1),
        make("Slice", ["s_cand_upper", "screen.last", "screen.end", "screen.last"], ["s_outside"]),  # (B, S, 1)
        make("Gather", [table, "s_cand"], ["s_rows"]),  # (B, S, CANDIDATES, width)
        make("Unsqueeze", [x, "screen.last"], ["s_xcol"]),  # (B, S, width, 1)
        make("MatMul", ["s_rows", "s_xcol"], ["s_exact_col"]),
        make("Squeeze", ["s_exact_col", "screen.last"], ["s_exact"]),  # (B, S, CANDIDATES)
        make("TopK", ["s_exact", "top_k"], ["s_values", "s_pos"], axis=-1, largest=1, sorted=1),
        make("GatherElements", ["s_cand", "s_pos"], ["s_ids"], axis=-1),
        make("Slice", ["s_values", "screen.last", "screen.end", "screen.last"], ["s_kth"]),
        make("Greater", ["s_kth", "s_outside"], ["s_row_ok"]),  # false for a NaN too
        make("Not", ["s_row_ok"], ["s_row_bad"]),
        make("Cast", ["s_row_bad"], ["s_row_bad_i"], to=TensorProto.INT32),
        make("ReduceMax", ["s_row_bad_i"], ["s_any_bad_i"], keepdims=0),
        make("Cast", ["s_any_bad_i"], ["s_any_bad"], to=TensorProto.BOOL),
    ]
    kept = [make("Identity", ["s_values"], ["kept_values"]), make("Identity", ["s_ids"], ["kept_ids"]),
            make("Shape", ["s_exact"], ["kept_shape"], end=-1),
            make("Concat", ["kept_shape", "screen.zero"], ["kept_empty_shape"], axis=0),
            make("ConstantOfShape", ["kept_empty_shape"], ["kept_logits"],
                 value=numpy_helper.from_array(np.zeros(1, dtype=np.float32)))]
    kept_graph = helper.make_graph(kept, "kept", [], _outputs("kept"))
    nodes.append(make("If", ["s_any_bad"], ["s_out_logits", "s_out_values", "s_out_ids"],
                      then_branch=full("recheck", "top_k"), else_branch=kept_graph))
    screened = helper.make_graph(nodes, "screened", [], [
        helper.make_tensor_value_info("s_out_logits", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("s_out_values", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("s_out_ids", TensorProto.INT64, None)])

    choose = [make("Greater", ["top_k", "screen.zero"], ["screen_k_positive"]),
              make("LessOrEqual", ["top_k", "screen.max_k"], ["screen_k_small"]),
              make("And", ["screen_k_positive", "screen_k_small"], ["screen_k_ok"]),
              make("Squeeze", ["screen_k_ok"], ["screen_cond"]),
              make("If", ["screen_cond"], ["logits", "top_logits", "top_ids"], then_branch=screened,
                   else_branch=full("every", "top_k"), name="ScreenedOutputLayer")]
    at = list(graph.node).index(head)
    nodes_after = [n for n in graph.node if n is not head and n is not top]
    del graph.node[:]
    graph.node.extend(nodes_after[:at] + choose + nodes_after[at:])
    graph.initializer.extend(consts)
    return model


def screen_file(path: Path) -> int | None:
    """Screen the fp32 graph file at `path` in place (its external data too, for a model over 2 GB) with
    screen_candidates' candidates; returns them, or None (logged) for a graph that cannot be screened."""
    from trainer.quantize import is_large, save_onnx  # (trainer.quantize imports this module)

    large = is_large(path)
    model = onnx.load(str(path))
    candidates = screen_candidates(model)
    try:
        screen_output_layer(model, candidates=candidates)
    except ScreenError as exc:
        log.info("%s: output layer not screened: %s", path, exc)
        return None
    save_onnx(model, path, large)
    return candidates


def unscreen(model: onnx.ModelProto) -> onnx.ModelProto:
    """Undo screen_output_layer in place: the plain MatMul -> logits and TopK again (what the int8 and fp16
    conversions start from). A graph that is not screened is returned as it is."""
    graph = model.graph
    node = next((n for n in graph.node if n.op_type == "If" and n.name == "ScreenedOutputLayer"), None)
    if node is None:
        return model
    every = next(a.g for a in node.attribute if a.name == "else_branch")
    head = next(n for n in every.node if n.op_type == "MatMul")
    plain = [helper.make_node("MatMul", list(head.input), ["logits"], name="OutputLayer"),
             helper.make_node("TopK", ["logits", "top_k"], ["top_logits", "top_ids"], name="OutputTopK", axis=-1,
                              largest=1, sorted=1)]
    kept = []
    for n in graph.node:
        if n is node:
            kept += plain
        elif not all(out.startswith("screen_") for out in n.output):  # the If's condition
            kept.append(n)
    del graph.node[:]
    graph.node.extend(kept)
    inits = [t for t in graph.initializer if not t.name.startswith("screen.") and t.name != SCREEN_WEIGHT]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return model


def _outputs(prefix: str) -> list[onnx.ValueInfoProto]:
    return [helper.make_tensor_value_info(f"{prefix}_logits", TensorProto.FLOAT, None),
            helper.make_tensor_value_info(f"{prefix}_values", TensorProto.FLOAT, None),
            helper.make_tensor_value_info(f"{prefix}_ids", TensorProto.INT64, None)]


def _quantize_rows(rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """8-bit symmetric rows with a float32 scale each; per row (float64, w~ = q * scale): |w - w~|, |w~|, and
    the sum of |w~_i|."""
    largest = np.abs(rows).max(axis=1)
    scale = (np.where(largest > 0, largest, 1.0) / _LEVELS).astype(np.float32)
    quantized = np.clip(np.rint(rows / scale[:, None]), -_LEVELS, _LEVELS).astype(np.int8)
    approx = quantized.astype(np.float64) * scale.astype(np.float64)[:, None]
    error = np.linalg.norm(rows.astype(np.float64) - approx, axis=1)
    return quantized, scale, error, np.linalg.norm(approx, axis=1), np.abs(approx).sum(axis=1)


def _up(values: np.ndarray) -> np.ndarray:
    """float64 -> the float32 at or above each value."""
    result = values.astype(np.float32)
    low = result.astype(np.float64) < values
    result[low] = np.nextafter(result[low], np.float32(np.inf))
    return result

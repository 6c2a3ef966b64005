"""The int8 (CPU) and fp16 (GPU) variants of an exported model.onnx; the fp32 file itself is never modified.

The int8 variant comes in two kinds. "blockwise" keeps 8-bit weights in blocks of 32 along each linear layer's input,
each block with its own scale (onnxruntime's MatMulNBits, bits=8, symmetric), and computes with int8 activations
quantized per block as well (accuracy_level 4, the VNNI path). "per_tensor" is dynamic quantization with one scale
per tensor (MatMulInteger): faster on x86 with VNNI and fine on GPT-2, but llama-family activations have outliers
that one uint8 scale per tensor cannot hold, so the export keeps "per_tensor" only when it passes the perplexity
check. Embedding tables are int8 too: "per_tensor" with onnxruntime's Gather quantization (one scale a table),
"blockwise" with a scale per row (`_embeddings_per_row`), which llama-family tables need. The measurements behind
these choices are in benchmarks/README.md ("Quantization choices").

Quantizers only touch MatMul nodes whose weight is a constant. Optimum exports GPT-2's linear layers as Gemm and
feeds the output layer a `Transpose(wte)`, so `quantize_int8` first rewrites a copy of the graph (Gemm -> MatMul +
Add, constant Transposes folded into initializers).

Graphs over 2 GB (protobuf's limit) are read and written with external data (`<file>.data` next to the .onnx), and
so is an int8 model over EXTERNAL_DATA_BYTES (onnxruntime then maps its weights instead of copying them at load).
Both steps hold the whole model in memory, so they need about 3x the fp32 model's size in RAM.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)
PROTOBUF_LIMIT = 2**31 - 2**24  # bytes; above this (with some margin) a model must keep its weights outside the .onnx
INT8_BLOCK = 32  # weights per scale along a linear layer's input dimension
EXTERNAL_DATA_BYTES = 64 * 2**20  # an int8 model above this keeps its weights in `<file>.data` (see quantize_int8)
INT4_BLOCK = 32  # 4-bit weights per scale (quantize_int4)
INT8_METHODS = ("blockwise", "per_tensor")  # accurate everywhere / faster on x86 VNNI, fine on GPT-2
# The 4-bit kinds the export tries, fastest first (measurements in benchmarks/README.md, "Quantization choices"):
# "fast": blocks of 128 and the output layer 4-bit too (GPT-2 124M shape: 2.0 ms a token against llama.cpp q4_0's
# 3.1; +0.07% perplexity on a fine-tuned 17M GPT-2); "accurate": blocks of 32 and an 8-bit output layer (2.8 ms;
# -0.00% on the 17M GPT-2).
INT4_KINDS = {"fast": {"block_size": 128, "output_layer_bits": 4},
              "accurate": {"block_size": INT4_BLOCK, "output_layer_bits": 8}}


def quantize_int8(fp32_path: str | Path, out_path: str | Path, *, method: str = "blockwise",
                  block_size: int = INT8_BLOCK) -> int:
    """Write an int8 copy of an ONNX decoder: int8 linear layers and an int8 embedding table.

    Args:
        fp32_path: the fp32 model.onnx (left untouched).
        out_path: where to write the int8 model, e.g. model_quantized.onnx next to it.
        method: "blockwise" (8-bit MatMulNBits, a scale per `block_size` weights, int8 compute) or "per_tensor"
            (MatMulInteger, one scale per weight tensor and per activation tensor: faster, but far less accurate on
            llama-family models).
        block_size: weights sharing one scale in "blockwise" (a power of two, 16 or more).

    Returns:
        The number of quantized linear layers in the written model.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if method not in INT8_METHODS:
        raise ValueError(f"int8 method must be one of {', '.join(INT8_METHODS)}, not {method!r}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    model = onnx.load(str(fp32_path))
    large = is_large(fp32_path)
    gemms, transposes = prepare_for_quantization(model)
    log.info("int8: rewrote %d Gemm as MatMul + Add, folded %d constant Transpose", gemms, transposes)
    if method == "blockwise":
        tables = _embeddings_per_row(model.graph)
        log.info("int8: %d embedding tables stored int8 with a scale per row", tables)
        model = _blockwise_linear_layers(model, block_size)
        save_onnx(model, out_path, large)
        del model
    else:
        with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".quantize-") as scratch:
            prepared = Path(scratch) / "prepared.onnx"
            save_onnx(model, prepared, large)
            del model
            quantize_dynamic(prepared, out_path, op_types_to_quantize=["MatMul", "Gather"], per_channel=False,
                             weight_type=QuantType.QInt8, use_external_data_format=large,
                             # shape inference cannot type the outputs of onnxruntime's fused ops (export.fuse)
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return _finish_quantized(fp32_path, out_path, large, f"int8 ({method})")


def quantize_int4(fp32_path: str | Path, out_path: str | Path, *, block_size: int = INT4_BLOCK,
                  output_layer_bits: int = 8) -> int:
    """Write a 4-bit copy of an ONNX decoder: the linear layers as 4-bit MatMulNBits (symmetric, a scale per
    `block_size` weights along the input, int8 compute), the token embedding int8 with a scale per row, and the
    output layer in `output_layer_bits` (8 or 4). INT4_KINDS holds the settings the export tries. Returns the number
    of quantized linear layers."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if output_layer_bits not in (4, 8):
        raise ValueError(f"output_layer_bits must be 4 or 8, not {output_layer_bits!r}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    model = onnx.load(str(fp32_path))
    large = is_large(fp32_path)
    prepare_for_quantization(model)
    _embeddings_per_row(model.graph)
    head = output_layer(model.graph)
    keep = [head] if head and output_layer_bits == 8 else []
    for bits, exclude in ((4, keep), (8, [])) if keep else ((4, []),):
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                         accuracy_level=4, nodes_to_exclude=exclude)
        quantizer.process()
        model = quantizer.model.model
    save_onnx(model, out_path, large)
    del model
    return _finish_quantized(fp32_path, out_path, large, f"int4 (blocks of {block_size}, output layer "
                                                         f"{output_layer_bits}-bit)")


def output_layer(graph: onnx.GraphProto) -> str | None:
    """The name of the MatMul that computes the logits (the first constant-weight MatMul met walking back from the
    `logits` output), or None."""
    producers = {out: node for node in graph.node for out in node.output}
    constants = {init.name for init in graph.initializer}
    todo, seen = ["logits"], set()
    while todo:
        node = producers.get(todo.pop(0))
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in constants:
            return node.name
        todo.extend(node.input)
    return None


def _finish_quantized(fp32_path: Path, out_path: Path, large: bool, label: str) -> int:
    """Give a quantized graph back the fp32 graph's output shapes, keep big weights outside the .onnx, log what was
    quantized; returns the number of quantized linear layers."""
    interface = _output_shapes(onnx.load(str(fp32_path), load_external_data=False))
    quantized = onnx.load(str(out_path))
    if _restore_output_shapes(quantized, interface) or (not large and out_path.stat().st_size > EXTERNAL_DATA_BYTES):
        # Weights in a file beside the graph are memory-mapped by onnxruntime instead of parsed into a copy first,
        # which lowers the load's peak memory.
        save_onnx(quantized, out_path, large or out_path.stat().st_size > EXTERNAL_DATA_BYTES)
    del quantized
    counts = count_ops(onnx.load(str(out_path), load_external_data=False))
    layers = counts.get("MatMulNBits", 0) + counts.get("MatMulInteger", 0)
    log.info("%s: %d quantized linear layers, %d MatMul and %d Gemm left in fp32", label, layers,
             counts.get("MatMul", 0), counts.get("Gemm", 0))
    return layers


def _output_shapes(model: onnx.ModelProto) -> dict[str, list]:
    return {o.name: list(o.type.tensor_type.shape.dim) for o in model.graph.output}


def _restore_output_shapes(model: onnx.ModelProto, shapes: dict[str, list]) -> bool:
    """Give the outputs the shapes of the graph they were made from: the converters' shape inference fixes a
    dimension that a graph input sets (top_logits' last, from the default of the optional top_k input: 0), and
    onnxruntime then refuses an output bound with another size. Intermediate values inferred with such a 0 lose
    their shape too. True when anything changed."""
    inferred = [v for v in model.graph.value_info
                if any(d.HasField("dim_value") and d.dim_value == 0 for d in v.type.tensor_type.shape.dim)]
    for value in inferred:
        model.graph.value_info.remove(value)
    changed = bool(inferred)
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        if output.name in shapes and list(dims) != shapes[output.name]:
            del dims[:]
            dims.extend(shapes[output.name])
            changed = True
    return changed


def _embeddings_per_row(graph: onnx.GraphProto) -> int:
    """Store the token embedding (a constant float table only Gathers read, at the graph's input_ids) as int8 rows
    with an fp32 scale per row: Gather(table, ids) becomes Gather(int8 table, ids) -> Cast -> Mul by
    Gather(scales, ids). Symmetric: a row's scale is its largest magnitude / 127. Other tables (positions, rotary
    caches) stay as they are. Returns how many tables were rewritten."""
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    tables = [name for name, init in initializers.items()
              if len(init.dims) == 2 and init.data_type == onnx.TensorProto.FLOAT and readers.get(name)
              and all(n.op_type == "Gather" and n.input[0] == name and n.input[1] == "input_ids"
                      and all(a.name != "axis" or a.i == 0 for a in n.attribute) for n in readers[name])]
    if not tables:
        return 0
    nodes, rewritten = [], {}
    for name in tables:
        table = numpy_helper.to_array(initializers[name]).astype(np.float32)
        scale = np.abs(table).max(axis=1, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        quantized = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
        rewritten[name] = (numpy_helper.from_array(quantized, f"{name}_int8"),
                           numpy_helper.from_array(scale.astype(np.float32), f"{name}_row_scale"))
    for node in graph.node:
        if node.op_type != "Gather" or node.input[0] not in rewritten:
            nodes.append(node)
            continue
        table, ids, out = node.input[0], node.input[1], node.output[0]
        stem = node.name or out
        nodes += [helper.make_node("Gather", [f"{table}_int8", ids], [f"{stem}/int8"], name=f"{stem}/GatherInt8"),
                  helper.make_node("Cast", [f"{stem}/int8"], [f"{stem}/float"], name=f"{stem}/Cast",
                                   to=onnx.TensorProto.FLOAT),
                  helper.make_node("Gather", [f"{table}_row_scale", ids], [f"{stem}/scale"],
                                   name=f"{stem}/GatherScale"),
                  helper.make_node("Mul", [f"{stem}/float", f"{stem}/scale"], [out], name=f"{stem}/Scale")]
    _replace_nodes(graph, nodes)
    kept = [init for init in graph.initializer if init.name not in rewritten]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for quantized, scale in rewritten.values():
        graph.initializer.extend([quantized, scale])
    return len(rewritten)


def _blockwise_linear_layers(model: onnx.ModelProto, block_size: int) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    return quantizer.model.model


def convert_fp16(fp32_path: str | Path, out_path: str | Path) -> None:
    """Write a float16 copy of an ONNX decoder, for CUDA. Runs on a CPU-only machine.

    Inputs and outputs become float16 too (past/present KV cache and logits), as in Optimum's own fp16 exports:
    the cache then takes half the GPU memory, and the runtime reads the cache dtype from the session and casts
    logits to float32 itself. Constants beyond float16's range (attention masks use float32's minimum) are
    clamped to +-65504 by the converter.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    model = onnx.load(str(fp32_path))
    interface = _output_shapes(model)
    large = is_large(fp32_path)
    # The converter runs onnx shape inference, which cannot take a proto over 2 GB: skip it then.
    model = convert_float_to_float16(model, keep_io_types=False, disable_shape_infer=large)
    # The converter keeps some ops in float32 (TopK among them) and appends the casts it puts before them at the end
    # of the graph, after their readers: put the nodes back in an order onnx accepts.
    OnnxModel(model).topological_sort()
    _restore_output_shapes(model, interface)
    save_onnx(model, out_path, large)


def prepare_for_quantization(model: onnx.ModelProto) -> tuple[int, int]:
    """Rewrite `model` in place so that the dynamic quantizer sees every constant-weight linear layer as MatMul.

    Returns (Gemm nodes rewritten, Transpose nodes folded).
    """
    folded = _fold_constant_transposes(model.graph)
    rewritten = _gemm_to_matmul(model.graph)
    return rewritten, folded


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the main graph has."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _fold_constant_transposes(graph: onnx.GraphProto) -> int:
    """Replace each Transpose of an initializer by a transposed initializer of the same output name."""
    initializers = {init.name: init for init in graph.initializer}
    keep, folded = [], 0
    for node in graph.node:
        if node.op_type != "Transpose" or node.input[0] not in initializers:
            keep.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[0]])
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(np.transpose(weight, perm)),
                                                         node.output[0]))
        folded += 1
    _replace_nodes(graph, keep)
    return folded


def _gemm_to_matmul(graph: onnx.GraphProto) -> int:
    """Gemm(A, W, b) with a constant W, alpha = beta = 1 and no transA becomes MatMul(A, W) + b."""
    initializers = {init.name: init for init in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in initializers or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight_name = node.input[1]
        if attrs.get("transB", 0):  # (out, in) -> (in, out), as a new initializer: others may read the old one
            transposed = f"{weight_name}_transposed_for_matmul"
            if transposed not in initializers:
                weight = np.ascontiguousarray(numpy_helper.to_array(initializers[weight_name]).T)
                initializers[transposed] = numpy_helper.from_array(weight, transposed)
                graph.initializer.append(initializers[transposed])
            weight_name = transposed
        name = node.name or f"gemm_{rewritten}"
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{name}/MatMul_output_0" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [product], name=f"{name}/MatMul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{name}/Add"))
        rewritten += 1
    _replace_nodes(graph, nodes)
    return rewritten


def _replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    del graph.node[:]
    graph.node.extend(nodes)


def is_large(fp32_path: Path) -> bool:
    """True when the model and its external data together pass the protobuf limit."""
    size = fp32_path.stat().st_size
    size += sum(p.stat().st_size for p in fp32_path.parent.glob(f"{fp32_path.name}*data"))
    return size > PROTOBUF_LIMIT


def save_onnx(model: onnx.ModelProto, path: Path, large: bool) -> None:
    """Write `model` to `path`; `large`: its weights into `<name>.data` beside it (readable by all, like the graph)."""
    if large:
        data = path.with_name(f"{path.name}.data")
        data.unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        data.chmod(0o644)
    else:
        onnx.save_model(model, str(path))

"""Lean GPT-2 and Llama decoder graphs, built straight from a model's weights with onnxruntime's fused operators.

Optimum's GPT-2 graph computes every shape at run time: about 1,400 nodes for GPT-2 124M, most of them Shape,
Gather, Concat, Unsqueeze and Reshape on tiny tensors. At batch 1 those cost onnxruntime more time per token than the
int8 matrix products themselves. `fused_gpt2` writes the same model as about 10 nodes a layer: LayerNormalization,
MatMul (+ bias), com.microsoft GroupQueryAttention (causal, with as many KV heads as heads), FastGelu, residual Adds.
`fused_llama` does the same for Llama models such as SmolLM2 (12 nodes a layer), with GroupQueryAttention's own rotary
embedding and real grouped KV heads.

The graph's interface is Optimum's (text-generation-with-past), so that Optimum's ORTModelForCausalLM, and
`transformers.pipeline` through it, load the folder as it is; tweetgen's additions are optional inputs that have
defaults and extra outputs nobody has to read. The contract, whose names are `tweetgen.contract`'s constants:
- inputs `input_ids` (B, S), `attention_mask` (B, past + S), `position_ids` (B, S; GPT-2 only: GroupQueryAttention
  places Llama's rotary positions itself), `past_key_values.{i}.key/value` (B, kv heads, past, head size). The mask is
  read for its row sums and its length only (GroupQueryAttention's `seqlens_k` = row sum - 1 and
  `total_sequence_length` = its length, computed inside the graph): rows are unpadded, or padded on the right.
  Left padding, which Optimum's batched generation uses, is not supported; one prompt, or n samples of one prompt,
  always works.
- optional `logits_start` (int64, (1,), default 0): the first position whose logits are computed. The runtime asks for
  the last position only, which saves the output layer's work for every other position of a prompt.
- optional `top_k` (int64, (1,), default 0): outputs `top_logits`/`top_ids` (B, positions, top_k) are each position's
  top_k largest logits, largest first (equal ones: the lower id first), and their ids, so that greedy decoding and
  top-k sampling read k numbers a row instead of the vocabulary's.
- outputs `logits` (B, S - logits_start, vocabulary), `present.{i}.key/value` (B, kv heads, past + S, head size).
- Given one buffer of capacity >= past + S as both past and present (IO binding), GroupQueryAttention writes the new
  keys and values into it in place: the runtime's CPU path does that, so the cache is never copied per token. The
  graph says it can (metadata `tweetgen.contract.FUSED_METADATA`); Optimum's graphs cannot.
GroupQueryAttention has CUDA kernels for fp16 only: the fp32 graph on CUDA runs that node on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tweetgen.contract import (ATTENTION_MASK, CONTRACT_VERSION, FUSED_METADATA, LOGITS_START, POSITIONS_METADATA,
                               TOP_IDS, TOP_K, TOP_LOGITS)

OPSET = 17  # LayerNormalization is opset 17
MS_DOMAIN = "com.microsoft"


class FuseError(ValueError):
    """The source graph is not a GPT-2 export this module can rebuild."""


def can_fuse(config: dict[str, Any]) -> bool:
    """True for the configurations `fused_graph` rebuilds (see can_fuse_gpt2 and can_fuse_llama)."""
    return can_fuse_gpt2(config) or can_fuse_llama(config)


def fused_graph(weights: dict[str, np.ndarray], config: dict[str, Any], source: str = "the weights"
                ) -> onnx.ModelProto:
    """The lean graph of a GPT-2 or Llama model: `weights` by PyTorch name, `config` its config.json."""
    if can_fuse_llama(config):
        return fused_llama(weights, config, source)
    return fused_gpt2(weights, config, source)


def can_fuse_gpt2(config: dict[str, Any]) -> bool:
    """True for configurations `fused_gpt2` rebuilds: GPT-2 with its usual activation and no cross-attention."""
    return (config.get("model_type") == "gpt2" and config.get("activation_function", "gelu_new") == "gelu_new"
            and not config.get("add_cross_attention", False) and not config.get("scale_attn_by_inverse_layer_idx")
            and not config.get("reorder_and_upcast_attn") and config.get("scale_attn_weights", True))


def weights_of_folder(model_dir: str | Path) -> dict[str, np.ndarray]:
    """The fp32 weights of a Hugging Face GPT-2 folder, by their PyTorch names (the output layer is tied to wte)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with torch.no_grad():
        return {name: tensor.detach().float().numpy().copy() for name, tensor in model.state_dict().items()}


def weights_of_onnx(path: str | Path) -> dict[str, np.ndarray]:
    """The initializers of an ONNX file by name. Optimum's export keeps the PyTorch names, but it shares one
    initializer among identical tensors (the zero biases of an untrained model), so use a folder when one exists."""
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def fused_gpt2(weights: dict[str, np.ndarray], config: dict[str, Any], source: str = "the weights"
               ) -> onnx.ModelProto:
    """The lean graph of a GPT-2 model: `weights` by PyTorch name, `config` its config.json."""
    if not can_fuse_gpt2(config):
        raise FuseError(f"only a plain GPT-2 (model_type gpt2, gelu_new) can be rebuilt, not {config.get('model_type')!r}")
    layers, width, heads = config["n_layer"], config["n_embd"], config["n_head"]
    epsilon = float(config.get("layer_norm_epsilon", 1e-5))

    def weight(name: str) -> np.ndarray:
        if name not in weights:
            raise FuseError(f"{source} has no initializer {name!r}: not a GPT-2 model")
        return weights[name].astype(np.float32, copy=False)

    graph = _Graph()
    graph.input("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
    graph.input("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
    graph.cache_inputs(layers, heads, width // heads)

    tokens = graph.node("Gather", [graph.const("transformer.wte.weight", weight("transformer.wte.weight")),
                                   "input_ids"])
    position_table = weight("transformer.wpe.weight")
    positions = graph.node("Gather", [graph.const("transformer.wpe.weight", position_table),
                                      "position_ids"])
    hidden = graph.node("Add", [tokens, positions])
    for i in range(layers):
        p = f"transformer.h.{i}."
        normed = graph.layer_norm(hidden, weight(p + "ln_1.weight"), weight(p + "ln_1.bias"), p + "ln_1", epsilon)
        qkv = graph.linear(normed, weight, p + "attn.c_attn")  # (B, S, 3 * width): all queries, keys, values
        attended = graph.node(
            "GroupQueryAttention",
            [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", *graph.lengths],
            outputs=[graph.fresh(), f"present.{i}.key", f"present.{i}.value"],
            domain=MS_DOMAIN, num_heads=heads, kv_num_heads=heads)[0]
        hidden = graph.node("Add", [hidden, graph.linear(attended, weight, p + "attn.c_proj")])
        normed = graph.layer_norm(hidden, weight(p + "ln_2.weight"), weight(p + "ln_2.bias"), p + "ln_2", epsilon)
        up = graph.node("MatMul", [normed, graph.const(p + "mlp.c_fc.weight", weight(p + "mlp.c_fc.weight"))])
        activated = graph.node("FastGelu", [up, graph.const(p + "mlp.c_fc.bias", weight(p + "mlp.c_fc.bias"))],
                               domain=MS_DOMAIN)
        hidden = graph.node("Add", [hidden, graph.linear(activated, weight, p + "mlp.c_proj")])
    final = graph.layer_norm(hidden, weight("transformer.ln_f.weight"), weight("transformer.ln_f.bias"),
                             "transformer.ln_f", epsilon)
    # the output layer shares GPT-2's token embedding
    graph.logits_and_cache_outputs(final, weight("transformer.wte.weight"), layers, heads, width // heads)
    return graph.model("tweetgen_gpt2", position_table.shape[0])


LLAMA_ACTIVATIONS = ("silu",)


def can_fuse_llama(config: dict[str, Any]) -> bool:
    """True for Llama configurations `fused_llama` rebuilds: SiLU MLP, plain rotary positions, no biases, a head
    size that is a multiple of 16."""
    heads = config.get("num_attention_heads") or 1
    head_dim = config.get("head_dim") or (config.get("hidden_size") or 0) // heads
    return (config.get("model_type") == "llama" and config.get("hidden_act", "silu") in LLAMA_ACTIVATIONS
            and head_dim % 16 == 0  # GroupQueryAttention's rotary embedding wants it
            and not config.get("rope_scaling") and not config.get("attention_bias")
            and not config.get("mlp_bias") and config.get("pretraining_tp", 1) == 1)


def fused_llama(weights: dict[str, np.ndarray], config: dict[str, Any], source: str = "the weights"
                ) -> onnx.ModelProto:
    """The lean graph of a Llama model (SmolLM2): SimplifiedLayerNormalization (RMSNorm), one MatMul for the
    queries, keys and values, GroupQueryAttention with its own rotary embedding (do_rotary, half-split as
    transformers' rotate_half, from cos/sin tables of every position), a SiLU-gated MLP (one MatMul for gate and up,
    Split, x * Sigmoid(x), Mul). Same interface as `fused_gpt2` without position_ids: GroupQueryAttention takes each
    row's positions from seqlens_k (the runtime never pads)."""
    if not can_fuse_llama(config):
        raise FuseError("only a plain Llama (SiLU, no rope scaling, no biases) can be rebuilt, "
                        f"not {config.get('model_type')!r}")
    layers, width = config["num_hidden_layers"], config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or width // heads
    epsilon = float(config.get("rms_norm_eps", 1e-6))
    positions = int(config["max_position_embeddings"])

    def weight(name: str) -> np.ndarray:
        if name not in weights:
            raise FuseError(f"{source} has no initializer {name!r}: not a Llama model")
        return weights[name].astype(np.float32, copy=False)

    def linear_t(name: str) -> np.ndarray:  # torch Linear keeps (out, in); MatMul wants (in, out)
        return np.ascontiguousarray(weight(name).T)

    graph = _Graph()
    embedding = weight("model.embed_tokens.weight")
    graph.input("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
    graph.cache_inputs(layers, kv_heads, head_dim)
    inverse = 1.0 / (float(config.get("rope_theta", 10000.0)) ** (np.arange(0, head_dim, 2) / head_dim))
    angles = np.outer(np.arange(positions, dtype=np.float64), inverse)  # (positions, head_dim / 2)
    cos = graph.const("rotary.cos", np.cos(angles).astype(np.float32))
    sin = graph.const("rotary.sin", np.sin(angles).astype(np.float32))

    hidden = graph.node("Gather", [graph.const("model.embed_tokens.weight", embedding), "input_ids"])
    for i in range(layers):
        p = f"model.layers.{i}."
        normed = graph.rms_norm(hidden, weight(p + "input_layernorm.weight"), p + "input_layernorm", epsilon)
        qkv_weight = np.concatenate([linear_t(p + f"self_attn.{n}_proj.weight") for n in "qkv"], axis=1)
        qkv = graph.node("MatMul", [normed, graph.const(p + "self_attn.qkv_proj.weight", qkv_weight)])
        attended = graph.node(
            "GroupQueryAttention",
            [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", *graph.lengths,
             cos, sin],
            outputs=[graph.fresh(), f"present.{i}.key", f"present.{i}.value"],
            domain=MS_DOMAIN, num_heads=heads, kv_num_heads=kv_heads, do_rotary=1, rotary_interleaved=0)[0]
        projected = graph.node("MatMul", [attended, graph.const(p + "self_attn.o_proj.weight",
                                                                  linear_t(p + "self_attn.o_proj.weight"))])
        hidden = graph.node("Add", [hidden, projected])
        normed = graph.rms_norm(hidden, weight(p + "post_attention_layernorm.weight"),
                                p + "post_attention_layernorm", epsilon)
        gate_up_weight = np.concatenate([linear_t(p + "mlp.gate_proj.weight"), linear_t(p + "mlp.up_proj.weight")],
                                        axis=1)
        gate_up = graph.node("MatMul", [normed, graph.const(p + "mlp.gate_up_proj.weight", gate_up_weight)])
        intermediate = gate_up_weight.shape[1] // 2
        gate, up = graph.node("Split", [gate_up, graph.const(p + "mlp.split", np.array([intermediate] * 2,
                                                                                       dtype=np.int64))],
                              outputs=2, axis=-1)
        activated = graph.node("Mul", [graph.node("Mul", [gate, graph.node("Sigmoid", [gate])]), up])
        down = graph.node("MatMul", [activated, graph.const(p + "mlp.down_proj.weight",
                                                            linear_t(p + "mlp.down_proj.weight"))])
        hidden = graph.node("Add", [hidden, down])
    final = graph.rms_norm(hidden, weight("model.norm.weight"), "model.norm", epsilon)
    head = weights.get("lm_head.weight", embedding)  # a tied model's state dict holds the embedding under both names
    graph.logits_and_cache_outputs(final, head.astype(np.float32, copy=False), layers, kv_heads, head_dim)
    return graph.model("tweetgen_llama", positions)


class _Graph:
    """Collects nodes, constants and the interface; names intermediate values t0, t1, ..."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0
        self.lengths: list[str] = []  # GroupQueryAttention's seqlens_k and total_sequence_length (cache_inputs)

    def fresh(self) -> str:
        self._count += 1
        return f"t{self._count}"

    def input(self, name: str, dtype: int, shape: list) -> None:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))

    def output(self, name: str, dtype: int, shape: list) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, dtype, shape))

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], *, outputs: int | list[str] = 1, domain: str = "", **attrs):
        names = [self.fresh() for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op, inputs, names, name=f"{op}_{len(self.nodes)}", domain=domain or None,
                                           **attrs))
        return names[0] if len(names) == 1 else names

    def layer_norm(self, x: str, scale: np.ndarray, bias: np.ndarray, name: str, epsilon: float) -> str:
        return self.node("LayerNormalization", [x, self.const(name + ".weight", scale), self.const(name + ".bias", bias)],
                         axis=-1, epsilon=epsilon)

    def cache_inputs(self, layers: int, kv_heads: int, head_dim: int) -> None:
        """The attention mask and KV cache inputs; `lengths` are GroupQueryAttention's sequence lengths, from the mask:
        seqlens_k (B,) int32 = a row's tokens so far (this step's too) - 1, total_sequence_length int32 = the mask's
        length."""
        self.input(ATTENTION_MASK, TensorProto.INT64, ["batch_size", "total_sequence_length"])
        cache = ["batch_size", kv_heads, "past_sequence_length", head_dim]
        for i in range(layers):
            self.input(f"past_key_values.{i}.key", TensorProto.FLOAT, cache)
            self.input(f"past_key_values.{i}.value", TensorProto.FLOAT, cache)
        one = self.const("lengths.one", np.array(1, dtype=np.int64))
        counted = self.node("ReduceSum", [ATTENTION_MASK, self.const("lengths.axis", np.array([1], dtype=np.int64))],
                            keepdims=0)
        seqlens = self.node("Cast", [self.node("Sub", [counted, one])], to=TensorProto.INT32)
        total = self.node("Gather", [self.node("Shape", [ATTENTION_MASK]), one], axis=0)
        self.lengths = [seqlens, self.node("Cast", [total], to=TensorProto.INT32)]

    def optional_input(self, name: str, default: np.ndarray) -> str:
        """An input with a default value (an initializer of the same name): callers may leave it out."""
        self.input(name, helper.np_dtype_to_tensor_dtype(default.dtype), list(default.shape))
        return self.const(name, default)

    def logits_and_cache_outputs(self, final: str, head: np.ndarray, layers: int, kv_heads: int,
                                 head_dim: int) -> None:
        """The output layer (`head`: (vocab, width), as PyTorch keeps it) on the positions from `logits_start` on,
        and the graph's outputs. The runtime asks for the last position only, which saves the output layer's work
        and memory for every other position of a prompt (200 tokens of GPT-2: 40 MB). Then each position's top_k
        largest logits and their ids (TopK: sorted, the lower id first among equal logits)."""
        self.optional_input(LOGITS_START, np.zeros(1, dtype=np.int64))
        end = self.const("logits_end", np.array([np.iinfo(np.int64).max], dtype=np.int64))
        axis = self.const("logits_axis", np.array([1], dtype=np.int64))
        final = self.node("Slice", [final, LOGITS_START, end, axis])
        self.node("MatMul", [final, self.const("lm_head.weight", np.ascontiguousarray(head.T))], outputs=["logits"])
        self.output("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", head.shape[0]])
        present = ["batch_size", kv_heads, "total_sequence_length", head_dim]
        for i in range(layers):
            self.output(f"present.{i}.key", TensorProto.FLOAT, present)
            self.output(f"present.{i}.value", TensorProto.FLOAT, present)
        self.optional_input(TOP_K, np.zeros(1, dtype=np.int64))
        self.node("TopK", ["logits", TOP_K], outputs=[TOP_LOGITS, TOP_IDS], axis=-1, largest=1, sorted=1)
        self.output(TOP_LOGITS, TensorProto.FLOAT, ["batch_size", "sequence_length", "top_k"])
        self.output(TOP_IDS, TensorProto.INT64, ["batch_size", "sequence_length", "top_k"])

    def rms_norm(self, x: str, scale: np.ndarray, name: str, epsilon: float) -> str:
        return self.node("SimplifiedLayerNormalization", [x, self.const(name + ".weight", scale)], axis=-1,
                         epsilon=epsilon)

    def model(self, name: str, positions: int) -> onnx.ModelProto:
        model = helper.make_model(
            helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.initializers),
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
            producer_name="tweetgen")
        model.ir_version = 8
        helper.set_model_props(model, {FUSED_METADATA: str(CONTRACT_VERSION), POSITIONS_METADATA: str(positions)})
        return model

    def linear(self, x: str, weight, prefix: str) -> str:
        product = self.node("MatMul", [x, self.const(prefix + ".weight", weight(prefix + ".weight"))])
        return self.node("Add", [product, self.const(prefix + ".bias", weight(prefix + ".bias"))])

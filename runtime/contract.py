"""The names shared by tweetgen's exporter (`tweetgen.trainer.export.fuse`, which writes the graphs) and its runtime
(`tweetgen.engine`, which drives them). The contract itself is written once, in fuse.py's module docstring.

Every graph the runtime loads has Optimum's text-generation-with-past interface (`input_ids`, `attention_mask`,
optional `position_ids`, `past_key_values.{i}.key/value` in; `logits`, `present.{i}.key/value` out). tweetgen's fused
graphs add what is below; a graph without them is driven the plain way.
"""

ATTENTION_MASK = "attention_mask"
LOGITS_START = "logits_start"  # optional input, int64 (1,): the first position whose logits are computed (default 0)
TOP_K = "top_k"  # optional input, int64 (1,): how many of each position's best tokens TOP_LOGITS/TOP_IDS hold
TOP_LOGITS = "top_logits"  # output (B, positions, top_k) float: the best logits, largest first
TOP_IDS = "top_ids"  # output (B, positions, top_k) int64: their token ids (equal logits: the lower id first)
# Model metadata (onnx metadata_props) of a fused graph: the contract's version. Its presence says that one buffer
# may be bound as both past and present, and the graph writes each step's keys and values into it in place.
FUSED_METADATA = "tweetgen.fused_graph"
CONTRACT_VERSION = 1
# Model metadata of a fused graph: how many positions its position table (GPT-2) or rotary tables (Llama) hold; the
# runtime refuses a config.json whose context is longer.
POSITIONS_METADATA = "tweetgen.positions"

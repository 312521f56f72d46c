"""Parameter and FLOP accounting, computed from shapes: a 175B model is counted without allocating it.

Parameter counts walk the model's own parameter tree (traced with `jax.eval_shape`) by the stable
parameter names, so they count what `TransformerLM` allocates, not a formula that may drift from it.
"Attention" counts the projection weights (query, key, value_down, value_up, or value) without their
biases, as the classic explanation does; biases, norms, MLP and embeddings are counted separately.

Training FLOPs per token follow the convention of nanoGPT's `estimate_mfu` and PaLM (Chowdhery et al.
2022, appendix B): a matmul with W weights costs 2 W FLOPs per token forward; attention scores and
mixing cost 2 H T (K + value width) per token and layer, counting the full T x T pattern even under a
causal mask (the convention, not what a causal kernel needs); the backward pass costs twice the
forward, so training is 3 x forward. Embedding lookups, biases, norms, softmax and GELU are not counted.

Letter key as in attention.py: N layers, D width, H query heads, G key/value heads, K query/key head
width, R value width, F MLP hidden width, V vocabulary, T sequence length.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer.config import ModelConfig
from transformer.model import TransformerLM

# The attention projection weights, in the order the explanation draws them; "value" is value_mode="full".
ATTENTION_WEIGHTS = ("query", "key", "value_down", "value_up", "value")
MLP_WEIGHTS = ("up", "down")
# Which head count divides each attention weight into heads: value_up belongs to the query heads,
# key and value maps to the (possibly fewer, shared) key/value heads.
_QUERY_HEAD_WEIGHTS = ("query", "value_up")


def _path_names(path) -> tuple[str, ...]:
  return tuple(str(getattr(entry, "key", getattr(entry, "name", entry))) for entry in path)


def _kind(names: tuple[str, ...]) -> str:
  """The accounting category of one parameter, from its path inside a block or at the top level."""
  parent, name = (names[-2] if len(names) > 1 else ""), names[-1]
  for module, weights in (("attention", ATTENTION_WEIGHTS), ("mlp", MLP_WEIGHTS)):
    if parent == module and name in weights:
      return module
    if parent == module and name.removesuffix("_bias") in weights:
      return f"{module}_biases"
  if parent.endswith("_norm"):
    return "norms"
  if names == ("embed", "embedding"):
    return "embed"
  if names in (("position_embedding",), ("unembed",)):
    return names[0]
  return "other"


def count_tree(params: Any, config: ModelConfig) -> dict[str, Any]:
  """Counts a parameter tree of `TransformerLM(config)`, by component, per block and per head.

  Works on real arrays or `jax.ShapeDtypeStruct`s, boxed (nn.LogicallyPartitioned) or not, with the
  blocks unrolled (`block_{i}`) or scanned (`blocks/block`, a leading layer axis of size N).

  Args:
    params: the 'params' collection (a top-level {'params': ...} is accepted too).
    config: the model's config (for N, H and G).

  Returns:
    A JSON-serializable dict of integers: `total`; the categories `attention` (weights, no biases),
    `attention_biases`, `mlp` (weights), `mlp_biases`, `norms`, `embed`, `position_embedding`,
    `unembed` (0 when tied), `embeddings` (their sum) and `other` (unrecognized names, normally 0),
    which add up to `total`; `per_block` (all parameters of one block), `per_block_attention`,
    `per_head` ({name: parameters of one head} for each attention weight: query and value_up per
    query head, key, value_down and value per key/value head); `bytes`; and `components`, one entry
    per parameter name (e.g. "attention/query", "embed/embedding") with its `shape` (one block's,
    without the layer axis), `per_block` (None outside the blocks) and `total`.
  """
  params = nn.unbox(params)
  if set(params) == {"params"}:
    params = params["params"]
  n = config.num_layers
  categories = dict.fromkeys(("attention", "attention_biases", "mlp", "mlp_biases", "norms", "embed",
                              "position_embedding", "unembed", "other"), 0)
  components: dict[str, dict[str, Any]] = {}
  total = num_bytes = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = _path_names(path)
    size = math.prod(leaf.shape)
    total += size
    num_bytes += size * jnp.dtype(leaf.dtype).itemsize
    if names[0] == "blocks":  # scanned: blocks/block/<module>/<name>, stacked on axis 0
      if leaf.shape[0] != n:
        raise ValueError(f"{'/'.join(names)} has shape {leaf.shape}: expected a leading layer axis of {n}")
      key, shape, per_block = "/".join(names[2:]), leaf.shape[1:], size // n
    elif names[0].startswith("block_"):  # unrolled: block_{i}/<module>/<name>, one entry for all i
      key, shape, per_block = "/".join(names[1:]), leaf.shape, size
    else:
      key, shape, per_block = "/".join(names), leaf.shape, None
    categories[_kind(tuple(key.split("/")))] += size
    entry = components.setdefault(key, {"shape": list(shape), "per_block": per_block, "total": 0})
    entry["total"] += size

  in_blocks = {key: entry for key, entry in components.items() if entry["per_block"] is not None}
  per_head = {}
  for name in ATTENTION_WEIGHTS:
    entry = in_blocks.get(f"attention/{name}")
    if entry is not None:
      heads = config.num_heads if name in _QUERY_HEAD_WEIGHTS else config.kv_heads
      per_head[name] = entry["per_block"] // heads
  return {
      "total": total,
      **categories,
      "embeddings": categories["embed"] + categories["position_embedding"] + categories["unembed"],
      "per_block": sum(entry["per_block"] for entry in in_blocks.values()),
      "per_block_attention": sum(in_blocks[f"attention/{name}"]["per_block"] for name in per_head),
      "per_head": per_head,
      "bytes": num_bytes,
      "components": components,
  }


def parameter_shapes(config: ModelConfig) -> Any:
  """The model's 'params' as boxed `jax.ShapeDtypeStruct`s: traced with `jax.eval_shape`, never allocated.

  Args:
    config: the model's config.

  Returns:
    The 'params' collection of `TransformerLM(config).init`, abstract.
  """
  model = TransformerLM(config)
  tokens_BL = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), tokens_BL)["params"]


def parameter_counts(config: ModelConfig) -> dict[str, Any]:
  """Counts the parameters of `TransformerLM(config)` from shapes (see `count_tree` for the keys).

  The model is traced with scan_layers=True whatever the config says: the blocks' parameters are the
  same arrays, only stacked on a layer axis (the tests check that both layouts count the same), and
  tracing one block instead of N makes the count of a deep model fast (see docs/performance.md).

  Args:
    config: the model's config.

  Returns:
    The dict of `count_tree`.
  """
  scanned = dataclasses.replace(config, scan_layers=True)
  return count_tree(parameter_shapes(scanned), config)


def matmul_weights_per_token(config: ModelConfig) -> int:
  """Weights each token is multiplied by: attention projections, MLP and unembedding (tied or not)."""
  c = config
  d, h, g, k, r = c.d_model, c.num_heads, c.kv_heads, c.key_dim, c.value_dim
  if c.value_mode == "full":
    value = d * g * r  # one D x D map per key/value head; the heads' outputs are summed, no value_up
  else:
    value = d * g * r + h * r * d
  per_block = d * h * k + d * g * k + value + 2 * d * c.hidden_dim
  return c.num_layers * per_block + d * c.vocab_size


def attention_flops_per_token(config: ModelConfig, seq_len: int | None = None) -> int:
  """Forward FLOPs per token of the scores (q.k) and the mixing of values, all layers, full T x T pattern.

  Args:
    config: the model's config.
    seq_len: T, the keys each query is scored against (default max_len).

  Returns:
    2 N H T (K + value width).
  """
  t = config.max_len if seq_len is None else seq_len
  return 2 * config.num_layers * config.num_heads * t * (config.key_dim + config.value_dim)


def flops_per_token(config: ModelConfig, seq_len: int | None = None) -> int:
  """Training FLOPs per token (forward and backward), attention included: for MFU.

  Args:
    config: the model's config.
    seq_len: T, the training sequence length (default max_len).

  Returns:
    3 x (2 W + attention_flops_per_token) with W = matmul_weights_per_token; for GPT-style models
    (R = K) this is PaLM's and nanoGPT's 6 W + 12 N H K T.
  """
  return 3 * (2 * matmul_weights_per_token(config) + attention_flops_per_token(config, seq_len))


# Rows in the order of the computation: embeddings, then per block attention, its norm, MLP, its norm.
_MODULE_ORDER = ("embed", "position_embedding", "attention", "attention_norm", "mlp", "mlp_norm", "final_norm",
                 "unembed")
_NAME_ORDER = ATTENTION_WEIGHTS + MLP_WEIGHTS + ("scale",)


def _row_order(key: str) -> tuple:
  """Sort key of a component: by module (see _MODULE_ORDER), weights before biases, then by name."""
  names = key.split("/")
  module, name = names[0], names[-1]
  base = name.removesuffix("_bias")
  return (_MODULE_ORDER.index(module) if module in _MODULE_ORDER else len(_MODULE_ORDER), name.endswith("bias"),
          _NAME_ORDER.index(base) if base in _NAME_ORDER else len(_NAME_ORDER), key)


def _human(n: float) -> str:
  """124,439,808 -> '124.4M'."""
  for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= scale:
      return f"{n / scale:.4g}{unit}"
  return f"{n:g}"


def _binary(num_bytes: int) -> str:
  """698,417,037,312 -> '650.5 GiB'."""
  for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if num_bytes >= scale:
      return f"{num_bytes / scale:.4g} {unit}"
  return f"{num_bytes} bytes"


def _shape(shape: list[int]) -> str:
  return " x ".join(str(s) for s in shape) if shape else "scalar"


def format_table(config: ModelConfig, counts: dict[str, Any], seq_len: int | None = None) -> str:
  """A readable table of `parameter_counts(config)` and the training FLOPs per token.

  Args:
    config: the model's config.
    counts: `parameter_counts(config)` (or `count_tree` of its parameters).
    seq_len: T for the FLOPs (default max_len).

  Returns:
    The table, lines joined by newlines (no trailing newline).
  """
  c = config
  t = c.max_len if seq_len is None else seq_len
  header = (f"N={c.num_layers} D={c.d_model} H={c.num_heads} G={c.kv_heads} K={c.key_dim} "
            f"R={c.value_dim} F={c.hidden_dim} V={c.vocab_size} T={t} value_mode={c.value_mode} "
            f"tied={c.tie_embeddings} bias={c.use_bias}")
  row = "{:<30} {:>22} {:>15} {:>17} {:>19}"
  lines = [header, "", row.format("parameter", "shape (one block)", "per head", "per block", "all blocks"),
           row.format(*("-" * w for w in (30, 22, 15, 17, 19)))]
  components = counts["components"]
  blocks = {key: entry for key, entry in components.items() if entry["per_block"] is not None}

  def block_rows(keys):
    for key in keys:
      entry = blocks[key]
      name = key.split("/")[-1]
      head = f"{counts['per_head'][name]:,}" if key.startswith("attention/") and name in counts["per_head"] else ""
      lines.append(row.format(key, _shape(entry["shape"]), head, f"{entry['per_block']:,}", f"{entry['total']:,}"))

  attention_keys = [f"attention/{name}" for name in ATTENTION_WEIGHTS if f"attention/{name}" in blocks]
  block_rows(attention_keys)
  per_head_sum = sum(counts["per_head"].values())
  lines.append(row.format("attention weights", "", f"{per_head_sum:,}", f"{counts['per_block_attention']:,}",
                          f"{counts['attention']:,}"))
  if c.kv_heads != c.num_heads:
    lines.append(f"  (per head: query and value_up per query head; key, value_down and value per key/value head, "
                 f"each shared by {c.num_heads // c.kv_heads} query heads)")
  block_rows(sorted((key for key in blocks if key not in attention_keys), key=_row_order))
  lines.append(row.format("block", "", "", f"{counts['per_block']:,}", f"{counts['per_block'] * c.num_layers:,}"))
  lines.append("")
  for key, entry in sorted(components.items(), key=lambda item: _row_order(item[0])):
    if entry["per_block"] is None:
      lines.append(row.format(key, _shape(entry["shape"]), "", "", f"{entry['total']:,}"))
  if c.tie_embeddings:
    lines.append(row.format("unembed", "tied to embed", "", "", "0"))
  lines.append("")
  summary = "{:<30} {:>22,}{}"
  total = counts["total"]
  for key in ("attention", "attention_biases", "mlp", "mlp_biases", "norms", "embeddings", "other"):
    if key != "other" or counts[key]:
      lines.append(summary.format(key, counts[key], f"   {100 * counts[key] / total:5.1f}%"))
  lines.append(summary.format("total", total, f"   ({_human(total)}; {_binary(counts['bytes'])} of parameters)"))
  lines.append("")
  train, attention = flops_per_token(c, t), 3 * attention_flops_per_token(c, t)
  lines.append(summary.format("training FLOPs per token", train,
                              f"   ({train:.3e}; attention scores+mixing {100 * attention / train:.1f}%)"))
  return "\n".join(lines)

"""The model's configuration: one frozen dataclass, validated when it is built.

Knobs left as `None` take the defaults of the classic explanation: K = D / H, R = K, F = 4 D, G = H.
The resolved values are properties (`kv_heads`, `key_dim`, `value_dim`, `hidden_dim`), so
`dataclasses.replace(config, num_heads=8)` re-derives them instead of keeping stale numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from transformer.masks import MASK_KINDS

VALUE_MODES = ("factored", "full")
POSITIONS = ("learned", "sinusoidal", "rope", "none")
ATTENTION_IMPLS = ("reference", "chunked", "auto")
DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that defines a TransformerLM; see the README for the letter key."""

  vocab_size: int  # V
  max_len: int  # longest sequence: size of the position table and of the decoding cache
  num_layers: int = 2  # N
  d_model: int = 128  # D, width of the residual stream
  num_heads: int = 4  # H, query heads
  num_kv_heads: int | None = None  # G, key/value heads (None: G = H; 1: multi-query)
  head_dim: int | None = None  # K, query/key width per head (None: D // H)
  value_mode: str = "factored"  # "factored": value_down D->R, value_up R->D; "full": one D x D per head
  value_rank: int | None = None  # R for value_mode "factored" (None: K)
  mlp_dim: int | None = None  # F (None: 4 D)
  mask: str = "causal"  # one of masks.MASK_KINDS
  window: int = 0  # sliding_window: a query sees itself and the window - 1 tokens before it
  prefix_length: int = 0  # prefix: tokens [0, P) see each other both ways, later ones are causal
  score_scale: float | str = "rsqrt"  # "rsqrt": 1/sqrt(K); "none": 1; or a number
  attention_impl: str = "reference"  # one of ATTENTION_IMPLS
  chunk_size: int = 128  # key block of the chunked implementation
  positions: str = "learned"  # one of POSITIONS
  rope_base: float = 10_000.0
  post_ln: bool = False  # LayerNorm after each residual add (2017 paper) instead of before
  tie_embeddings: bool = True  # unembedding = embedding transposed
  use_bias: bool = True  # biases in attention, MLP and LayerNorm (GPT-2 style)
  dropout_rate: float = 0.0  # on the residual branches and embeddings
  attention_dropout_rate: float = 0.0  # on the attention weights
  dtype: str = "float32"  # compute dtype; parameters are always float32
  scan_layers: bool = False  # one nn.scan over the blocks: compile time flat in N
  remat_policy: str = "none"  # with scan_layers: what backward keeps (REMAT_POLICIES)
  layer_norm_epsilon: float = 1e-5
  init_std: float = 0.02  # normal init of weight matrices (the token embedding under sinusoidal: 1/sqrt(D))

  def __post_init__(self):
    _validate(self)

  @property
  def kv_heads(self) -> int:
    """G: the number of key/value heads."""
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def key_dim(self) -> int:
    """K: the width of one query or key head."""
    return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

  @property
  def value_dim(self) -> int:
    """The width of one head's value vector: R when factored, D when full."""
    if self.value_mode == "full":
      return self.d_model
    return self.key_dim if self.value_rank is None else self.value_rank

  @property
  def hidden_dim(self) -> int:
    """F: the MLP's hidden width."""
    return 4 * self.d_model if self.mlp_dim is None else self.mlp_dim

  @property
  def scale(self) -> float:
    """The factor applied to q.k scores."""
    if self.score_scale == "rsqrt":
      return 1.0 / math.sqrt(self.key_dim)
    if self.score_scale == "none":
      return 1.0
    return float(self.score_scale)

  @property
  def is_causal(self) -> bool:
    """Whether no token after the prefill sees a later one, as decoding needs (see masks.MaskKind)."""
    return MASK_KINDS[self.mask].decodable


def _fail(field: str, value: Any, allowed: str) -> None:
  raise ValueError(f"model.{field}={value!r} is invalid: {allowed}")


def _positive_int(config: ModelConfig, field: str, optional: bool = False) -> None:
  value = getattr(config, field)
  if optional and value is None:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    _fail(field, value, "expected a positive integer" + (" or None" if optional else ""))


def _unused_unless_the_mask_needs(field: str, config: ModelConfig) -> None:
  """A mask size must be 0 under the kinds that do not read it (see masks.MaskKind.size)."""
  if MASK_KINDS[config.mask].size != field and getattr(config, field):
    users = " or ".join(f'"{name}"' for name, kind in MASK_KINDS.items() if kind.size == field)
    _fail(field, getattr(config, field), f'only mask={users} uses it (mask is "{config.mask}"); set 0')


def _validate(config: ModelConfig) -> None:
  for field in ("vocab_size", "max_len", "num_layers", "d_model", "num_heads", "chunk_size"):
    _positive_int(config, field)
  for field in ("num_kv_heads", "head_dim", "value_rank", "mlp_dim"):
    _positive_int(config, field, optional=True)
  if config.head_dim is None and config.d_model % config.num_heads:
    _fail("num_heads", config.num_heads,
          f"d_model={config.d_model} is not a multiple of it; set model.head_dim explicitly")
  if config.num_heads % config.kv_heads:
    _fail("num_kv_heads", config.num_kv_heads,
          f"must divide num_heads={config.num_heads} (1 = multi-query, num_heads = multi-head)")
  for field, allowed in (("mask", tuple(MASK_KINDS)), ("value_mode", VALUE_MODES), ("positions", POSITIONS),
                         ("attention_impl", ATTENTION_IMPLS), ("dtype", DTYPES),
                         ("remat_policy", REMAT_POLICIES)):
    if getattr(config, field) not in allowed:
      _fail(field, getattr(config, field), f"expected one of {', '.join(allowed)}")
  if config.value_mode == "full" and config.value_rank is not None:
    _fail("value_rank", config.value_rank, 'only value_mode="factored" has a rank; set it to None')
  size = MASK_KINDS[config.mask].size
  if size == "window" and not 1 <= config.window:
    _fail("window", config.window, f'mask="{config.mask}" needs a window of at least 1 token')
  _unused_unless_the_mask_needs("window", config)
  if size == "prefix_length" and not 0 < config.prefix_length <= config.max_len:
    _fail("prefix_length", config.prefix_length,
          f'mask="{config.mask}" needs 1 <= prefix_length <= max_len={config.max_len}')
  _unused_unless_the_mask_needs("prefix_length", config)
  if config.score_scale not in ("rsqrt", "none"):
    try:
      scale = float(config.score_scale)
    except (TypeError, ValueError):
      scale = float("nan")
    if not math.isfinite(scale) or scale <= 0:
      _fail("score_scale", config.score_scale, 'expected "rsqrt", "none" or a positive number')
  if config.positions == "rope" and config.key_dim % 2:
    _fail("head_dim", config.key_dim, 'positions="rope" rotates pairs of features: needs an even head_dim')
  for field in ("dropout_rate", "attention_dropout_rate"):
    if not 0.0 <= getattr(config, field) < 1.0:
      _fail(field, getattr(config, field), "expected a rate in [0, 1)")
  if config.remat_policy != "none" and not config.scan_layers:
    _fail("remat_policy", config.remat_policy, "applies to scanned layers: set scan_layers=True or use 'none'")
  if config.layer_norm_epsilon <= 0 or config.init_std <= 0 or config.rope_base <= 1:
    _fail("layer_norm_epsilon/init_std/rope_base",
          (config.layer_norm_epsilon, config.init_std, config.rope_base),
          "expected epsilon > 0, init_std > 0, rope_base > 1")


_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def model_config_from(section: Mapping[str, Any]) -> ModelConfig:
  """Builds a ModelConfig from the `model` section of a config (a ConfigDict or any mapping).

  Args:
    section: the `model` section; keys are ModelConfig fields.

  Returns:
    The validated ModelConfig.

  Raises:
    ValueError: a key is not a model field, or a value is invalid (one line naming it).
  """
  values = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  unknown = sorted(set(values) - _FIELDS)
  if unknown:
    raise ValueError(f"model.{unknown[0]} is not a model setting; known settings: {', '.join(sorted(_FIELDS))}")
  missing = [name for name in ("vocab_size", "max_len") if values.get(name) is None]
  if missing:
    raise ValueError(f"model.{missing[0]} is required")
  return ModelConfig(**values)

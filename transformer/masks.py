"""Which key each query may attend to, as boolean arrays built from token positions.

A mask is a pure function of the positions of queries and keys (their index inside their own
sequence) and, for packed sequences, their segment ids. Building it from positions rather than from
array indices lets the same code serve the full pattern, one key block of the chunked kernel, and
a decoding step against the key/value cache.

Each kind of mask is defined once, in MASK_KINDS: its pattern and the properties that the config's
validation, the decoder and the kernels ask of it.

Letter key: B batch, L query length, M key length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
  from transformer.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class MaskKind:
  """One kind of mask: its pattern and what the rest of the library asks of it."""

  # (spec, q_BL1, k_B1M) -> allowed_BLM from the positions of queries and keys, before segments.
  pattern: Callable[[MaskSpec, jax.Array, jax.Array], jax.Array]
  # The MaskSpec (and ModelConfig) field the kind reads, "window" or "prefix_length", or None.
  size: str | None
  # No query attends to a later key, so a tile of queries needs only the keys up to its own end.
  masks_later_keys: bool
  # No token after the prefill sees a later one, so decoding token by token with a cache is exact.
  decodable: bool
  # jax.nn.dot_product_attention's flags say it (is_causal = masks_later_keys, local_window_size from
  # the window), so contiguous self-attention needs no explicit mask array.
  dot_product_flags: bool


def _causal_BLM(spec: MaskSpec, q_BL1: jax.Array, k_B1M: jax.Array) -> jax.Array:
  del spec
  return k_B1M <= q_BL1


def _none_BLM(spec: MaskSpec, q_BL1: jax.Array, k_B1M: jax.Array) -> jax.Array:
  return jnp.ones_like(_causal_BLM(spec, q_BL1, k_B1M))


def _sliding_window_BLM(spec: MaskSpec, q_BL1: jax.Array, k_B1M: jax.Array) -> jax.Array:
  """Keys in (q - window, q]."""
  return _causal_BLM(spec, q_BL1, k_B1M) & (k_B1M > q_BL1 - spec.window)


def _prefix_BLM(spec: MaskSpec, q_BL1: jax.Array, k_B1M: jax.Array) -> jax.Array:
  """Keys and queries in [0, prefix_length) see each other; later queries are causal."""
  past_BLM = _causal_BLM(spec, q_BL1, k_B1M)
  return past_BLM | ((q_BL1 < spec.prefix_length) & (k_B1M < spec.prefix_length))


# In the order the config's messages list them. A new kind is a pattern and a row here (and, if it needs a
# size of its own, a field of MaskSpec and of ModelConfig with its bounds in config.py).
MASK_KINDS = {
    "causal": MaskKind(_causal_BLM, size=None, masks_later_keys=True, decodable=True, dot_product_flags=True),
    "none": MaskKind(_none_BLM, size=None, masks_later_keys=False, decodable=False, dot_product_flags=True),
    "sliding_window": MaskKind(_sliding_window_BLM, size="window", masks_later_keys=True, decodable=True,
                               dot_product_flags=True),
    # Decodable once the prefill covers the prefix.
    "prefix": MaskKind(_prefix_BLM, size="prefix_length", masks_later_keys=False, decodable=True,
                       dot_product_flags=False),
}


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """The mask of one model: its kind and the sizes the kind needs."""

  kind: str = "causal"
  window: int = 0  # sliding_window: keys in (q - window, q]
  prefix_length: int = 0  # prefix: keys and queries in [0, P) see each other

  def __post_init__(self):
    if self.kind not in MASK_KINDS:
      raise ValueError(f"mask kind {self.kind!r} is unknown: expected one of {', '.join(MASK_KINDS)}")

  @classmethod
  def from_config(cls, config: ModelConfig) -> MaskSpec:
    return cls(config.mask, config.window, config.prefix_length)

  def __call__(
      self,
      q_positions_BL: jax.Array,
      k_positions_BM: jax.Array,
      q_segment_ids_BL: jax.Array | None = None,
      k_segment_ids_BM: jax.Array | None = None,
  ) -> jax.Array:
    """Returns allowed_BLM: True where query l may attend to key m.

    Args:
      q_positions_BL: position of each query in its sequence (or segment).
      k_positions_BM: position of each key in its sequence (or segment).
      q_segment_ids_BL: packed-sequence ids of the queries; None for one sequence per row.
      k_segment_ids_BM: packed-sequence ids of the keys; given together with q_segment_ids_BL.
    """
    allowed_BLM = MASK_KINDS[self.kind].pattern(self, q_positions_BL[:, :, None], k_positions_BM[:, None, :])
    if (q_segment_ids_BL is None) != (k_segment_ids_BM is None):
      raise ValueError("segment ids must be given for both queries and keys, or for neither")
    if q_segment_ids_BL is not None:
      allowed_BLM &= q_segment_ids_BL[:, :, None] == k_segment_ids_BM[:, None, :]
    return allowed_BLM


def mask_matrix(spec: MaskSpec, length: int) -> jax.Array:
  """The L x L pattern of one unpacked sequence, for tests, plots and reading."""
  positions_1L = jnp.arange(length)[None]
  return spec(positions_1L, positions_1L)[0]

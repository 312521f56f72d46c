"""Which key each query may attend to, as boolean arrays built from token positions.

A mask is a pure function of the positions of queries and keys (their index inside their own
sequence) and, for packed sequences, their segment ids. Building it from positions rather than from
array indices lets the same code serve the full pattern, one key block of the chunked kernel, and
a decoding step against the key/value cache.

Letter key: B batch, L query length, M key length.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from transformer.config import MASKS, ModelConfig


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """The mask of one model: its kind and the sizes the kind needs."""

  kind: str = "causal"
  window: int = 0  # sliding_window: keys in (q - window, q]
  prefix_length: int = 0  # prefix: keys and queries in [0, P) see each other

  def __post_init__(self):
    if self.kind not in MASKS:
      raise ValueError(f"mask kind {self.kind!r} is unknown: expected one of {', '.join(MASKS)}")

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
    q_BL1 = q_positions_BL[:, :, None]
    k_B1M = k_positions_BM[:, None, :]
    past_BLM = k_B1M <= q_BL1
    if self.kind == "none":
      allowed_BLM = jnp.ones_like(past_BLM)
    elif self.kind == "causal":
      allowed_BLM = past_BLM
    elif self.kind == "sliding_window":
      allowed_BLM = past_BLM & (k_B1M > q_BL1 - self.window)
    else:  # prefix
      in_prefix_BLM = (q_BL1 < self.prefix_length) & (k_B1M < self.prefix_length)
      allowed_BLM = past_BLM | in_prefix_BLM
    if (q_segment_ids_BL is None) != (k_segment_ids_BM is None):
      raise ValueError("segment ids must be given for both queries and keys, or for neither")
    if q_segment_ids_BL is not None:
      allowed_BLM &= q_segment_ids_BL[:, :, None] == k_segment_ids_BM[:, None, :]
    return allowed_BLM


def mask_matrix(spec: MaskSpec, length: int) -> jax.Array:
  """The L x L pattern of one unpacked sequence, for tests, plots and reading."""
  positions_1L = jnp.arange(length)[None]
  return spec(positions_1L, positions_1L)[0]

"""Inputs of the attention-kernel tests: one MaskSpec of each kind, random queries, keys and values, positions
and packed segment ids."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from transformer.masks import MaskSpec

SPECS = (MaskSpec("causal"), MaskSpec("none"), MaskSpec("sliding_window", window=2),
         MaskSpec("prefix", prefix_length=3))
SPEC_IDS = [spec.kind for spec in SPECS]


def random_qkv(seed, batch, length, keys, heads, kv_heads, key_dim=4, value_dim=3, dtype=jnp.float32):
  """(q_BLHK, k_BMGK, v_BMGR), standard normal."""
  rng = np.random.RandomState(seed)
  q = jnp.asarray(rng.randn(batch, length, heads, key_dim), dtype)
  k = jnp.asarray(rng.randn(batch, keys, kv_heads, key_dim), dtype)
  v = jnp.asarray(rng.randn(batch, keys, kv_heads, value_dim), dtype)
  return q, k, v


def positions_for(batch, length, keys) -> tuple[jax.Array, jax.Array]:
  """Queries are the last `length` of `keys` tokens: self-attention when equal, a decoding step when shorter."""
  q_pos = jnp.broadcast_to(keys - length + jnp.arange(length), (batch, length))
  k_pos = jnp.broadcast_to(jnp.arange(keys), (batch, keys))
  return q_pos, k_pos


def random_segments(seed, batch, length, keys) -> tuple[jax.Array, jax.Array]:
  """Non-decreasing segment ids over the keys; each query takes the id of the key at its position."""
  rng = np.random.RandomState(seed)
  k_seg = np.sort(rng.randint(0, 3, (batch, keys)), axis=1)
  return jnp.asarray(k_seg[:, keys - length:]), jnp.asarray(k_seg)

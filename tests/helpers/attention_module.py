"""Builders for the tests of MultiHeadAttention: tiny configs, large random parameters, positions, one call.

The parameters are written into the module's tree by name, so the tests that compare it with other
implementations (the float64 reference, Flax's and JAX's attention) give each the same weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tests.helpers.random_params import random_arrays
from transformer.attention import MultiHeadAttention
from transformer.config import ModelConfig

MASKS = ("causal", "none", "sliding_window", "prefix")
# (H, G): one head; multi-query; grouped-query; multi-head.
HEAD_LAYOUTS = ((1, 1), (2, 1), (4, 2), (3, 3))


def make_config(mask="causal", value_mode="factored", heads=2, kv_heads=None, *, window=2, prefix_length=2,
                d_model=6, head_dim=4, value_rank=3, **overrides) -> ModelConfig:
  """A tiny one-layer config; window / prefix_length apply only to the masks that use them."""
  fields = dict(vocab_size=7, max_len=8, num_layers=1, d_model=d_model, num_heads=heads, num_kv_heads=kv_heads,
                head_dim=head_dim, value_mode=value_mode, value_rank=value_rank if value_mode == "factored" else None,
                mask=mask, chunk_size=2)
  if mask == "sliding_window":
    fields["window"] = window
  if mask == "prefix":
    fields["prefix_length"] = prefix_length
  fields.update(overrides)
  return ModelConfig(**fields)


def expected_param_shapes(c: ModelConfig) -> dict:
  """The documented parameter names and shapes of MultiHeadAttention."""
  d, h, g, k, r = c.d_model, c.num_heads, c.kv_heads, c.key_dim, c.value_dim
  shapes = {"query": (d, h, k), "key": (d, g, k)}
  if c.value_mode == "full":
    shapes["value"] = (d, g, d)
  else:
    shapes.update(value_down=(d, g, r), value_up=(h, r, d))
  if c.use_bias:
    shapes.update(query_bias=(h, k), key_bias=(g, k))
    if c.value_mode == "full":
      shapes["value_bias"] = (g, d)
    else:
      shapes.update(value_down_bias=(g, r), value_up_bias=(d,))
  return shapes


def random_params(c: ModelConfig, seed: int, std: float = 0.5) -> dict:
  """Parameters large enough that attention is far from uniform (the init's 0.02 would hide mask errors)."""
  return random_arrays(expected_param_shapes(c), seed, std)


def contiguous_positions(batch: int, length: int, start: int = 0) -> jax.Array:
  """Positions start..start+L-1 in every row: [B,L]."""
  return jnp.broadcast_to(start + jnp.arange(length), (batch, length))


def packed_positions(rng, batch, length):
  """Packed sequences: segment ids never decrease along a row; positions restart in each segment."""
  segments = np.sort(rng.randint(0, 3, (batch, length)), axis=1)
  positions = np.zeros((batch, length), int)
  for b in range(batch):
    for i in range(1, length):
      positions[b, i] = positions[b, i - 1] + 1 if segments[b, i] == segments[b, i - 1] else 0
  return jnp.asarray(positions), jnp.asarray(segments)


def apply_attention(c, params, x, positions, segments=None, **kwargs):
  """The module's output in float32, and its sown attention weights (None unless the reference kernel ran)."""
  out, state = MultiHeadAttention(c).apply({"params": params}, x, positions, segments, mutable=["intermediates"],
                                           **kwargs)
  weights = state.get("intermediates", {}).get("attention_weights")
  return out, None if weights is None else weights[0]

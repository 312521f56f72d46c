"""Autoregressive decoding with a key/value cache: prefill a prompt, then one token per step.

The cache holds, per layer, keys [B,M,G,K] and values [B,M,G,R]: with a factored value map the
cache stores the rank-R value-down outputs, so a low value rank also shrinks the cache.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from transformer.model import TransformerLM


def init_cache(model: TransformerLM, batch_size: int, length: int | None = None) -> Any:
  """Returns an empty cache for `batch_size` sequences of up to `length` tokens (default max_len).

  Only shapes are traced (jax.eval_shape): no parameters are initialized.
  """
  length = model.config.max_len if length is None else length
  if not 1 <= length <= model.config.max_len:
    raise ValueError(f"cache length {length} must be in [1, max_len={model.config.max_len}]")
  tokens_BL = jnp.zeros((batch_size, length), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens_BL, decode=True))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def decode_step(model: TransformerLM, params: Any, cache: Any, tokens_BL: jax.Array,
                start: jax.Array | int) -> tuple[jax.Array, Any]:
  """Feeds tokens_BL at positions start.. start+L-1 (a prompt to prefill, or one new token).

  Args:
    model: the model.
    params: its parameters.
    cache: from init_cache or the previous decode_step.
    tokens_BL: the next tokens of every sequence.
    start: how many tokens the cache already holds (the same for every row).

  Returns:
    (logits_BLV, cache): the next-token logits at each fed position, and the extended cache.
  """
  b, l = tokens_BL.shape
  positions_BL = jnp.broadcast_to(start + jnp.arange(l), (b, l))
  logits_BLV, variables = model.apply({"params": params, "cache": cache}, tokens_BL, positions_BL, decode=True,
                                      mutable=["cache"])
  return logits_BLV, variables["cache"]

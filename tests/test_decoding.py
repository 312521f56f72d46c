"""Tests of transformer/decoding.py: prefill then one token at a time equals the full forward pass."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers.random_params import random_params
from transformer.config import ModelConfig
from transformer.decoding import decode_step, init_cache
from transformer.model import TransformerLM

pytestmark = pytest.mark.usefixtures("fast_compilation")

MAX_LEN = 8


def decoding_model_config(**overrides) -> ModelConfig:
  """Two layers of width 8 with four heads over 13 tokens, chunks of 3 keys; each test passes what it changes."""
  fields = dict(vocab_size=13, max_len=MAX_LEN, num_layers=2, d_model=8, num_heads=4, chunk_size=3)
  fields.update(overrides)
  return ModelConfig(**fields)


# Together these cover each mask (prefix with a prefill that covers the prefix), multi-head, grouped and
# multi-query attention, factored and full values, scan_layers on and off, and every kind of positions.
CASES = {
    "causal-learned-mha-factored": dict(),
    "sliding-rope-mqa-full-scan": dict(mask="sliding_window", window=3, positions="rope", num_kv_heads=1,
                                       value_mode="full", scan_layers=True),
    "prefix-sinusoidal-gqa-factored-scan": dict(mask="prefix", prefix_length=3, positions="sinusoidal",
                                                num_kv_heads=2, value_rank=3, scan_layers=True),
    "prefix-rope-gqa-full": dict(mask="prefix", prefix_length=4, positions="rope", num_kv_heads=2, value_mode="full"),
    "causal-rope-chunked-postln-remat": dict(positions="rope", num_kv_heads=2, attention_impl="chunked",
                                             post_ln=True, scan_layers=True, remat_policy="full"),
    "sliding-learned-auto-bias_free": dict(mask="sliding_window", window=2, attention_impl="auto", use_bias=False,
                                           tie_embeddings=False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_prefill_then_one_token_at_a_time_equals_full_forward(name):
  c = decoding_model_config(**CASES[name])
  model = TransformerLM(c)
  params = random_params(c, seed=1)
  tokens = jnp.asarray(np.random.RandomState(2).randint(0, c.vocab_size, (2, MAX_LEN)))
  full = jax.jit(lambda p, t: model.apply({"params": p}, t))(params, tokens)
  step = jax.jit(functools.partial(decode_step, model))

  prefill = 4  # covers the prefix of the prefix-mask cases
  cache = init_cache(model, batch_size=2)
  logits, cache = step(params, cache, tokens[:, :prefill], 0)
  pieces = [logits]
  for t in range(prefill, MAX_LEN):
    logits, cache = step(params, cache, tokens[:, t:t + 1], t)
    assert logits.shape == (2, 1, c.vocab_size)
    pieces.append(logits)
  decoded = jnp.concatenate(pieces, axis=1)
  assert np.abs(np.asarray(full[:, 1:] - full[:, :1])).max() > 0.1  # positions matter
  np.testing.assert_allclose(decoded, full, rtol=1e-5, atol=1e-5)
  index = cache["blocks"]["block"]["attention"]["cache_index"] if c.scan_layers else (
      cache["block_0"]["attention"]["cache_index"])
  np.testing.assert_array_equal(index, MAX_LEN)


def test_feeding_several_tokens_per_step_and_a_short_cache():
  # Steps of 3, 2 and 1 tokens into a cache of 6 < max_len slots.
  c = decoding_model_config(mask="sliding_window", window=2, positions="rope", num_kv_heads=2)
  model = TransformerLM(c)
  params = random_params(c, seed=3)
  tokens = jnp.asarray(np.random.RandomState(4).randint(0, c.vocab_size, (1, 6)))
  full = jax.jit(lambda p, t: model.apply({"params": p}, t))(params, tokens)
  step = jax.jit(functools.partial(decode_step, model))
  cache = init_cache(model, batch_size=1, length=6)
  assert cache["block_0"]["attention"]["cached_key"].shape == (1, 6, 2, 2)
  pieces, start = [], 0
  for size in (3, 2, 1):
    logits, cache = step(params, cache, tokens[:, start:start + size], start)
    pieces.append(logits)
    start += size
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5)


def test_decoding_in_bfloat16_stays_close_to_the_forward_pass():
  c = decoding_model_config(dtype="bfloat16", positions="rope")
  model = TransformerLM(c)
  params = random_params(c, seed=5)
  tokens = jnp.asarray(np.random.RandomState(6).randint(0, c.vocab_size, (1, 5)))
  full = dataclasses.replace(c, dtype="float32")
  expected = jax.jit(lambda p, t: TransformerLM(full).apply({"params": p}, t))(params, tokens)
  step = jax.jit(functools.partial(decode_step, model))
  cache = init_cache(model, batch_size=1, length=5)
  logits, cache = step(params, cache, tokens[:, :3], 0)
  pieces = [logits]
  for t in (3, 4):
    logits, cache = step(params, cache, tokens[:, t:t + 1], t)
    pieces.append(logits)
  decoded = jnp.concatenate(pieces, axis=1)
  assert decoded.dtype == jnp.float32 and cache["block_0"]["attention"]["cached_key"].dtype == jnp.bfloat16
  relative = np.linalg.norm(np.asarray(decoded - expected)) / np.linalg.norm(np.asarray(expected))
  assert relative < 3e-2, relative


@pytest.mark.parametrize("scan_layers", [False, True])
def test_init_cache_shapes_and_zeros(scan_layers):
  c = decoding_model_config(num_kv_heads=2, value_rank=3, scan_layers=scan_layers, num_layers=3)
  cache = init_cache(TransformerLM(c), batch_size=2)
  # Keys [B,M,G,K]; values [B,M,G,R]: a factored value map caches its rank-R value-down outputs.
  if scan_layers:
    layer = cache["blocks"]["block"]["attention"]
    assert layer["cached_key"].shape == (3, 2, MAX_LEN, 2, 2)
    assert layer["cached_value"].shape == (3, 2, MAX_LEN, 2, 3)
    assert layer["cache_index"].shape == (3,)
  else:
    assert set(cache) == {"block_0", "block_1", "block_2"}
    layer = cache["block_1"]["attention"]
    assert layer["cached_key"].shape == (2, MAX_LEN, 2, 2)
    assert layer["cached_value"].shape == (2, MAX_LEN, 2, 3)
    assert layer["cache_index"].shape == ()
  for leaf in jax.tree.leaves(cache):
    np.testing.assert_array_equal(leaf, 0)


def test_full_value_mode_caches_d_wide_values():
  c = decoding_model_config(value_mode="full", num_kv_heads=1)
  cache = init_cache(TransformerLM(c), batch_size=1)
  assert cache["block_0"]["attention"]["cached_value"].shape == (1, MAX_LEN, 1, c.d_model)


@pytest.mark.parametrize("length", [0, MAX_LEN + 1])
def test_init_cache_rejects_bad_lengths(length):
  with pytest.raises(ValueError, match="cache length"):
    init_cache(TransformerLM(decoding_model_config()), batch_size=1, length=length)


def test_decoding_needs_a_causal_mask():
  model = TransformerLM(decoding_model_config(mask="none"))
  with pytest.raises(ValueError, match="decoding needs a mask"):
    init_cache(model, batch_size=1)


def test_decoding_rejects_segment_ids():
  c = decoding_model_config()
  model = TransformerLM(c)
  params = random_params(c, seed=7)
  cache = init_cache(model, batch_size=1)
  tokens = jnp.zeros((1, 2), jnp.int32)
  with pytest.raises(ValueError, match="segment ids"):
    model.apply({"params": params, "cache": cache}, tokens, jnp.arange(2)[None], jnp.zeros((1, 2), jnp.int32),
                decode=True, mutable=["cache"])

"""Tests of transformer/attention.py against a float64 NumPy reference: outputs and weights under every mask, head
layout, value mode and kernel; the parameters' names and shapes; the sown weights; attention dropout.

The reference (tests/helpers/float64_reference.py) is written from the math, independently of the module:
explicit loops over heads, a mask built by looping over (query, key) pairs, a float64 softmax. The module runs
in float32 with the same parameters, pulled out of its parameter tree by name. Equivalences with other
attention implementations are in test_attention_equivalences.py, causality in test_causality.py.
"""

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.attention_module import (HEAD_LAYOUTS, MASKS, apply_attention, contiguous_positions,
                                            expected_param_shapes, make_config, packed_positions, random_params)
from tests.helpers.float64_reference import reference_attention
from transformer import kernels
from transformer.attention import MultiHeadAttention

pytestmark = pytest.mark.usefixtures("fast_compilation")


@pytest.mark.parametrize("value_mode", ["factored", "full"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_parameter_names_and_shapes(value_mode, use_bias):
  c = make_config("causal", value_mode, heads=4, kv_heads=2, use_bias=use_bias)
  x = jnp.zeros((1, 3, c.d_model))
  variables = jax.eval_shape(MultiHeadAttention(c).init, jax.random.key(0), x, contiguous_positions(1, 3))
  params = nn.unbox(variables["params"])
  assert {name: tuple(leaf.shape) for name, leaf in params.items()} == expected_param_shapes(c)
  assert all(leaf.dtype == jnp.float32 for leaf in params.values())


@pytest.mark.parametrize("heads, kv_heads", HEAD_LAYOUTS)
@pytest.mark.parametrize("value_mode", ["factored", "full"])
@pytest.mark.parametrize("mask", MASKS)
@settings(max_examples=max(2, settings().max_examples // 3))
@given(
    start=st.integers(0, 3),
    packed=st.booleans(),
    use_bias=st.booleans(),
    rope=st.booleans(),
    score_scale=st.sampled_from(["rsqrt", "none", 0.3]),
    window=st.integers(1, 4),
    prefix_length=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_module_matches_numpy_reference(mask, value_mode, heads, kv_heads, start, packed, use_bias, rope,
                                        score_scale, window, prefix_length, seed):
  # Shapes stay fixed across examples so that eager JAX reuses its compiled operations.
  batch, length = 2, 5
  c = make_config(mask, value_mode, heads, kv_heads, window=window, prefix_length=prefix_length, use_bias=use_bias,
                  positions="rope" if rope else "none", score_scale=score_scale)
  rng = np.random.RandomState(seed)
  params = random_params(c, seed)
  x = jnp.asarray(rng.randn(batch, length, c.d_model), jnp.float32)
  positions, segments = packed_positions(rng, batch, length) if packed else (
      contiguous_positions(batch, length, start), None)
  out, weights = apply_attention(c, params, x, positions, segments)
  expected_out, expected_weights = reference_attention(c, params, x, positions, segments)
  assert out.dtype == jnp.float32 and out.shape == (batch, length, c.d_model)
  np.testing.assert_allclose(out, expected_out, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(weights) == 0, expected_weights == 0)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("mask, packed", [("causal", False), ("sliding_window", True)])
def test_module_with_query_tiles_matches_numpy_reference(impl, mask, packed):
  # Long enough that the kernels split the queries into tiles, of unequal lengths.
  length = 2 * kernels.MIN_QUERY_TILE + 3
  assert kernels.query_tiles_for(mask, length) == 2
  c = make_config(mask, "factored", heads=2, kv_heads=1, window=70, max_len=length, attention_impl=impl,
                  chunk_size=64)
  rng = np.random.RandomState(5)
  params = random_params(c, seed=6)
  x = jnp.asarray(rng.randn(1, length, c.d_model), jnp.float32)
  positions, segments = packed_positions(rng, 1, length) if packed else (contiguous_positions(1, length), None)
  out, weights = apply_attention(c, params, x, positions, segments)
  expected_out, expected_weights = reference_attention(c, params, x, positions, segments)
  np.testing.assert_allclose(out, expected_out, rtol=1e-4, atol=1e-4)
  if impl == "reference":
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(weights) == 0, expected_weights == 0)


@pytest.mark.parametrize(
    "impl, mask, value_mode, heads, kv_heads, value_rank, packed, rope",
    [
        ("chunked", "prefix", "factored", 4, 2, 3, True, True),
        ("chunked", "sliding_window", "full", 2, 1, None, False, False),
        ("chunked", "none", "factored", 3, 3, 3, True, False),
        ("auto", "causal", "factored", 4, 2, 4, False, True),  # jax.nn.dot_product_attention, is_causal flag
        ("auto", "sliding_window", "factored", 2, 1, 4, False, False),  # local_window_size flag
        ("auto", "prefix", "factored", 2, 2, 4, False, False),  # an explicit mask
        ("auto", "causal", "factored", 4, 1, 4, True, False),  # an explicit mask with segments
        ("auto", "causal", "full", 2, 2, None, False, False),  # falls back to the chunked kernel
    ],
)
def test_chunked_and_auto_modules_match_numpy_reference(impl, mask, value_mode, heads, kv_heads, value_rank, packed,
                                                       rope):
  c = make_config(mask, value_mode, heads, kv_heads, window=3, prefix_length=3, value_rank=value_rank,
                  attention_impl=impl, positions="rope" if rope else "none")
  rng = np.random.RandomState(21)
  params = random_params(c, seed=22)
  x = jnp.asarray(rng.randn(2, 5, c.d_model), jnp.float32)
  positions, segments = packed_positions(rng, 2, 5) if packed else (contiguous_positions(2, 5), None)
  out, weights = apply_attention(c, params, x, positions, segments)
  assert weights is None  # only the reference kernel materializes (and sows) the weights
  expected, _ = reference_attention(c, params, x, positions, segments)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_weights_sown_only_when_intermediates_are_mutable():
  c = make_config("causal", "factored")
  p = random_params(c, seed=18)
  x = jnp.ones((1, 3, c.d_model))
  _, state = MultiHeadAttention(c).apply({"params": p}, x, contiguous_positions(1, 3), mutable=["intermediates"])
  assert state["intermediates"]["attention_weights"][0].shape == (1, c.num_heads, 3, 3)
  out = MultiHeadAttention(c).apply({"params": p}, x, contiguous_positions(1, 3))
  assert isinstance(out, jax.Array)


def test_attention_dropout_needs_deterministic_false_and_the_dropout_rng():
  # (The chunked kernel's dropout is tested in test_kernels_dropout.py.)
  c = make_config("causal", "factored", heads=2, attention_dropout_rate=0.5)
  p = random_params(c, seed=19)
  x = jnp.asarray(np.random.RandomState(20).randn(1, 5, c.d_model), jnp.float32)
  positions = contiguous_positions(1, 5)
  module = MultiHeadAttention(c)
  plain = module.apply({"params": p}, x, positions)
  # deterministic (the default) ignores the rate, even with an RNG given.
  np.testing.assert_array_equal(module.apply({"params": p}, x, positions, rngs={"dropout": jax.random.key(0)}),
                                plain)
  expected, _ = reference_attention(c, p, x, positions)
  np.testing.assert_allclose(plain, expected, rtol=1e-4, atol=1e-4)

  def dropped(seed):
    return module.apply({"params": p}, x, positions, deterministic=False, rngs={"dropout": jax.random.key(seed)})

  np.testing.assert_array_equal(dropped(1), dropped(1))
  assert np.abs(np.asarray(dropped(1) - plain)).max() > 1e-3
  assert np.abs(np.asarray(dropped(1) - dropped(2))).max() > 1e-3
  with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
    module.apply({"params": p}, x, positions, deterministic=False)

"""Tests of the query tiles of transformer/kernels.py: the reference and chunked kernels computed in tiles of
queries, each against the keys up to its own end, equal the same kernels in one tile; which masks and lengths
get tiles."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.kernel_inputs import positions_for, random_qkv, random_segments
from transformer import kernels
from transformer.masks import MaskSpec

pytestmark = pytest.mark.usefixtures("fast_compilation")


@pytest.mark.slow
@given(
    kernel=st.sampled_from(["reference", "chunked"]),
    spec=st.sampled_from((MaskSpec("causal"), MaskSpec("sliding_window", window=2))),
    heads_kv=st.sampled_from([(1, 1), (2, 1), (4, 2)]),
    length_tiles=st.sampled_from([(2, 2), (7, 2), (7, 3), (8, 4), (5, 5)]),
    packed=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_query_tiles_equal_one_tile(kernel, spec, heads_kv, length_tiles, packed, seed):
  (heads, kv_heads), (length, tiles) = heads_kv, length_tiles
  q, k, v = random_qkv(seed, 2, length, length, heads, kv_heads)
  q_pos, k_pos = positions_for(2, length, length)
  q_seg, k_seg = random_segments(seed, 2, length, length) if packed else (None, None)
  if packed:  # positions restart in every segment, as the packed data has them
    q_pos = k_pos = jnp.asarray([[i - list(row).index(s) for i, s in enumerate(row)] for row in np.asarray(k_seg)])
  cotangent = jnp.asarray(np.random.RandomState(seed + 1).randn(2, length, heads, 3), jnp.float32)

  @functools.partial(jax.jit, static_argnames="query_tiles")
  def outputs_and_grads(q, k, v, query_tiles):
    if kernel == "chunked":  # no weights: zeros stand in for them
      fn = lambda q, k, v: (kernels.chunked_attention(q, k, v, spec, q_pos, k_pos, q_seg, k_seg, scale=0.6,
                                                      chunk_size=2, query_tiles=query_tiles), jnp.zeros(()))
    else:
      fn = lambda q, k, v: kernels.reference_attention(q, k, v, spec, q_pos, k_pos, q_seg, k_seg, scale=0.6,
                                                   query_tiles=query_tiles)
    (mixed, weights), vjp = jax.vjp(fn, q, k, v)
    return mixed, weights, vjp((cotangent, jnp.zeros_like(weights)))

  mixed, weights, grads = outputs_and_grads(q, k, v, query_tiles=tiles)
  expected_mixed, expected_weights, expected_grads = outputs_and_grads(q, k, v, query_tiles=1)
  np.testing.assert_allclose(mixed, expected_mixed, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(weights) == 0, np.asarray(expected_weights) == 0)
  for name, g, e in zip("qkv", grads, expected_grads):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5, err_msg=f"d{name}")


def test_query_tiles_for_causal_masks_of_long_sequences_only():
  assert kernels.query_tiles_for("causal", 64) == 1  # tiles under MIN_QUERY_TILE queries cost more than they save
  assert kernels.query_tiles_for("causal", 256) == 2
  assert kernels.query_tiles_for("sliding_window", 300) == 2
  assert kernels.query_tiles_for("causal", 8192) == kernels.MAX_QUERY_TILES
  assert kernels.query_tiles_for("prefix", 8192) == 1  # prefix queries see later keys
  assert kernels.query_tiles_for("none", 8192) == 1


def test_query_tiles_need_self_attention():
  q, k, v = random_qkv(3, 1, 2, 5, 1, 1)
  q_pos, k_pos = positions_for(1, 2, 5)
  spec = MaskSpec("causal")
  with pytest.raises(ValueError, match="query_tiles=2 needs self-attention"):
    kernels.reference_attention(q, k, v, spec, q_pos, k_pos, scale=1.0, query_tiles=2)
  with pytest.raises(ValueError, match="query_tiles=2 needs self-attention"):
    kernels.chunked_attention(q, k, v, spec, q_pos, k_pos, scale=1.0, query_tiles=2)

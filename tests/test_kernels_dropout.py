"""Tests of attention dropout in transformer/kernels.py: the reference and chunked kernels, in one tile or several,
zero each weight or rescale it by 1 / (1 - rate); the chunked kernel drops only with both a rate and an RNG."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers.jitted_kernels import chunked, reference
from tests.helpers.kernel_inputs import positions_for, random_qkv
from transformer import kernels
from transformer.masks import MaskSpec

pytestmark = pytest.mark.usefixtures("fast_compilation")


@pytest.mark.parametrize("kernel", ["reference", "reference_tiled", "chunked", "chunked_tiled"])
def test_attention_dropout_zeroes_weights_and_rescales_the_rest(kernel):
  # With one-hot values (R = M), each output entry is one mixing weight: dropped (0) or kept and scaled by
  # 1 / (1 - rate).
  rate, length = 0.4, 8
  q, k, _ = random_qkv(15, 2, length, length, 2, 1)
  v = jnp.broadcast_to(jnp.eye(length)[None, :, None, :], (2, length, 1, length))
  q_pos, k_pos = positions_for(2, length, length)
  spec = MaskSpec("causal")
  _, weights_BHLM = reference(q, k, v, q_pos, k_pos, None, None, spec=spec, scale=0.5)
  weights_BLHM = jnp.moveaxis(weights_BHLM, 1, 2)
  rng = jax.random.key(16)
  if kernel.startswith("reference"):
    tiles = 3 if kernel == "reference_tiled" else 1
    mixed = jax.jit(lambda rng: kernels.reference_attention(
        q, k, v, spec, q_pos, k_pos, scale=0.5, dropout_rate=rate, dropout_rng=rng, query_tiles=tiles)[0])(rng)
  else:
    tiles = 3 if kernel == "chunked_tiled" else 1
    mixed = jax.jit(lambda rng: kernels.chunked_attention(q, k, v, spec, q_pos, k_pos, scale=0.5, chunk_size=3,
                                                          dropout_rate=rate, dropout_rng=rng, query_tiles=tiles))(rng)
  allowed = np.asarray(weights_BLHM) > 0
  ratio = np.asarray(mixed)[allowed] / np.asarray(weights_BLHM)[allowed]
  kept = np.isclose(ratio, 1.0 / (1.0 - rate), rtol=1e-4)
  dropped = ratio == 0.0
  assert np.all(kept | dropped)
  assert 0.2 < dropped.mean() < 0.6
  np.testing.assert_array_equal(np.asarray(mixed)[~allowed], 0.0)


def test_chunked_dropout_needs_both_rate_and_rng():
  q, k, v = random_qkv(17, 1, 4, 4, 2, 2)
  q_pos, k_pos = positions_for(1, 4, 4)
  spec = MaskSpec("causal")
  plain = chunked(q, k, v, q_pos, k_pos, None, None, spec=spec, scale=0.5, chunk_size=2)
  np.testing.assert_array_equal(
      chunked(q, k, v, q_pos, k_pos, None, None, None, spec=spec, scale=0.5, chunk_size=2, dropout_rate=0.5), plain)
  np.testing.assert_array_equal(
      chunked(q, k, v, q_pos, k_pos, None, None, jax.random.key(0), spec=spec, scale=0.5, chunk_size=2), plain)
  dropped = [chunked(q, k, v, q_pos, k_pos, None, None, jax.random.key(s), spec=spec, scale=0.5, chunk_size=2,
                     dropout_rate=0.5) for s in (1, 1, 2)]
  np.testing.assert_array_equal(dropped[0], dropped[1])
  assert np.abs(np.asarray(dropped[0] - dropped[2])).max() > 1e-3

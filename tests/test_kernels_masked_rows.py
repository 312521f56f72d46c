"""Tests of fully masked rows in transformer/kernels.py: a query that may attend to no key gets zeros, never NaN,
from the reference and chunked kernels, forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers.jitted_kernels import reference
from tests.helpers.kernel_inputs import positions_for, random_qkv
from transformer import kernels
from transformer.masks import MaskSpec

pytestmark = pytest.mark.usefixtures("fast_compilation")


def test_reference_fully_masked_row_gives_zeros():
  q, k, v = random_qkv(13, 2, 4, 4, 2, 1)
  q_pos, k_pos = positions_for(2, 4, 4)
  # Causal, and query segment 9 appears among no keys: query 2 of the first row sees nothing, nor does any
  # query of the second row.
  spec = MaskSpec("causal")
  q_seg = jnp.array([[0, 0, 9, 0], [9, 9, 9, 9]])
  k_seg = jnp.zeros((2, 4), jnp.int32)

  @jax.jit
  def run(q, k, v):
    def mixed_and_weights(q, k, v):
      return kernels.reference_attention(q, k, v, spec, q_pos, k_pos, q_seg, k_seg, scale=0.5)

    (mixed, weights), vjp = jax.vjp(mixed_and_weights, q, k, v)
    return mixed, weights, vjp((2 * mixed, jnp.ones_like(weights)))

  mixed, weights, grads = run(q, k, v)
  assert np.all(np.isfinite(np.asarray(mixed))) and np.all(np.isfinite(np.asarray(weights)))
  np.testing.assert_array_equal(mixed[0, 2], 0.0)
  np.testing.assert_array_equal(mixed[1], 0.0)
  np.testing.assert_array_equal(weights[0, :, 2], 0.0)
  np.testing.assert_array_equal(weights[1], 0.0)
  np.testing.assert_allclose(weights[0, :, 3].sum(axis=-1), 1.0, atol=1e-6)
  assert np.abs(np.asarray(mixed[0, 3])).max() > 1e-3
  for grad in grads:
    assert np.all(np.isfinite(np.asarray(grad)))
  np.testing.assert_array_equal(grads[0][0, 2], 0.0)
  np.testing.assert_array_equal(grads[0][1], 0.0)
  np.testing.assert_array_equal(grads[1][1], 0.0)


def test_chunked_fully_masked_row_gives_zeros():
  # Query segment 9 appears among no keys: its rows are fully masked, in every key block. (Mask "none": the
  # segments alone do the masking.)
  spec = MaskSpec("none")
  q, k, v = random_qkv(14, 2, 5, 5, 4, 2)
  q_pos, k_pos = positions_for(2, 5, 5)
  q_seg = jnp.array([[0, 0, 9, 1, 1], [9, 9, 9, 9, 9]])
  k_seg = jnp.array([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]])

  @jax.jit
  def run(q, k, v):
    def fn(q, k, v):
      return kernels.chunked_attention(q, k, v, spec, q_pos, k_pos, q_seg, k_seg, scale=0.5, chunk_size=2)

    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(2 * out + 1.0)

  out, grads = run(q, k, v)
  assert np.all(np.isfinite(np.asarray(out)))
  np.testing.assert_array_equal(out[0, 2], 0.0)
  np.testing.assert_array_equal(out[1], 0.0)
  expected, _ = reference(q, k, v, q_pos, k_pos, q_seg, k_seg, spec=spec, scale=0.5)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  for grad in grads:
    assert np.all(np.isfinite(np.asarray(grad)))
  np.testing.assert_array_equal(grads[0][0, 2], 0.0)
  np.testing.assert_array_equal(grads[0][1], 0.0)
  np.testing.assert_array_equal(grads[1][1], 0.0)
  np.testing.assert_array_equal(grads[2][1], 0.0)
  assert np.abs(np.asarray(grads[0][0, 0])).max() > 1e-4

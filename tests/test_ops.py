"""Tests of transformer/ops.py: dense() against the einsum it stands for, in float64 NumPy, and the einsums it
refuses; the dropout hash's rate, independence and counters."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer import ops
from transformer.ops import dense

pytestmark = pytest.mark.usefixtures("fast_compilation")


@pytest.mark.slow
@given(lead=st.lists(st.integers(1, 4), min_size=1, max_size=2),
       inputs=st.lists(st.integers(1, 5), min_size=1, max_size=2),
       outputs=st.lists(st.integers(1, 4), min_size=1, max_size=3), seed=st.integers(0, 100))
@settings(max_examples=25, deadline=None)
def test_dense_and_its_gradients_equal_the_einsum_in_float64(lead, inputs, outputs, seed):
  """dense() (a 2-D matmul with its own VJP) against the einsum it stands for, computed in float64 NumPy."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(*lead, *inputs))
  kernel = rng.normal(size=(*inputs, *outputs))
  d_y = rng.normal(size=(*lead, *outputs))
  letters = "abcdefgh"
  lead_s, in_s, out_s = letters[:len(lead)], letters[2:2 + len(inputs)], letters[4:4 + len(outputs)]
  spec = f"{lead_s}{in_s},{in_s}{out_s}->{lead_s}{out_s}"
  y, vjp = jax.vjp(lambda a, b: dense(a, b, spec), jnp.asarray(x, jnp.float32),
                   jnp.asarray(kernel, jnp.float32))
  d_x, d_kernel = vjp(jnp.asarray(d_y, jnp.float32))
  np.testing.assert_allclose(y, np.einsum(f"{lead_s}{in_s},{in_s}{out_s}->{lead_s}{out_s}", x, kernel), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(d_x, np.einsum(f"{lead_s}{out_s},{in_s}{out_s}->{lead_s}{in_s}", d_y, kernel),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(d_kernel, np.einsum(f"{lead_s}{in_s},{lead_s}{out_s}->{in_s}{out_s}", x, d_y),
                             rtol=1e-5, atol=1e-5)


def test_dense_rejects_a_kernel_of_other_inputs():
  with pytest.raises(ValueError, match="does not start with the contracted axes"):
    dense(jnp.zeros((2, 3)), jnp.zeros((4, 5)), "LD,DF->LF")


@pytest.mark.parametrize("spec", ["LD,DF->FL", "LD,FD->LF", "LD,DF->LD", "BLD,DF->BLF", "LD,DL->LL", "L1,1F->LF"])
def test_dense_rejects_an_einsum_it_does_not_compute(spec):
  """dense() computes only einsums that keep x's leading axes and contract its trailing ones, at the given ranks."""
  with pytest.raises(ValueError, match="dense: "):
    dense(jnp.zeros((2, 3)), jnp.zeros((3, 5)), spec)


# 2**32: one flat index numbers every element; 2**11: the leading axis is hashed in on its own, as it
# would be in masks of more than 2**32 elements.
@pytest.mark.parametrize("flat_index_limit", [2**32, 2**11])
def test_dropout_scale_drops_at_the_rate_independently_and_follows_the_key(flat_index_limit):
  rate, shape = 0.2, (64, 32, 48)
  draw = jax.jit(functools.partial(ops.dropout_scale, flat_index_limit=flat_index_limit), static_argnums=(1, 2))
  scale = np.asarray(draw(jax.random.key(3), rate, shape))
  dropped = scale == 0.0
  tolerance = 5 * np.sqrt(rate * (1 - rate) / dropped.size)  # five binomial standard deviations
  assert abs(dropped.mean() - rate) < tolerance
  np.testing.assert_array_equal(scale[~dropped], np.float32(1 / (1 - rate)))
  # Neighbours are dropped together as often as independent draws would be (rate^2), along each axis.
  for axis in range(3):
    both = np.logical_and(np.take(dropped, range(1, shape[axis]), axis), np.take(dropped, range(shape[axis] - 1), axis))
    assert abs(both.mean() - rate**2) < 5 * np.sqrt(rate**2 * (1 - rate**2) / both.size)
  np.testing.assert_array_equal(np.asarray(draw(jax.random.key(3), rate, shape)), scale)
  other = np.asarray(draw(jax.random.key(4), rate, shape)) == 0.0
  assert abs((other != dropped).mean() - 2 * rate * (1 - rate)) < 2 * tolerance
  # Raw uint32 keys (jax.random.PRNGKey) work as typed ones.
  legacy = np.asarray(draw(jax.random.PRNGKey(3), rate, shape))
  assert abs((legacy == 0.0).mean() - rate) < tolerance


@pytest.mark.parametrize("shape, flat_index_limit", [((3, 5, 8, 16), 2**32), ((3, 5, 8, 16), 128),
                                                     ((3, 5, 8, 16), 16), ((7,), 7)])
def test_element_counters_tell_every_element_apart(shape, flat_index_limit):
  counters = [np.asarray(c).ravel() for c in ops.element_counters(shape, flat_index_limit)]
  assert all(c.dtype == np.uint32 and c.max() < flat_index_limit for c in counters)
  assert len(set(zip(*counters))) == int(np.prod(shape))
  with pytest.raises(ValueError, match="axis of more than 4"):
    ops.element_counters((3, 5), flat_index_limit=4)

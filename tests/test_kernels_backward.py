"""Tests of the chunked kernel's hand-written backward pass (transformer/kernels.py): with dropout, against autodiff
of its own forward pass and against float64 NumPy; without, against autodiff of the reference kernel, in float32
and bfloat16."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers.float64_reference import dropout_attention_and_grads, pairs_allowed_BLM
from tests.helpers.jitted_kernels import reference
from tests.helpers.kernel_inputs import SPEC_IDS, SPECS, positions_for, random_qkv, random_segments
from transformer import kernels, ops
from transformer.masks import MaskSpec

pytestmark = pytest.mark.usefixtures("fast_compilation")


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _vjps(spec, scale, chunk, rate, q, k, v, q_pos, k_pos, q_seg, k_seg, rng, cotangent):
  """The output and gradients (dq, dk, dv) of <cotangent, output>: hand-written backward, then autodiff."""

  def custom(q, k, v):
    return kernels._chunked(spec, scale, chunk, rate, q, k, v, q_pos, k_pos, q_seg, k_seg, rng)

  def autodiff(q, k, v):
    return kernels._chunked_forward(spec, scale, chunk, rate, q, k, v, q_pos, k_pos, q_seg, k_seg, rng)[0]

  out_custom, vjp_custom = jax.vjp(custom, q, k, v)
  return out_custom, vjp_custom(cotangent), jax.vjp(autodiff, q, k, v)[1](cotangent)


def _chunked_dropout_multipliers_BHLM(rng, rate, chunk, batch, kv_heads, per_group, length, keys):
  """The chunked kernel's dropout multipliers as one array: key block j draws its own mask from fold_in(rng, j),
  shaped like the block's scores [B,G,Q,L,C] (ops.dropout_scale itself is tested in test_ops.py)."""
  block_multipliers = jax.jit(lambda j: ops.dropout_scale(jax.random.fold_in(rng, j), rate,
                                                          (batch, kv_heads, per_group, length, chunk)))
  multipliers_BGQLM = np.concatenate([np.asarray(block_multipliers(j)) for j in range(-(-keys // chunk))],
                                     axis=-1)[..., :keys]
  return multipliers_BGQLM.reshape(batch, kv_heads * per_group, length, keys)  # head h = g Q + q


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_chunked_custom_vjp_equals_autodiff(spec):
  # Everything at once: GQA (H = 4, G = 2), M = 7 keys in chunks of 3, packed segments, queries that are the
  # last 5 of the 7 keys, and attention dropout (the same rng gives both passes the same dropout mask).
  heads, kv_heads, length, keys, chunk, rate = 4, 2, 5, 7, 3, 0.3
  q, k, v = random_qkv(8, 2, length, keys, heads, kv_heads)
  q_pos, k_pos = positions_for(2, length, keys)
  q_seg, k_seg = random_segments(9, 2, length, keys)
  cotangent = jnp.asarray(np.random.RandomState(11).randn(2, length, heads, 3), jnp.float32)
  rng = jax.random.key(10)
  out_custom, grads_custom, grads_autodiff = _vjps(spec, 0.5, chunk, rate, q, k, v, q_pos, k_pos, q_seg, k_seg, rng,
                                                   cotangent)
  # The values come from float64 NumPy, written from the math, with the kernel's dropout multipliers: autodiff
  # of the kernel's own forward pass would agree with a forward pass that is wrong.
  allowed_BLM = pairs_allowed_BLM(spec.kind, spec.window, spec.prefix_length, q_pos, k_pos, q_seg, k_seg)
  multipliers_BHLM = _chunked_dropout_multipliers_BHLM(rng, rate, chunk, 2, kv_heads, heads // kv_heads, length,
                                                        keys)
  expected_out, expected_grads = dropout_attention_and_grads(q, k, v, allowed_BLM, multipliers_BHLM, 0.5, cotangent)
  np.testing.assert_allclose(out_custom, expected_out, rtol=1e-5, atol=1e-5)
  no_dropout, _ = reference(q, k, v, q_pos, k_pos, q_seg, k_seg, spec=spec, scale=0.5)
  assert np.abs(np.asarray(out_custom - no_dropout)).max() > 1e-3  # dropout really acted
  for name, got, autodiff, expected in zip("qkv", grads_custom, grads_autodiff, expected_grads):
    assert got.shape == expected.shape
    assert np.abs(expected).max() > 1e-3, name  # not vacuous
    np.testing.assert_allclose(got, autodiff, rtol=1e-5, atol=1e-5, err_msg=f"d{name}")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"d{name} against float64")


@pytest.mark.parametrize("spec", [SPECS[2], SPECS[3]], ids=["sliding_window", "prefix"])
def test_chunked_gradient_without_dropout_equals_reference_gradient(spec):
  # The backward pass without dropout, through the public function (segment defaults filled in), against
  # autodiff of the reference kernel.
  q, k, v = random_qkv(12, 2, 7, 7, 2, 1)
  q_pos, k_pos = positions_for(2, 7, 7)
  cotangent = jnp.asarray(np.random.RandomState(13).randn(2, 7, 2, 3), jnp.float32)

  @jax.jit
  def grads(q, k, v):
    chunked_fn = lambda q, k, v: kernels.chunked_attention(q, k, v, spec, q_pos, k_pos, scale=0.7, chunk_size=2)
    reference_fn = lambda q, k, v: kernels.reference_attention(q, k, v, spec, q_pos, k_pos, scale=0.7)[0]
    return jax.vjp(chunked_fn, q, k, v)[1](cotangent), jax.vjp(reference_fn, q, k, v)[1](cotangent)

  got, expected = grads(q, k, v)
  for name, g, e in zip("qkv", got, expected):
    assert np.abs(np.asarray(e)).max() > 1e-3, name
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5, err_msg=f"d{name}")


def test_chunked_backward_in_bfloat16_stays_close():
  q32, k32, v32 = random_qkv(19, 2, 6, 6, 4, 2)
  q_pos, k_pos = positions_for(2, 6, 6)
  spec = MaskSpec("prefix", prefix_length=2)
  cotangent = jnp.asarray(np.random.RandomState(20).randn(2, 6, 4, 3), jnp.float32)

  @jax.jit
  def grads(q, k, v):
    chunked_fn = lambda q, k, v: kernels.chunked_attention(q, k, v, spec, q_pos, k_pos, scale=0.5, chunk_size=4)
    reference_fn = lambda q, k, v: kernels.reference_attention(q, k, v, spec, q_pos, k_pos, scale=0.5)[0]
    low = jax.vjp(chunked_fn, q, k, v)[1](cotangent.astype(jnp.bfloat16))
    return low, jax.vjp(reference_fn, q32, k32, v32)[1](cotangent)

  low, expected = grads(*(x.astype(jnp.bfloat16) for x in (q32, k32, v32)))
  for name, g, e in zip("qkv", low, expected):
    assert g.dtype == jnp.bfloat16
    g = np.asarray(g, np.float32)
    assert np.all(np.isfinite(g))
    relative = np.linalg.norm(g - np.asarray(e)) / np.linalg.norm(np.asarray(e))
    assert relative < 3e-2, (name, relative)

"""Tests of transformer/attention.py by equivalence: the factored module is Flax's and JAX's attention with
renamed weights; full values equal factored ones with composed weights; one head is the textbook's single-head
attention; heads summed equal their concatenation through the output projection."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers.attention_module import MASKS, apply_attention, contiguous_positions, make_config, random_params
from tests.helpers.float64_reference import allowed_matrix

pytestmark = pytest.mark.usefixtures("fast_compilation")


def _mask_B1LL(c, batch, length):
  return jnp.broadcast_to(jnp.asarray(allowed_matrix(c, length)), (batch, 1, length, length))


@pytest.mark.parametrize("mask", MASKS)
def test_factored_equals_flax_multi_head_dot_product_attention(mask):
  # With R = K, G = H and the default scale, the factored module is Flax's attention with renamed weights.
  c = make_config(mask, "factored", heads=2, d_model=8, head_dim=4, value_rank=4)
  params = random_params(c, seed=1)
  batch, length = 2, 5
  x = jnp.asarray(np.random.RandomState(2).randn(batch, length, c.d_model), jnp.float32)
  flax_params = {
      "query": {"kernel": params["query"], "bias": params["query_bias"]},
      "key": {"kernel": params["key"], "bias": params["key_bias"]},
      "value": {"kernel": params["value_down"], "bias": params["value_down_bias"]},
      "out": {"kernel": params["value_up"], "bias": params["value_up_bias"]},
  }
  flax_attention = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, out_features=8, deterministic=True)
  expected = flax_attention.apply({"params": flax_params}, x, mask=_mask_B1LL(c, batch, length))
  out, _ = apply_attention(c, params, x, contiguous_positions(batch, length))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("heads, kv_heads", [(2, 2), (4, 2), (4, 1)])
def test_factored_equals_jax_dot_product_attention(mask, heads, kv_heads):
  c = make_config(mask, "factored", heads=heads, kv_heads=kv_heads, d_model=8, head_dim=4, value_rank=4)
  p = random_params(c, seed=3)
  batch, length = 2, 5
  x = jnp.asarray(np.random.RandomState(4).randn(batch, length, c.d_model), jnp.float32)
  q = jnp.einsum("BLD,DHK->BLHK", x, p["query"]) + p["query_bias"][None, None]
  k = jnp.einsum("BLD,DGK->BLGK", x, p["key"]) + p["key_bias"][None, None]
  v = jnp.einsum("BLD,DGR->BLGR", x, p["value_down"]) + p["value_down_bias"][None, None]
  mixed = jax.nn.dot_product_attention(q, k, v, mask=_mask_B1LL(c, batch, length))
  expected = jnp.einsum("BLHR,HRD->BLD", mixed, p["value_up"]) + p["value_up_bias"][None, None]
  out, _ = apply_attention(c, p, x, contiguous_positions(batch, length))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("heads, kv_heads", [(3, 3), (4, 2)])
def test_full_equals_factored_with_composed_weights(mask, heads, kv_heads):
  factored = make_config(mask, "factored", heads=heads, kv_heads=kv_heads, value_rank=2)
  full = make_config(mask, "full", heads=heads, kv_heads=kv_heads)
  p = random_params(factored, seed=5)
  per_group = heads // kv_heads
  # A full head of group g uses value[g]; it equals the factored heads only if their value_up agree
  # within the group, so tie them.
  value_up = jnp.repeat(p["value_up"][::per_group], per_group, axis=0)
  p["value_up"] = value_up
  group_up = value_up[::per_group]  # [G,R,D]
  composed = dict(query=p["query"], key=p["key"], query_bias=p["query_bias"], key_bias=p["key_bias"])
  composed["value"] = jnp.einsum("DGR,GRE->DGE", p["value_down"], group_up)
  # Attention rows sum to 1, so value_up_bias can ride along in the value bias, split evenly over the heads.
  composed["value_bias"] = (jnp.einsum("GR,GRE->GE", p["value_down_bias"], group_up)
                            + p["value_up_bias"][None] / heads)
  x = jnp.asarray(np.random.RandomState(6).randn(2, 5, factored.d_model), jnp.float32)
  positions = contiguous_positions(2, 5)
  out_factored, _ = apply_attention(factored, p, x, positions)
  out_full, _ = apply_attention(full, composed, x, positions)
  np.testing.assert_allclose(out_full, out_factored, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask", MASKS)
def test_one_head_equals_single_head_attention(mask):
  # H = 1 is the single-head attention of the textbook: softmax(Q K^T / sqrt(d_k) + M) V W_O.
  c = make_config(mask, "factored", heads=1, d_model=6, head_dim=6, value_rank=6, use_bias=False)
  p = random_params(c, seed=7)
  x = jnp.asarray(np.random.RandomState(8).randn(1, 5, 6), jnp.float32)
  q_mat, k_mat, v_mat = x[0] @ p["query"][:, 0], x[0] @ p["key"][:, 0], x[0] @ p["value_down"][:, 0]
  allowed = _mask_B1LL(c, 1, 5)[0, 0]
  logits = jnp.where(allowed, q_mat @ k_mat.T / jnp.sqrt(6.0), -jnp.inf)
  expected = jax.nn.softmax(logits, axis=-1) @ v_mat @ p["value_up"][0]
  out, _ = apply_attention(c, p, x, contiguous_positions(1, 5))
  np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads, kv_heads", [(3, 3), (4, 2)])
def test_summed_heads_equal_concatenation_and_output_projection(heads, kv_heads):
  c = make_config("causal", "factored", heads=heads, kv_heads=kv_heads, value_rank=2)
  p = random_params(c, seed=9)
  x = jnp.asarray(np.random.RandomState(10).randn(2, 5, c.d_model), jnp.float32)
  out, weights_BHLM = apply_attention(c, p, x, contiguous_positions(2, 5))
  v_BMGR = jnp.einsum("BMD,DGR->BMGR", x, p["value_down"]) + p["value_down_bias"][None, None]
  per_group = heads // kv_heads
  heads_out = [weights_BHLM[:, h] @ v_BMGR[:, :, h // per_group] for h in range(heads)]  # each [B,L,R]
  concatenated = jnp.concatenate(heads_out, axis=-1)  # [B, L, H*R]
  projection = p["value_up"].reshape(heads * c.value_dim, c.d_model)  # the classic W_O
  expected = concatenated @ projection + p["value_up_bias"][None, None]
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)

"""Tests of transformer/attention.py: the module against a float64 NumPy reference, equivalences, causality.

The reference below is written from the math, independently of the module: explicit loops over heads, a
mask built by looping over (query, key) pairs, a float64 softmax. The module runs in float32 with the
same parameters, pulled out of its parameter tree by name.
"""

import math

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.random_params import random_arrays, random_params as model_params
from transformer import kernels
from transformer.attention import MultiHeadAttention
from transformer.config import ModelConfig
from transformer.model import TransformerLM

pytestmark = pytest.mark.usefixtures("fast_compilation")

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
  return jnp.broadcast_to(start + jnp.arange(length), (batch, length))


def apply_attention(c, params, x, positions, segments=None, **kwargs):
  """The module's output in float32, and its sown attention weights (None unless the reference kernel ran)."""
  out, state = MultiHeadAttention(c).apply({"params": params}, x, positions, segments, mutable=["intermediates"],
                                           **kwargs)
  weights = state.get("intermediates", {}).get("attention_weights")
  return out, None if weights is None else weights[0]


# ----------------------------------------------------------------------------------------------
# The float64 NumPy reference.


def reference_allowed(c: ModelConfig, q_pos: int, k_pos: int, q_seg=0, k_seg=0) -> bool:
  if q_seg != k_seg:
    return False
  if c.mask == "none":
    return True
  if c.mask == "causal":
    return k_pos <= q_pos
  if c.mask == "sliding_window":
    return q_pos - c.window < k_pos <= q_pos
  return k_pos <= q_pos or (q_pos < c.prefix_length and k_pos < c.prefix_length)


def reference_rope(x_LK, positions_L, base):
  """Rotates feature pairs (i, i + K/2) of each row by position * base^(-2i/K), in float64."""
  _, k = x_LK.shape
  half = k // 2
  out = np.empty_like(x_LK)
  for row, pos in enumerate(positions_L):
    for i in range(half):
      angle = pos * base ** (-2.0 * i / k)
      c, s = math.cos(angle), math.sin(angle)
      out[row, i] = x_LK[row, i] * c - x_LK[row, i + half] * s
      out[row, i + half] = x_LK[row, i + half] * c + x_LK[row, i] * s
  return out


def reference_attention(c: ModelConfig, params: dict, x_BLD, positions_BL, segments_BL=None):
  """Returns (update_BLD, weights_BHLM) of multi-head self-attention, in float64, head by head."""
  p = {name: np.asarray(value, np.float64) for name, value in params.items()}
  x = np.asarray(x_BLD, np.float64)
  positions = np.asarray(positions_BL)
  segments = np.zeros(positions.shape, int) if segments_BL is None else np.asarray(segments_BL)
  batch, length, d = x.shape
  h_count, g_count = c.num_heads, c.kv_heads
  per_group = h_count // g_count
  k_width = c.head_dim if c.head_dim is not None else d // h_count
  scale = {"rsqrt": 1.0 / math.sqrt(k_width), "none": 1.0}.get(c.score_scale)
  scale = float(c.score_scale) if scale is None else scale

  def bias(name, index):
    return p[name][index] if c.use_bias else 0.0

  update = np.zeros((batch, length, d))
  weights = np.zeros((batch, h_count, length, length))
  for b in range(batch):
    allowed = np.zeros((length, length), bool)
    for i in range(length):
      for j in range(length):
        allowed[i, j] = reference_allowed(c, positions[b, i], positions[b, j], segments[b, i], segments[b, j])
    for h in range(h_count):
      g = h // per_group
      q = x[b] @ p["query"][:, h, :] + bias("query_bias", h)
      k = x[b] @ p["key"][:, g, :] + bias("key_bias", g)
      if c.positions == "rope":
        q, k = reference_rope(q, positions[b], c.rope_base), reference_rope(k, positions[b], c.rope_base)
      if c.value_mode == "full":
        v = x[b] @ p["value"][:, g, :] + bias("value_bias", g)
      else:
        v = x[b] @ p["value_down"][:, g, :] + bias("value_down_bias", g)
      scores = q @ k.T * scale
      for i in range(length):
        keys = allowed[i]
        if keys.any():
          e = np.exp(scores[i, keys] - scores[i, keys].max())
          weights[b, h, i, keys] = e / e.sum()
      head = weights[b, h] @ v
      update[b] += head if c.value_mode == "full" else head @ p["value_up"][h]
  if c.value_mode == "factored" and c.use_bias:
    update += p["value_up_bias"]
  return update, weights


# ----------------------------------------------------------------------------------------------
# Module against the reference.


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


def packed_positions(rng, batch, length):
  """Packed sequences: segment ids never decrease along a row; positions restart in each segment."""
  segments = np.sort(rng.randint(0, 3, (batch, length)), axis=1)
  positions = np.zeros((batch, length), int)
  for b in range(batch):
    for i in range(1, length):
      positions[b, i] = positions[b, i - 1] + 1 if segments[b, i] == segments[b, i - 1] else 0
  return jnp.asarray(positions), jnp.asarray(segments)


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


# ----------------------------------------------------------------------------------------------
# Equivalences.


def _mask_B1LL(c, batch, length):
  allowed = np.array([[reference_allowed(c, i, j) for j in range(length)] for i in range(length)])
  return jnp.broadcast_to(jnp.asarray(allowed), (batch, 1, length, length))


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


# ----------------------------------------------------------------------------------------------
# Causality and the attention weights.


def _allowed_matrix(c, length):
  return np.array([[reference_allowed(c, i, j) for j in range(length)] for i in range(length)])


@pytest.mark.parametrize(
    "mask, impl",
    [(mask, impl) for mask in MASKS for impl in ("reference", "chunked")]
    + [("sliding_window", "auto"), ("prefix", "auto")],  # local_window_size flag; explicit mask
)
def test_attention_gradients_follow_the_mask(mask, impl):
  # d update[t] / d x[s] is exactly 0 where t may not attend to s, and not 0 where it may.
  # value_rank = head_dim, so that "auto" runs jax.nn.dot_product_attention rather than its fallback.
  c = make_config(mask, "factored", heads=2, kv_heads=1, window=2, prefix_length=3, attention_impl=impl,
                  positions="rope", value_rank=4)
  p = random_params(c, seed=11)
  length = 6
  x = jnp.asarray(np.random.RandomState(12).randn(1, length, c.d_model), jnp.float32)
  positions = contiguous_positions(1, length)
  jacobian_fn = jax.jacrev(lambda x: apply_attention(c, p, x, positions)[0])
  if impl != "reference":  # the kernels' scans are traced anew on every eager call: compile them once
    jacobian_fn = jax.jit(jacobian_fn)
  jacobian = jacobian_fn(x)[0, :, :, 0]  # [L,D,L,D]
  dependence = np.abs(np.asarray(jacobian)).sum(axis=(1, 3))
  allowed = _allowed_matrix(c, length)
  assert np.all(dependence[~allowed] == 0.0), dependence
  assert np.all(dependence[allowed] > 1e-6), dependence
  if mask == "prefix":  # really bidirectional: token 0 depends on token 2
    assert dependence[0, 2] > 1e-6


@pytest.mark.parametrize("mask", MASKS)
def test_model_loss_gradients_are_causal(mask):
  """Through 2 layers: the loss at position t has exactly zero gradient with respect to inputs after t."""
  length, window, prefix = 7, 2, 3
  c = make_config(mask, "factored", heads=2, window=window, prefix_length=prefix, num_layers=2, max_len=length,
                  positions="learned")
  params = model_params(c, seed=13)
  tokens = jnp.asarray(np.random.RandomState(14).randint(0, c.vocab_size, (1, length)))
  targets = jnp.asarray(np.random.RandomState(15).randint(0, c.vocab_size, (length,)))

  def losses_L(delta_LD):
    # The differentiable input: a perturbation added to the embeddings, injected by intercepting nn.Embed.
    def add_delta(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, nn.Embed) and context.method_name == "__call__":
        out = out + delta_LD[None]
      return out

    with nn.intercept_methods(add_delta):
      logits_LV = TransformerLM(c).apply({"params": params}, tokens)[0]
    return jax.nn.logsumexp(logits_LV, axis=-1) - jnp.take_along_axis(logits_LV, targets[:, None], axis=-1)[:, 0]

  jacobian_LLD = jax.jit(jax.jacrev(losses_L))(jnp.zeros((length, c.d_model)))
  dependence = np.abs(np.asarray(jacobian_LLD)).sum(axis=-1)  # [t, s]
  for t in range(length):
    for s in range(length):
      if mask == "none":
        reachable = True
      elif mask == "sliding_window":  # two layers reach 2 (W - 1) tokens back
        reachable = t - 2 * (window - 1) <= s <= t
      elif mask == "prefix":
        reachable = s <= t or (t < prefix and s < prefix)
      else:
        reachable = s <= t
      if reachable:
        assert dependence[t, s] > 1e-7, (t, s, dependence)
      else:
        assert dependence[t, s] == 0.0, (t, s, dependence)


@pytest.mark.parametrize("mask", MASKS)
def test_attention_weights_exactly_zero_where_masked_and_rows_sum_to_one(mask):
  c = make_config(mask, "full", heads=4, kv_heads=2, window=2, prefix_length=3)
  p = random_params(c, seed=16)
  x = jnp.asarray(np.random.RandomState(17).randn(2, 6, c.d_model), jnp.float32)
  segments = jnp.array([[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]])
  positions = jnp.array([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 0, 1]])
  _, weights = apply_attention(c, p, x, positions, segments)
  assert weights.shape == (2, 4, 6, 6)
  weights = np.asarray(weights)
  for b in range(2):
    allowed = np.array([[reference_allowed(c, positions[b, i], positions[b, j], segments[b, i], segments[b, j])
                         for j in range(6)] for i in range(6)])
    for h in range(4):
      assert np.all(weights[b, h][~allowed] == 0.0)
      assert np.all(weights[b, h][allowed] > 0.0)
      np.testing.assert_allclose(weights[b, h].sum(axis=-1), 1.0, rtol=0, atol=1e-6)


def test_weights_sown_only_when_intermediates_are_mutable():
  c = make_config("causal", "factored")
  p = random_params(c, seed=18)
  x = jnp.ones((1, 3, c.d_model))
  _, state = MultiHeadAttention(c).apply({"params": p}, x, contiguous_positions(1, 3), mutable=["intermediates"])
  assert state["intermediates"]["attention_weights"][0].shape == (1, c.num_heads, 3, 3)
  out = MultiHeadAttention(c).apply({"params": p}, x, contiguous_positions(1, 3))
  assert isinstance(out, jax.Array)


def test_attention_dropout_needs_deterministic_false_and_the_dropout_rng():
  # (The chunked kernel's dropout is tested in test_kernels.py.)
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

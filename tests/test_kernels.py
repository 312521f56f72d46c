"""Tests of transformer/kernels.py: chunked and auto against the reference kernel, the chunked kernel's
hand-written backward pass against autodiff, fully masked rows, attention dropout."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from transformer import kernels, ops
from transformer.masks import MaskSpec

pytestmark = pytest.mark.usefixtures("fast_compilation")

SPECS = (MaskSpec("causal"), MaskSpec("none"), MaskSpec("sliding_window", window=2),
         MaskSpec("prefix", prefix_length=3))
SPEC_IDS = [spec.kind for spec in SPECS]


def random_qkv(seed, batch, length, keys, heads, kv_heads, key_dim=4, value_dim=3, dtype=jnp.float32):
  rng = np.random.RandomState(seed)
  q = jnp.asarray(rng.randn(batch, length, heads, key_dim), dtype)
  k = jnp.asarray(rng.randn(batch, keys, kv_heads, key_dim), dtype)
  v = jnp.asarray(rng.randn(batch, keys, kv_heads, value_dim), dtype)
  return q, k, v


def positions_for(batch, length, keys):
  """Queries are the last `length` of `keys` tokens: self-attention when equal, a decoding step when shorter."""
  q_pos = jnp.broadcast_to(keys - length + jnp.arange(length), (batch, length))
  k_pos = jnp.broadcast_to(jnp.arange(keys), (batch, keys))
  return q_pos, k_pos


def random_segments(seed, batch, length, keys):
  """Non-decreasing segment ids over the keys; each query takes the id of the key at its position."""
  rng = np.random.RandomState(seed)
  k_seg = np.sort(rng.randint(0, 3, (batch, keys)), axis=1)
  return jnp.asarray(k_seg[:, keys - length:]), jnp.asarray(k_seg)


@functools.partial(jax.jit, static_argnames=("spec", "scale"))
def reference(q, k, v, q_pos, k_pos, q_seg, k_seg, *, spec, scale):
  return kernels.reference_attention(q, k, v, spec, q_pos, k_pos, q_seg, k_seg, scale=scale)


@functools.partial(jax.jit, static_argnames=("spec", "scale", "chunk_size", "dropout_rate"))
def chunked(q, k, v, q_pos, k_pos, q_seg, k_seg, rng=None, *, spec, scale, chunk_size, dropout_rate=0.0):
  return kernels.chunked_attention(q, k, v, spec, q_pos, k_pos, q_seg, k_seg, scale=scale, chunk_size=chunk_size,
                                   dropout_rate=dropout_rate, dropout_rng=rng)


@functools.partial(jax.jit, static_argnames=("spec", "scale", "chunk_size", "dropout_rate", "contiguous"))
def auto(q, k, v, q_pos, k_pos, q_seg, k_seg, rng=None, *, spec, scale, chunk_size=2, dropout_rate=0.0,
         contiguous=False):
  return kernels.auto_attention(q, k, v, spec, q_pos, k_pos, q_seg, k_seg, scale=scale, chunk_size=chunk_size,
                                dropout_rate=dropout_rate, dropout_rng=rng, contiguous=contiguous)


# ----------------------------------------------------------------------------------------------
# chunked == reference


@given(
    spec=st.sampled_from(SPECS + (MaskSpec("sliding_window", window=1), MaskSpec("prefix", prefix_length=1))),
    heads_kv=st.sampled_from([(1, 1), (2, 1), (4, 2)]),
    lengths=st.sampled_from([(4, 4), (1, 5), (3, 7), (7, 7)]),  # (L, M)
    chunk_size=st.sampled_from([1, 3, 16]),
    packed=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_chunked_equals_reference(spec, heads_kv, lengths, chunk_size, packed, seed):
  (heads, kv_heads), (length, keys) = heads_kv, lengths
  q, k, v = random_qkv(seed, 2, length, keys, heads, kv_heads)
  q_pos, k_pos = positions_for(2, length, keys)
  q_seg, k_seg = random_segments(seed, 2, length, keys) if packed else (None, None)
  expected, _ = reference(q, k, v, q_pos, k_pos, q_seg, k_seg, spec=spec, scale=0.5)
  got = chunked(q, k, v, q_pos, k_pos, q_seg, k_seg, spec=spec, scale=0.5, chunk_size=chunk_size)
  assert got.shape == (2, length, heads, 3) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_chunked_equals_reference_with_large_scores():
  # Scores far apart: the online softmax must rescale its running sums, not overflow or underflow.
  q, k, v = random_qkv(1, 1, 6, 6, 2, 2)
  q_pos, k_pos = positions_for(1, 6, 6)
  k = k.at[:, 4].multiply(30.0)
  spec = MaskSpec("prefix", prefix_length=2)
  expected, _ = reference(q, k, v, q_pos, k_pos, None, None, spec=spec, scale=2.0)
  got = chunked(q, k, v, q_pos, k_pos, None, None, spec=spec, scale=2.0, chunk_size=2)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# auto == reference


@pytest.mark.parametrize(
    "spec, heads, kv_heads, length, keys, packed, contiguous",
    [
        (MaskSpec("causal"), 4, 2, 5, 5, False, True),  # is_causal flag
        (MaskSpec("sliding_window", window=2), 2, 1, 5, 5, False, True),  # local_window_size flag
        (MaskSpec("none"), 2, 2, 5, 5, False, True),  # no flag at all
        (MaskSpec("prefix", prefix_length=3), 4, 2, 5, 5, False, True),  # prefix has no flag: explicit mask
        (MaskSpec("causal"), 4, 1, 5, 5, True, False),  # segments: explicit mask
        (MaskSpec("sliding_window", window=3), 2, 2, 2, 6, False, False),  # L != M: explicit mask
    ],
    ids=["causal-flag", "sliding-flag", "none-flag", "prefix-mask", "causal-segments", "sliding-decode"],
)
def test_auto_equals_reference(spec, heads, kv_heads, length, keys, packed, contiguous):
  q, k, v = random_qkv(3, 2, length, keys, heads, kv_heads, key_dim=4, value_dim=4)
  q_pos, k_pos = positions_for(2, length, keys)
  q_seg, k_seg = random_segments(4, 2, length, keys) if packed else (None, None)
  assert kernels.auto_fallback_reason(4, 4, dropout=False) is None
  expected, _ = reference(q, k, v, q_pos, k_pos, q_seg, k_seg, spec=spec, scale=0.5)
  got = auto(q, k, v, q_pos, k_pos, q_seg, k_seg, spec=spec, scale=0.5, contiguous=contiguous)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_auto_fallback_reasons():
  assert kernels.auto_fallback_reason(8, 8, dropout=False) is None
  assert "value width 3" in kernels.auto_fallback_reason(8, 3, dropout=False)
  assert "dropout" in kernels.auto_fallback_reason(8, 8, dropout=True)


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[3]], ids=["causal", "prefix"])
def test_auto_falls_back_for_full_width_values(spec):
  # value_mode "full" (R = D != K): jax.nn.dot_product_attention cannot run it; the chunked kernel does.
  q, k, v = random_qkv(5, 2, 5, 5, 4, 2, key_dim=4, value_dim=6)
  q_pos, k_pos = positions_for(2, 5, 5)
  expected, _ = reference(q, k, v, q_pos, k_pos, None, None, spec=spec, scale=0.5)
  got = auto(q, k, v, q_pos, k_pos, None, None, spec=spec, scale=0.5, contiguous=True)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_auto_falls_back_to_chunked_dropout():
  q, k, v = random_qkv(6, 2, 5, 5, 2, 1, key_dim=4, value_dim=4)
  q_pos, k_pos = positions_for(2, 5, 5)
  rng = jax.random.key(7)
  spec = MaskSpec("causal")
  got = auto(q, k, v, q_pos, k_pos, None, None, rng, spec=spec, scale=0.5, chunk_size=2, dropout_rate=0.4,
             contiguous=True)
  expected = chunked(q, k, v, q_pos, k_pos, None, None, rng, spec=spec, scale=0.5, chunk_size=2, dropout_rate=0.4)
  np.testing.assert_array_equal(got, expected)
  no_dropout, _ = reference(q, k, v, q_pos, k_pos, None, None, spec=spec, scale=0.5)
  assert np.abs(np.asarray(got - no_dropout)).max() > 1e-3


# ----------------------------------------------------------------------------------------------
# The chunked kernel's custom VJP against autodiff of the same forward pass.


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _vjps(spec, scale, chunk, rate, q, k, v, q_pos, k_pos, q_seg, k_seg, rng, cotangent):
  """Outputs and gradients (dq, dk, dv) of <cotangent, output>: hand-written backward, then autodiff."""

  def custom(q, k, v):
    return kernels._chunked(spec, scale, chunk, rate, q, k, v, q_pos, k_pos, q_seg, k_seg, rng)

  def autodiff(q, k, v):
    return kernels._chunked_forward(spec, scale, chunk, rate, q, k, v, q_pos, k_pos, q_seg, k_seg, rng)[0]

  out_custom, vjp_custom = jax.vjp(custom, q, k, v)
  out_autodiff, vjp_autodiff = jax.vjp(autodiff, q, k, v)
  return out_custom, out_autodiff, vjp_custom(cotangent), vjp_autodiff(cotangent)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_chunked_custom_vjp_equals_autodiff(spec):
  # Everything at once: GQA (H = 4, G = 2), M = 7 keys in chunks of 3, packed segments, queries that are the
  # last 5 of the 7 keys, and attention dropout (the same rng gives both passes the same dropout mask).
  heads, kv_heads, length, keys, chunk, rate = 4, 2, 5, 7, 3, 0.3
  q, k, v = random_qkv(8, 2, length, keys, heads, kv_heads)
  q_pos, k_pos = positions_for(2, length, keys)
  q_seg, k_seg = random_segments(9, 2, length, keys)
  cotangent = jnp.asarray(np.random.RandomState(11).randn(2, length, heads, 3), jnp.float32)
  out_custom, out_autodiff, grads_custom, grads_autodiff = _vjps(
      spec, 0.5, chunk, rate, q, k, v, q_pos, k_pos, q_seg, k_seg, jax.random.key(10), cotangent)
  np.testing.assert_array_equal(out_custom, out_autodiff)
  no_dropout, _ = reference(q, k, v, q_pos, k_pos, q_seg, k_seg, spec=spec, scale=0.5)
  assert np.abs(np.asarray(out_custom - no_dropout)).max() > 1e-3  # dropout really acted
  for name, got, expected in zip("qkv", grads_custom, grads_autodiff):
    assert got.shape == expected.shape
    assert np.abs(np.asarray(expected)).max() > 1e-3, name  # not vacuous
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"d{name}")


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


# ----------------------------------------------------------------------------------------------
# Query tiles of the reference kernel: the same function, with the key blocks after each tile skipped.


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


# ----------------------------------------------------------------------------------------------
# Fully masked rows give zeros, never NaN.


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


# ----------------------------------------------------------------------------------------------
# Attention dropout.


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


# ----------------------------------------------------------------------------------------------
# bfloat16.


@pytest.mark.parametrize("kernel", ["reference", "chunked", "auto"])
def test_bfloat16_runs_and_stays_close(kernel):
  q32, k32, v32 = random_qkv(18, 2, 6, 6, 4, 2, key_dim=4, value_dim=4)
  q, k, v = (x.astype(jnp.bfloat16) for x in (q32, k32, v32))
  q_pos, k_pos = positions_for(2, 6, 6)
  spec = MaskSpec("causal")
  if kernel == "reference":
    got, _ = reference(q, k, v, q_pos, k_pos, None, None, spec=spec, scale=0.5)
  elif kernel == "chunked":
    got = chunked(q, k, v, q_pos, k_pos, None, None, spec=spec, scale=0.5, chunk_size=4)
  else:
    got = auto(q, k, v, q_pos, k_pos, None, None, spec=spec, scale=0.5, contiguous=True)
  assert got.dtype == jnp.bfloat16
  expected, _ = reference(q32, k32, v32, q_pos, k_pos, None, None, spec=spec, scale=0.5)
  np.testing.assert_allclose(np.asarray(got, np.float32), expected, rtol=0, atol=5e-2)


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

"""Tests of transformer/kernels.py's forward passes: chunked and auto against the reference kernel, in float32
and bfloat16, and auto's fallbacks to the chunked kernel, each said once.

The backward passes are tested in test_kernels_backward.py, the query tiles in test_kernels_query_tiles.py,
fully masked rows in test_kernels_masked_rows.py, attention dropout in test_kernels_dropout.py.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.jitted_kernels import auto, chunked, reference
from tests.helpers.kernel_inputs import SPECS, positions_for, random_qkv, random_segments
from transformer import kernels
from transformer.masks import MaskSpec

pytestmark = pytest.mark.usefixtures("fast_compilation")


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


def test_auto_says_once_why_it_falls_back(caplog):
  # The README: auto "falls back to chunked, and says so once". Once per reason, not per trace: a model of many
  # layers, traced again at each new shape, logs one line that names the reason.
  kernels._log_fallback_once.cache_clear()  # earlier tests in this process may have said it already
  spec = MaskSpec("causal")

  def trace(length, value_dim, dropout_rate):
    q, k, v = random_qkv(0, 1, length, length, 2, 1, key_dim=4, value_dim=value_dim)
    q_pos, k_pos = positions_for(1, length, length)
    jax.eval_shape(lambda q, k, v: kernels.auto_attention(q, k, v, spec, q_pos, k_pos, scale=0.5, chunk_size=2,
                                                          dropout_rate=dropout_rate, dropout_rng=jax.random.key(0),
                                                          contiguous=True), q, k, v)

  with caplog.at_level(logging.WARNING):
    for length in (3, 4, 5):  # a new shape is a new trace
      trace(length, value_dim=6, dropout_rate=0.0)
      trace(length, value_dim=4, dropout_rate=0.5)
      trace(length, value_dim=4, dropout_rate=0.0)  # no fallback: nothing to say
  messages = [record.getMessage() for record in caplog.records if "attention_impl='auto'" in record.getMessage()]
  assert len(messages) == 2, messages
  assert "falls back to the chunked kernel" in messages[0] and "falls back to the chunked kernel" in messages[1]
  assert "value width 6 differs from key width 4" in messages[0], messages
  assert "no attention dropout" in messages[1], messages


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

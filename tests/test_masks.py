"""Tests of transformer/masks.py: literal expected matrices, and MaskSpec against its definition."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from transformer.config import ModelConfig
from transformer.masks import MaskSpec, mask_matrix

# Row i is query i, column j is key j; 1 = may attend. Written out by hand, not computed.
CAUSAL_5 = [
    [1, 0, 0, 0, 0],
    [1, 1, 0, 0, 0],
    [1, 1, 1, 0, 0],
    [1, 1, 1, 1, 0],
    [1, 1, 1, 1, 1],
]
NONE_5 = [[1] * 5] * 5
SLIDING_WINDOW_2_5 = [
    [1, 0, 0, 0, 0],
    [1, 1, 0, 0, 0],
    [0, 1, 1, 0, 0],
    [0, 0, 1, 1, 0],
    [0, 0, 0, 1, 1],
]
PREFIX_2_5 = [
    [1, 1, 0, 0, 0],
    [1, 1, 0, 0, 0],
    [1, 1, 1, 0, 0],
    [1, 1, 1, 1, 0],
    [1, 1, 1, 1, 1],
]
# Two sequences packed in one row: tokens 0-1 are segment 0, tokens 2-4 segment 1, positions restart.
PACKED_CAUSAL_5 = [
    [1, 0, 0, 0, 0],
    [1, 1, 0, 0, 0],
    [0, 0, 1, 0, 0],
    [0, 0, 1, 1, 0],
    [0, 0, 1, 1, 1],
]


@pytest.mark.parametrize(
    "spec, expected",
    [
        (MaskSpec("causal"), CAUSAL_5),
        (MaskSpec("none"), NONE_5),
        (MaskSpec("sliding_window", window=2), SLIDING_WINDOW_2_5),
        (MaskSpec("prefix", prefix_length=2), PREFIX_2_5),
        (MaskSpec("sliding_window", window=1), np.eye(5, dtype=int).tolist()),
        (MaskSpec("sliding_window", window=5), CAUSAL_5),
        (MaskSpec("prefix", prefix_length=5), NONE_5),
    ],
    ids=["causal", "none", "sliding_window_2", "prefix_2", "sliding_window_1", "sliding_window_5", "prefix_5"],
)
def test_mask_matrix_literal(spec, expected):
  allowed = mask_matrix(spec, 5)
  assert allowed.dtype == jnp.bool_
  np.testing.assert_array_equal(np.asarray(allowed).astype(int), np.array(expected))


def test_packed_segments_with_causal_literal():
  positions = jnp.array([[0, 1, 0, 1, 2]])
  segments = jnp.array([[0, 0, 1, 1, 1]])
  allowed = MaskSpec("causal")(positions, positions, segments, segments)
  np.testing.assert_array_equal(np.asarray(allowed[0]).astype(int), np.array(PACKED_CAUSAL_5))


def test_packed_segments_with_prefix_literal():
  # Prefix P=2 inside each packed segment: both segments' first two tokens see each other.
  positions = jnp.array([[0, 1, 2, 0, 1]])
  segments = jnp.array([[3, 3, 3, 7, 7]])
  allowed = MaskSpec("prefix", prefix_length=2)(positions, positions, segments, segments)
  expected = [
      [1, 1, 0, 0, 0],
      [1, 1, 0, 0, 0],
      [1, 1, 1, 0, 0],
      [0, 0, 0, 1, 1],
      [0, 0, 0, 1, 1],
  ]
  np.testing.assert_array_equal(np.asarray(allowed[0]).astype(int), np.array(expected))


def test_decoding_step_row_against_longer_cache():
  # One query at position 3 against a cache of 6 slots: slots 4 and 5 are in its future.
  q_positions = jnp.array([[3]])
  k_positions = jnp.arange(6)[None]
  rows = {
      "causal": MaskSpec("causal")(q_positions, k_positions),
      "sliding_window": MaskSpec("sliding_window", window=2)(q_positions, k_positions),
      "prefix": MaskSpec("prefix", prefix_length=5)(q_positions, k_positions),
  }
  np.testing.assert_array_equal(np.asarray(rows["causal"][0, 0]).astype(int), [1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(np.asarray(rows["sliding_window"][0, 0]).astype(int), [0, 0, 1, 1, 0, 0])
  # Query 3 is inside the prefix [0, 5): it sees key 4 (in the prefix) but not key 5.
  np.testing.assert_array_equal(np.asarray(rows["prefix"][0, 0]).astype(int), [1, 1, 1, 1, 1, 0])


def _allowed_by_definition(kind, window, prefix, q_pos, k_pos, q_seg, k_seg):
  """The mask written from its definition with explicit loops, for one row of the batch."""
  out = np.zeros((len(q_pos), len(k_pos)), bool)
  for i, (qp, qs) in enumerate(zip(q_pos, q_seg)):
    for j, (kp, ks) in enumerate(zip(k_pos, k_seg)):
      if kind == "none":
        ok = True
      elif kind == "causal":
        ok = kp <= qp
      elif kind == "sliding_window":
        ok = qp - window < kp <= qp
      else:
        ok = kp <= qp or (qp < prefix and kp < prefix)
      out[i, j] = ok and qs == ks
  return out


@given(
    kind=st.sampled_from(["causal", "none", "sliding_window", "prefix"]),
    window=st.integers(1, 6),
    prefix=st.integers(1, 6),
    data=st.data(),
)
def test_mask_spec_matches_definition(kind, window, prefix, data):
  batch, l, m = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
  positions = st.integers(0, 8)
  q_pos = np.array(data.draw(st.lists(st.lists(positions, min_size=l, max_size=l), min_size=batch, max_size=batch)))
  k_pos = np.array(data.draw(st.lists(st.lists(positions, min_size=m, max_size=m), min_size=batch, max_size=batch)))
  segments = st.integers(0, 2)
  q_seg = np.array(data.draw(st.lists(st.lists(segments, min_size=l, max_size=l), min_size=batch, max_size=batch)))
  k_seg = np.array(data.draw(st.lists(st.lists(segments, min_size=m, max_size=m), min_size=batch, max_size=batch)))
  spec = MaskSpec(kind, window if kind == "sliding_window" else 0, prefix if kind == "prefix" else 0)
  got = np.asarray(spec(jnp.asarray(q_pos), jnp.asarray(k_pos), jnp.asarray(q_seg), jnp.asarray(k_seg)))
  got_unpacked = np.asarray(spec(jnp.asarray(q_pos), jnp.asarray(k_pos)))
  for b in range(batch):
    np.testing.assert_array_equal(
        got[b], _allowed_by_definition(kind, window, prefix, q_pos[b], k_pos[b], q_seg[b], k_seg[b]))
    np.testing.assert_array_equal(
        got_unpacked[b],
        _allowed_by_definition(kind, window, prefix, q_pos[b], k_pos[b], np.zeros(l), np.zeros(m)))


def test_from_config():
  config = ModelConfig(vocab_size=5, max_len=8, mask="sliding_window", window=3)
  assert MaskSpec.from_config(config) == MaskSpec("sliding_window", 3, 0)
  config = ModelConfig(vocab_size=5, max_len=8, mask="prefix", prefix_length=4)
  assert MaskSpec.from_config(config) == MaskSpec("prefix", 0, 4)


def test_unknown_kind_raises():
  with pytest.raises(ValueError, match="mask kind 'diagonal'"):
    MaskSpec("diagonal")


def test_segment_ids_for_one_side_only_raise():
  positions = jnp.arange(3)[None]
  with pytest.raises(ValueError, match="segment ids"):
    MaskSpec("causal")(positions, positions, jnp.zeros((1, 3), jnp.int32), None)
  with pytest.raises(ValueError, match="segment ids"):
    MaskSpec("causal")(positions, positions, None, jnp.zeros((1, 3), jnp.int32))

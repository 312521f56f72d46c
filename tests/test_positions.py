"""Tests of transformer/positions.py: the 2017 sinusoidal table and rotary embeddings."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from transformer.positions import apply_rope, sinusoidal_table


@pytest.mark.parametrize("length, width", [(1, 2), (7, 6), (50, 16), (9, 5)])
def test_sinusoidal_table_matches_2017_formula(length, width):
  table = sinusoidal_table(length, width)
  assert table.shape == (length, width) and table.dtype == np.float32
  expected = np.zeros((length, width), np.float64)
  for pos in range(length):
    for i in range(width):
      # PE(pos, 2i) = sin(pos / 10000^(2i / d)), PE(pos, 2i + 1) = cos(pos / 10000^(2i / d)).
      angle = pos / 10000.0 ** ((i - i % 2) / width)
      expected[pos, i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
  np.testing.assert_allclose(table, expected, rtol=0, atol=1e-6)


def _rope_numpy(x, positions, base):
  """Su et al.'s rotation in float64 with explicit loops: pair (i, i + K/2) turns by pos * base^(-2i/K)."""
  x = np.asarray(x, np.float64)
  out = np.empty_like(x)
  b_size, l_size, h_size, k = x.shape
  half = k // 2
  for b in range(b_size):
    for l in range(l_size):
      for i in range(half):
        angle = positions[b, l] * base ** (-2.0 * i / k)
        c, s = math.cos(angle), math.sin(angle)
        for h in range(h_size):
          a, d = x[b, l, h, i], x[b, l, h, i + half]
          out[b, l, h, i] = a * c - d * s
          out[b, l, h, i + half] = d * c + a * s
  return out


def test_rope_matches_numpy_rotation():
  rng = np.random.RandomState(0)
  x = rng.randn(2, 5, 3, 8).astype(np.float32)
  positions = np.array([[0, 1, 2, 3, 4], [7, 3, 0, 11, 2]])
  got = apply_rope(jnp.asarray(x), jnp.asarray(positions), 10_000.0)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, _rope_numpy(x, positions, 10_000.0), rtol=1e-5, atol=1e-5)
  # Position 0 is the identity, and a rotation keeps each pair's norm.
  np.testing.assert_allclose(got[0, 0], x[0, 0], rtol=0, atol=0)
  np.testing.assert_allclose(jnp.linalg.norm(got, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


@jax.jit
def _rope_scores(q_BLHK, k_BMHK, q_positions_BL, k_positions_BM, base):
  return jnp.einsum("BLHK,BMHK->BHLM", apply_rope(q_BLHK, q_positions_BL, base),
                    apply_rope(k_BMHK, k_positions_BM, base))


@given(
    q_positions=st.lists(st.integers(0, 60), min_size=4, max_size=4),
    k_positions=st.lists(st.integers(0, 60), min_size=3, max_size=3),
    offset=st.integers(-30, 500),
    seed=st.integers(0, 2**16),
    base=st.sampled_from([100.0, 10_000.0]),
)
def test_rope_scores_depend_only_on_relative_position(q_positions, k_positions, offset, seed, base):
  # q(m + o) . k(n + o) == q(m) . k(n): shifting every position by the same offset leaves scores unchanged.
  offset = max(offset, -min(q_positions + k_positions))
  rng = np.random.RandomState(seed)
  q = jnp.asarray(rng.randn(1, 4, 2, 6), jnp.float32)
  k = jnp.asarray(rng.randn(1, 3, 2, 6), jnp.float32)
  q_pos, k_pos = jnp.array([q_positions]), jnp.array([k_positions])
  unshifted = _rope_scores(q, k, q_pos, k_pos, base)
  np.testing.assert_allclose(_rope_scores(q, k, q_pos + offset, k_pos + offset, base), unshifted,
                             rtol=1e-4, atol=1e-4)
  # And the property is not vacuous: shifting the queries alone changes the scores.
  if offset != 0:
    shifted = _rope_scores(q, k, q_pos + offset, k_pos, base)
    assert np.abs(np.asarray(shifted - unshifted)).max() > 1e-3


def test_rope_bfloat16_keeps_dtype_and_stays_close():
  rng = np.random.RandomState(1)
  x = rng.randn(1, 4, 2, 8).astype(np.float32)
  positions = jnp.array([[0, 100, 300, 1000]])
  got = apply_rope(jnp.asarray(x, jnp.bfloat16), positions, 10_000.0)
  assert got.dtype == jnp.bfloat16
  expected = _rope_numpy(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), np.asarray(positions), 10_000.0)
  np.testing.assert_allclose(np.asarray(got, np.float32), expected, rtol=2e-2, atol=2e-2)


def test_rope_is_jittable_with_traced_positions():
  x = jnp.ones((1, 3, 1, 4))
  positions = jnp.array([[2, 5, 9]])
  np.testing.assert_allclose(jax.jit(apply_rope, static_argnums=2)(x, positions, 10_000.0),
                             apply_rope(x, positions, 10_000.0), rtol=1e-6, atol=1e-6)


# Associative recall small enough to train in well under a minute: 2 pairs in 16 tokens (chance 0.5), a constant
# learning rate (the step at which a run leaves the plateau does not depend on the run's length). Measured on a
# 2-core Xeon, accuracy at steps 350 / 400 / 450 / 500: learned positions 0.64 / 0.81 / 0.79 / 0.85 (train.seed 0;
# seed 1 stayed at chance for 800 steps), sinusoidal as the model adds them 0.73 / 0.86 / 0.98 / 1.0 (seed 1:
# 0.56 / 0.59 / 0.77 / 0.92). Added at full size to embeddings of std 0.02, sinusoidal positions reached 0.16 at
# step 400. With a cosine schedule over 2,000 steps, seed 0: the std-0.02 embeddings times sqrt(D) stayed at chance
# throughout, the table scaled down to std 0.02 left it at step 1,100 (seed 1: never), the model's way at 350.
RECALL = {"model.d_model": 64, "model.num_heads": 4, "data.seq_len": 16, "data.num_pairs": 2, "data.num_queries": 2,
          "data.num_train": 20_000, "train.batch_size": 64, "optimizer.learning_rate": 1e-3,
          "optimizer.schedule": "constant"}
STEPS = 400  # what learned positions need with train.seed 0


@pytest.mark.slow
def test_sinusoidal_positions_learn_recall_within_the_steps_learned_positions_need(tfds_data_dir, tmp_path):
  from experiments.files import read_metrics
  from experiments.runner import train_and_evaluate
  from tests.helpers.tiny_config import tiny_config

  config = tiny_config(tfds_data_dir, {**RECALL, "model.positions": "sinusoidal", "train.steps": STEPS})
  config.train.eval_every, config.train.log_every, config.eval.max_batches = STEPS // 4, STEPS // 4, 4
  train_and_evaluate(config, str(tmp_path))
  accuracy = {m["step"]: m["eval/accuracy"] for m in read_metrics(str(tmp_path)) if "eval/accuracy" in m}
  print("eval accuracy by step:", accuracy)
  assert accuracy[STEPS] > 0.75

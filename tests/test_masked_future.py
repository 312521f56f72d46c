"""Tests of benchmarks/masked_future.py: sampling must never show a model the tokens after the one it predicts."""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.masked_future import prefix_only_metrics, sampled_accuracy

V = 16


class NextInputCopier:
  """A stand-in for a model trained without a causal mask: it predicts each position's next input."""

  def apply(self, variables, tokens_BL):
    del variables
    next_BL = jnp.concatenate([tokens_BL[:, 1:], jnp.zeros_like(tokens_BL[:, :1])], axis=1)
    return jax.nn.one_hot(next_BL, V)


class CurrentInputCopier:
  """A causal stand-in: it predicts the token it reads (right whenever the sequence repeats a token)."""

  def apply(self, variables, tokens_BL):
    del variables
    return jax.nn.one_hot(tokens_BL, V)


def test_a_model_reading_the_next_input_is_perfect_teacher_forced_and_wrong_when_sampling():
  rng = np.random.default_rng(0)
  stream_BT = rng.integers(1, V, size=(4, 13))
  inputs_BL, targets_BL = stream_BT[:, :-1], stream_BT[:, 1:]
  weights_BL = np.zeros(inputs_BL.shape, np.float32)
  weights_BL[:, 6:-1] = 1.0  # not the last position: its next input is past the end for this stand-in too
  forced, sampled = sampled_accuracy(NextInputCopier(), {}, inputs_BL, targets_BL, weights_BL)
  assert forced == 1.0 and sampled == 0.0


def test_a_causal_model_samples_what_it_would_have_predicted_from_its_own_tokens():
  inputs_BL = np.array([[3, 5, 5, 5, 5, 5]])  # copying the current token is right from position 1 on
  targets_BL = np.array([[5, 5, 5, 5, 5, 5]])
  weights_BL = np.array([[0, 1, 1, 1, 1, 1]], np.float32)
  forced, sampled = sampled_accuracy(CurrentInputCopier(), {}, inputs_BL, targets_BL, weights_BL)
  assert forced == 1.0 and sampled == 1.0  # its own predictions are the true tokens, so nothing changes


def _text_batch(seed: int = 0):
  stream_BT = np.random.default_rng(seed).integers(1, V, size=(3, 11))
  weights_BL = np.ones((3, 10), np.float32)
  weights_BL[:, -1] = 0.0  # the last position's next input is past the window for the copier too
  return stream_BT[:, :-1], stream_BT[:, 1:], weights_BL


def _reference_loss(logits_BLV: np.ndarray, targets_BL: np.ndarray, weights_BL: np.ndarray) -> float:
  logits = logits_BLV.astype(np.float64)
  log_z = np.log(np.exp(logits).sum(-1))
  picked = np.take_along_axis(logits, targets_BL[..., None], axis=-1)[..., 0]
  return float(((log_z - picked) * weights_BL).sum() / weights_BL.sum())


def test_on_text_the_next_input_reader_is_right_only_when_it_sees_the_window():
  inputs_BL, targets_BL, weights_BL = _text_batch()
  got = prefix_only_metrics(NextInputCopier(), {}, inputs_BL, targets_BL, weights_BL)
  assert got["teacher-forced accuracy"] == 1.0 and got["prefix-only accuracy"] == 0.0
  # Prefix-only, the copier's next input is always missing: it predicts token 0, never a target.
  zeros_BLV = np.asarray(jax.nn.one_hot(np.zeros_like(targets_BL), V))
  np.testing.assert_allclose(got["prefix-only loss"], _reference_loss(zeros_BLV, targets_BL, weights_BL), rtol=1e-6)
  forced_BLV = np.asarray(jax.nn.one_hot(targets_BL, V))
  np.testing.assert_allclose(got["teacher-forced loss"], _reference_loss(forced_BLV, targets_BL, weights_BL),
                             rtol=1e-6)
  assert got["teacher-forced loss"] < got["prefix-only loss"]


def test_on_text_a_causal_model_scores_the_same_from_its_prefixes():
  inputs_BL, targets_BL, weights_BL = _text_batch(1)
  got = prefix_only_metrics(CurrentInputCopier(), {}, inputs_BL, targets_BL, weights_BL)
  assert got["teacher-forced accuracy"] == got["prefix-only accuracy"]
  np.testing.assert_allclose(got["teacher-forced loss"], got["prefix-only loss"], rtol=1e-6)

"""Per-head scores: each reduces the attention of every layer, weights_NBHLM, to one number per head, scores_NH.

To add a score: a function of weights_NBHLM here, an entry in SCORE_TITLES (the order of tables and plots) and
in `scores_of`. Letters as in the README's key: N layers, B batch, H heads, L queries, M keys.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.inspection import forward_pass
from transformer import TransformerLM

# The per-head scores, in the order of tables and plots, with what each measures.
SCORE_TITLES = {
    "entropy": "mean entropy (nats)",
    "distance": "mean attention distance (tokens)",
    "previous_token": "previous-token score",
    "induction": "induction score",
}
INDUCTION_BATCH = 16  # repeated random sequences behind each induction score (the CLI and the runner alike)


def _mean_over_queries(values_NBHL: jax.Array, counted_L: jax.Array) -> jax.Array:
  """Mean over batch and the counted queries: scores_NH."""
  counted_111L = counted_L.astype(jnp.float32)[None, None, None]
  return (values_NBHL * counted_111L).sum(axis=(1, 3)) / (values_NBHL.shape[1] * jnp.maximum(counted_111L.sum(), 1.0))


def entropy(weights_NBHLM: jax.Array) -> jax.Array:
  """Mean entropy in nats of each head's attention over keys (0: one key; log M: uniform).

  Queries that see no key (all weights 0) are left out of the mean.
  """
  # 0 log 0 = 0: masked keys contribute nothing.
  terms = jnp.where(weights_NBHLM > 0, -weights_NBHLM * jnp.log(jnp.where(weights_NBHLM > 0, weights_NBHLM, 1.0)), 0.0)
  sees_any_L = weights_NBHLM.sum(axis=-1).max(axis=(0, 1, 2)) > 0
  return _mean_over_queries(terms.sum(axis=-1), sees_any_L)


def mean_distance(weights_NBHLM: jax.Array) -> jax.Array:
  """Mean over queries of the attention-weighted |query - key| distance in tokens, per head."""
  l, m = weights_NBHLM.shape[-2:]
  distance_LM = jnp.abs(jnp.arange(l)[:, None] - jnp.arange(m)[None, :]).astype(jnp.float32)
  return _mean_over_queries((weights_NBHLM * distance_LM[None, None, None]).sum(axis=-1), jnp.ones((l,), bool))


def previous_token_score(weights_NBHLM: jax.Array) -> jax.Array:
  """Mean weight each query puts on the token just before it (queries 1..L-1), per head."""
  l = weights_NBHLM.shape[-2]
  previous_NBHL = jnp.diagonal(weights_NBHLM, offset=-1, axis1=-2, axis2=-1)  # query i + 1, key i
  return _mean_over_queries(previous_NBHL, jnp.ones((l - 1,), bool))


def induction_score(weights_NBHLM: jax.Array, period: int) -> jax.Array:
  """Mean weight on the token after the earlier occurrence of the current token, per head.

  For sequences that repeat a random block of `period` tokens (Olsson et al. 2022): the query at
  l >= period holds the token seen at l - period, which was followed by the token at l - period + 1.

  Args:
    weights_NBHLM: attention of sequences whose second half repeats the first.
    period: the length of the repeated block.
  """
  l = weights_NBHLM.shape[-2]
  # Query q >= period, key q - period + 1: the diagonal at offset -(period - 1), starting at query period - 1.
  diagonal_NBHL = jnp.diagonal(weights_NBHLM, offset=-(period - 1), axis1=-2, axis2=-1)[..., 1:]
  return _mean_over_queries(diagonal_NBHL, jnp.ones((l - period,), bool))


def repeated_tokens(vocab_size: int, period: int, batch: int, seed: int = 0) -> np.ndarray:
  """tokens_BL: `batch` random blocks of `period` tokens, each followed by itself (L = 2 period).

  Tokens are drawn from [1, V) (0 pads the built-in tasks), distinct within a block where V allows,
  so that each query's earlier occurrence is unique.
  """
  rng = np.random.default_rng(seed)
  tokens_BL = np.empty((batch, 2 * period), np.int32)
  if period <= vocab_size - 1:
    tokens_BL[:, :period] = 1 + np.argsort(rng.random((batch, vocab_size - 1)), axis=1)[:, :period]
  else:
    tokens_BL[:, :period] = rng.integers(1, vocab_size, (batch, period))
  tokens_BL[:, period:] = tokens_BL[:, :period]
  return tokens_BL


def induction_period(model: TransformerLM) -> int:
  """The repeated block length used for a model: half its longest sequence, at most 32 tokens."""
  return max(2, min(model.config.max_len // 2, 32))


def head_scores(model: TransformerLM, params: Any, tokens_BL: jax.Array, batch: int = INDUCTION_BATCH,
                seed: int = 0) -> dict[str, np.ndarray]:
  """Every score of every head: entropy, distance and previous-token on tokens_BL, induction on repeats.

  Args:
    model: the trained model.
    params: its parameters.
    tokens_BL: the sequences for the entropy, distance and previous-token scores.
    batch: repeated random sequences for the induction score.
    seed: their seed.

  Returns:
    {score name: scores_NH} for every name in SCORE_TITLES.
  """
  weights_NBHLM = forward_pass.forward(model, params, jnp.asarray(tokens_BL))["weights_NBHLM"]
  period = induction_period(model)
  repeats_BL = repeated_tokens(model.config.vocab_size, period, batch, seed)
  repeat_weights_NBHLM = forward_pass.forward(model, params, jnp.asarray(repeats_BL))["weights_NBHLM"]
  return scores_of(weights_NBHLM, repeat_weights_NBHLM, period)


def scores_of(weights_NBHLM: jax.Array, repeat_weights_NBHLM: jax.Array, period: int) -> dict[str, np.ndarray]:
  """{score name: scores_NH} from the attention of some sequences and of repeated blocks of `period` tokens."""
  scores = {
      "entropy": entropy(weights_NBHLM),
      "distance": mean_distance(weights_NBHLM),
      "previous_token": previous_token_score(weights_NBHLM),
      "induction": induction_score(repeat_weights_NBHLM, period),
  }
  return {name: np.asarray(value) for name, value in scores.items()}


def random_tokens(vocab_size: int, length: int, batch: int, seed: int = 0) -> np.ndarray:
  """tokens_BL drawn uniformly from [1, V): the default sequences of `heads` when no prompt is given."""
  return np.random.default_rng(seed).integers(1, vocab_size, (batch, length)).astype(np.int32)

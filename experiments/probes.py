"""What inspection measures: attention patterns, per-head scores and a token's residual stream in context.

Pure functions of a model, its parameters and token ids, shared by `experiments/inspect.py` and by the
runner's probes during training. Every forward pass runs the `reference` attention (the only one that
materializes, and sows, the pattern) with dropout off, whatever implementation training used: the
parameters are the same, so the pattern is the one the trained model computes.

Letter key as in transformer/attention.py: B batch, L queries, M keys, H heads, N layers, D width;
C contexts (prompts) in the context comparison.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from transformer import TransformerLM
from transformer.masks import MaskSpec

# The per-head scores, in the order of tables and plots, with what each measures.
SCORE_TITLES = {
    "entropy": "mean entropy (nats)",
    "distance": "mean attention distance (tokens)",
    "previous_token": "previous-token score",
    "induction": "induction score",
}


def inspection_model(model: TransformerLM) -> TransformerLM:
  """The same model with the reference attention and no dropout: same parameters, pattern sown."""
  config = dataclasses.replace(model.config, attention_impl="reference", dropout_rate=0.0,
                               attention_dropout_rate=0.0)
  return TransformerLM(config)


def _per_layer(intermediates: dict[str, Any], path: tuple[str, ...], num_layers: int, scanned: bool) -> jax.Array:
  """Stacks a value every block sows (at `path` inside the block) into one array, layer axis first."""

  def lookup(node):
    for key in path:
      node = node[key]
    return node[0]  # sow appends to a tuple; each block sows once

  if scanned:  # nn.scan already stacks what its body sows along a leading layer axis
    return lookup(intermediates["blocks"]["block"])
  return jnp.stack([lookup(intermediates[f"block_{i}"]) for i in range(num_layers)])


# Jitted with the model static (modules are frozen dataclasses: equal configs share one compiled program);
# eager application of a model dispatches hundreds of small ops and is many times slower.
@functools.partial(jax.jit, static_argnums=0)
def forward(model: TransformerLM, params: Any, tokens_BL: jax.Array) -> dict[str, jax.Array]:
  """One inspected forward pass of `tokens_BL` (positions 0..L-1, no segments).

  Args:
    model: the trained model (any attention implementation; the reference one is used here).
    params: its parameters.
    tokens_BL: token ids, L <= max_len.

  Returns:
    `weights_NBHLM` (attention of every layer, float32, 0 where masked), `residual_NBLD` (the residual
    stream after each block), `embedding_BLD` (the token embedding, before positions and blocks) and
    `logits_BLV`.
  """
  model = inspection_model(model)
  c = model.config
  logits_BLV, state = model.apply({"params": params}, tokens_BL, mutable=["intermediates"])
  intermediates = state["intermediates"]
  embedding_BLD = jnp.take(params["embed"]["embedding"], tokens_BL, axis=0)
  return {
      "weights_NBHLM": _per_layer(intermediates, ("attention", "attention_weights"), c.num_layers, c.scan_layers),
      "residual_NBLD": _per_layer(intermediates, ("residual",), c.num_layers, c.scan_layers),
      "embedding_BLD": embedding_BLD.astype(jnp.float32),
      "logits_BLV": logits_BLV,
  }


def allowed_matrix(model: TransformerLM, length: int) -> np.ndarray:
  """allowed_LM of the model's mask for one unpacked sequence: False where a key is masked."""
  positions_1L = jnp.arange(length)[None]
  return np.asarray(MaskSpec.from_config(model.config)(positions_1L, positions_1L)[0])


# ----------------------------------------------------------------------------------------------
# Per-head scores: each reduces weights_NBHLM to one number per layer and head, scores_NH.


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
  if period <= vocab_size - 1:
    block_BP = 1 + np.argsort(rng.random((batch, vocab_size - 1)), axis=1)[:, :period]
  else:
    block_BP = rng.integers(1, vocab_size, (batch, period))
  return np.concatenate([block_BP, block_BP], axis=1).astype(np.int32)


INDUCTION_BATCH = 16  # repeated random sequences behind each induction score (the CLI and the runner alike)


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
  weights_NBHLM = forward(model, params, jnp.asarray(tokens_BL))["weights_NBHLM"]
  period = induction_period(model)
  repeats_BL = repeated_tokens(model.config.vocab_size, period, batch, seed)
  repeat_weights_NBHLM = forward(model, params, jnp.asarray(repeats_BL))["weights_NBHLM"]
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


# ----------------------------------------------------------------------------------------------
# The same token in different contexts.


def find_token(ids_L: np.ndarray, word_ids: np.ndarray) -> int | None:
  """Position of the last token of the first occurrence of word_ids in ids_L, or None."""
  n = len(word_ids)
  for start in range(len(ids_L) - n + 1):
    if np.array_equal(ids_L[start:start + n], word_ids):
      return start + n - 1
  return None


def context_vectors(model: TransformerLM, params: Any, prompts_ids: list[np.ndarray],
                    positions: list[int]) -> np.ndarray:
  """vectors_CND: the residual stream at one position of each prompt, layer by layer.

  Row 0 of N + 1 is the token embedding (no position, no context); row n is the stream after block n.
  Each prompt runs alone, so prompts of different lengths need no padding.
  """
  rows = []
  for ids_L, position in zip(prompts_ids, positions):
    out = forward(model, params, jnp.asarray(ids_L, jnp.int32)[None])
    stream_ND = jnp.concatenate([out["embedding_BLD"][None, 0, position], out["residual_NBLD"][:, 0, position]])
    rows.append(np.asarray(stream_ND, np.float64))
  return np.stack(rows)


def cosine_similarities(vectors_CND: np.ndarray) -> np.ndarray:
  """similarity_NCC: cosine similarity between every two contexts, at every layer."""
  unit_CND = vectors_CND / np.maximum(np.linalg.norm(vectors_CND, axis=-1, keepdims=True), 1e-30)
  return np.einsum("CND,END->NCE", unit_CND, unit_CND)


def drift_from_embedding(vectors_CND: np.ndarray) -> np.ndarray:
  """similarity_NC: cosine between each context's vector at every layer and the token embedding (row 0)."""
  unit_CND = vectors_CND / np.maximum(np.linalg.norm(vectors_CND, axis=-1, keepdims=True), 1e-30)
  return np.einsum("CND,CD->NC", unit_CND, unit_CND[:, 0])


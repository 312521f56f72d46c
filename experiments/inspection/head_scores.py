"""Per-head scores: each reduces what a head does to one number per layer and head, scores_NH.

The scores, in SCORE_TITLES order:
- entropy and distance: of each head's attention over keys, on the given sequences.
- previous-token: the mean weight each query puts on the key just before it (the `previous_token_head` pattern of
  TransformerLens's head detector, transformer_lens/head_detector.py).
- induction: the detector's `induction_head` pattern, read by content (Olsson et al. 2022, "In-context Learning and
  Induction Heads"): on random blocks of tokens repeated to fill the sequence, the weight each query puts on the
  keys right after the earlier occurrences of its own token (the key at m is a target of the query at l when
  m <= l and token m - 1 equals token l), summed over those keys and averaged over the queries that have one,
  pooled over the sequences. Each sequence draws its block length from [L/4, L/2] (at least SHORTEST_BLOCK), so
  a head that looks a fixed distance back lands on targets only in the few sequences whose block length fits
  that distance. The detector divides by every query instead, first block included (and averages per
  sequence); here a perfect induction head scores 1.
- induction control: the same query-key pairs scored on the attention of control sequences: fresh random tokens
  (`induction_probe`) in which the token before each target key differs from the query's. A head that attends by
  content has no reason to put weight on those keys; one that attends by position puts the same weight there in
  both (its pattern does not read the tokens), so its score equals its control. Fresh tokens rather than a
  permutation of the repeats: the construction guarantees that no target survives, which a permutation does not.
  A head counts as an induction head (`induction_heads`) when its score beats its control by INDUCTION_MARGIN
  and by the factor INDUCTION_RATIO: the margin keeps out differences of a few hundredths that nearly uniform
  attention shows between 16 repeats and 16 controls, the ratio a head that puts much weight on those keys
  whatever the tokens and a little more on the repeats.
- copying: Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits": the real part of the sum of
  the eigenvalues of the head's OV circuit from tokens to logits, W_E W_OV W_U (V x V), over the sum of their
  absolute values: near 1 when a head that attends to a token raises the logits of that token (and of tokens
  like it), near -1 when it lowers them (a ratio: a circuit of tiny weights can score 1 too). W_OV =
  value_down value_up (D x R, then R x D) has rank R, and the nonzero eigenvalues of W_E (value_down value_up)
  W_U are those of the R x R matrix value_up W_U W_E value_down (AB and BA share them), so each head costs one
  R x R eigenvalue problem after one D x V x D product per model. A full value map (value_mode "full") is
  D x D.
  Folded in, as a pre-LN model applies them to the direct path embedding -> head -> logits: the centring of
  the head's LayerNorm and its scale (the token's embedding as the head reads it), the centring and scale of
  the final LayerNorm, and the centring of the logits over the vocabulary (softmax ignores a shift of every
  logit). Ignored: each LayerNorm's division by the token's standard deviation (a positive factor per token
  that depends on the whole residual stream), every bias (constants, not maps of the attended token),
  positions, and the paths through other layers. Post-LN models: the centrings only (the head's output passes
  several LayerNorms before the logits; none of their scales is folded in).

To add a score: its function here, an entry in SCORE_TITLES (the order of tables and plots) and in `scores_of`.
Letters as in the README's key: N layers, B batch, H heads, L queries, M keys, D width, R value width, V
vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.inspection import forward_pass
from transformer import ModelConfig, TransformerLM

# The per-head scores, in the order of tables and plots, with what each measures.
SCORE_TITLES = {
    "entropy": "mean entropy (nats)",
    "distance": "mean attention distance (tokens)",
    "previous_token": "previous-token score",
    "induction": "induction score",
    "induction_control": "induction score, control",
    "copying": "copying score (OV eigenvalues)",
}
INDUCTION_BATCH = 16  # repeated-block sequences (and as many controls) behind each induction score
INDUCTION_LENGTH = 64  # their length: max_len, at most this
SHORTEST_BLOCK = 3  # a block of 2 would make the previous token a target: previous-token heads would score
INDUCTION_MARGIN = 0.1  # an induction head's score exceeds its control by this much...
INDUCTION_RATIO = 2.0  # ...and by this factor


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


@dataclasses.dataclass(frozen=True)
class InductionProbe:
  """The sequences of the induction score and its control, and the query-key pairs both are scored on.

  Attributes:
    repeats_BL: random blocks of tokens, each repeated to fill the sequence.
    controls_BL: fresh random tokens in which the token before each target key differs from the query's token.
    targets_BLM: True where key m follows an earlier occurrence of the token at query l in repeats_BL.
  """

  repeats_BL: np.ndarray
  controls_BL: np.ndarray
  targets_BLM: np.ndarray

  @property
  def sequences_BL(self) -> np.ndarray:
    """The repeats, then the controls: what one forward pass reads (scores_of splits its weights again)."""
    return np.concatenate([self.repeats_BL, self.controls_BL])


def induction_targets(tokens_BL: np.ndarray) -> np.ndarray:
  """targets_BLM: key m <= l is a target of query l when token m - 1 equals token l (the detector's pattern)."""
  l = tokens_BL.shape[1]
  before_BM = np.concatenate([np.full_like(tokens_BL[:, :1], -1), tokens_BL[:, :-1]], axis=1)  # none before key 0
  causal_LM = np.tril(np.ones((l, l), bool))
  return (tokens_BL[:, :, None] == before_BM[:, None, :]) & causal_LM[None]


def induction_layout(max_len: int) -> tuple[int, int, int]:
  """(L, shortest, longest block) of the induction probe of a model this long: L = max_len, at most INDUCTION_LENGTH.

  Raises:
    ValueError: max_len is below two blocks of SHORTEST_BLOCK tokens.
  """
  length = min(max_len, INDUCTION_LENGTH)
  if length < 2 * SHORTEST_BLOCK:
    raise ValueError(f"model.max_len={max_len}: the induction score needs sequences of {2 * SHORTEST_BLOCK} tokens "
                     f"(a block of {SHORTEST_BLOCK} and its repeat)")
  return length, max(SHORTEST_BLOCK, length // 4), length // 2


def induction_probe(vocab_size: int, max_len: int, batch: int = INDUCTION_BATCH, seed: int = 0) -> InductionProbe:
  """The repeated blocks, their controls and their targets for a model of this vocabulary and length.

  Tokens come from [1, V) (0 pads the built-in tasks); a block's tokens are distinct where V allows, so that each
  query's earlier occurrences are those of the repeat. A control token at l is drawn again while it equals the
  control token at any m - 1 that the repeats make a target of l (where V leaves another choice).

  Args:
    vocab_size: V of the model.
    max_len: its longest sequence (induction_layout).
    batch: sequences of each kind.
    seed: their seed.

  Raises:
    ValueError: max_len is below two blocks of SHORTEST_BLOCK tokens.
  """
  length, shortest, longest = induction_layout(max_len)
  rng = np.random.default_rng(seed)
  blocks_B = rng.integers(shortest, longest + 1, batch)
  repeats_BL = np.empty((batch, length), np.int32)
  for b, block in enumerate(blocks_B):
    distinct = block <= vocab_size - 1
    tokens = 1 + rng.choice(vocab_size - 1, block, replace=not distinct)
    repeats_BL[b] = tokens[np.arange(length) % block]
  targets_BLM = induction_targets(repeats_BL)
  controls_BL = np.empty_like(repeats_BL)
  for b in range(batch):
    for l in range(length):
      taken = set(controls_BL[b, np.flatnonzero(targets_BLM[b, l]) - 1].tolist())
      token = int(rng.integers(1, vocab_size))
      while token in taken and len(taken) < vocab_size - 1:
        token = int(rng.integers(1, vocab_size))
      controls_BL[b, l] = token
  return InductionProbe(repeats_BL, controls_BL, targets_BLM)


def induction_score(weights_NBHLM: jax.Array, targets_BLM: jax.Array) -> jax.Array:
  """Weight on the target keys, summed per query and averaged over the queries that have a target: scores_NH.

  Args:
    weights_NBHLM: attention of the sequences the targets belong to (the score), or of their controls.
    targets_BLM: InductionProbe.targets_BLM.
  """
  targets_1B1LM = jnp.asarray(targets_BLM, jnp.float32)[None, :, None]
  on_targets_NBHL = (weights_NBHLM * targets_1B1LM).sum(axis=-1)
  counted_1B1L = targets_1B1LM.max(axis=-1)
  return (on_targets_NBHL * counted_1B1L).sum(axis=(1, 3)) / jnp.maximum(counted_1B1L.sum(), 1.0)


def induction_heads(scores: dict[str, np.ndarray]) -> np.ndarray:
  """flagged_NH: the heads whose induction score clearly exceeds its control (INDUCTION_MARGIN and _RATIO)."""
  score_NH, control_NH = scores["induction"], scores["induction_control"]
  return (score_NH >= control_NH + INDUCTION_MARGIN) & (score_NH >= INDUCTION_RATIO * control_NH)


def _per_layer(params: Any, config: ModelConfig, path: tuple[str, ...]) -> jax.Array:
  """The parameter at `path` inside every block, stacked with the layer axis first (scanned or not)."""

  def lookup(node):
    for key in path:
      node = node[key]
    return node

  if config.scan_layers:  # nn.scan stacks each parameter along a leading layer axis
    return lookup(params["blocks"]["block"])
  return jnp.stack([lookup(params[f"block_{n}"]) for n in range(config.num_layers)])


def _centred(x: jax.Array, axis: int) -> jax.Array:
  return x - x.mean(axis=axis, keepdims=True)


# Jitted with the config static: one D x V x D product and the per-head matrices, on the parameters' devices.
@functools.partial(jax.jit, static_argnums=0)
def ov_circuits(config: ModelConfig, params: Any) -> jax.Array:
  """circuits_NHRR: per head, the R x R matrix (D x D when full) with the nonzero eigenvalues of its OV circuit.

  value_up W_U W_E value_down, with the LayerNorm scales and centrings the module docstring lists folded in.

  Args:
    config: the model's config.
    params: its parameters.
  """
  highest = jax.lax.Precision.HIGHEST  # float32 products even where the default would round to bfloat16 or TF32
  n, d = config.num_layers, config.d_model
  embed_VD = params["embed"]["embedding"]
  unembed_DV = embed_VD.T if config.tie_embeddings else params["unembed"]
  if config.post_ln:
    final_scale_D, attention_scale_ND = jnp.ones((d,)), jnp.ones((n, d))
  else:
    final_scale_D = params["final_norm"]["scale"]
    attention_scale_ND = _per_layer(params, config, ("attention_norm", "scale"))
  # The embedding centred over D as LayerNorm centres it, and over V: the logits' shift softmax ignores.
  embed_VD = _centred(_centred(embed_VD, 1), 0)
  read_DV = _centred(final_scale_D[:, None] * unembed_DV, 0)  # the final LayerNorm's centring and scale, then W_U
  # What a head's output x_D adds to the logits of the token whose embedding the head read (each layer's scale).
  through_NDD = jnp.matmul(read_DV, embed_VD, precision=highest)[None] * attention_scale_ND[:, None, :]
  queries_per_kv = config.num_heads // config.kv_heads
  if config.value_mode == "full":
    value_NHDD = jnp.repeat(_per_layer(params, config, ("attention", "value")), queries_per_kv, axis=2)
    # eig(W_OV T) = eig(T W_OV): the input-side product first, D x D.
    return jnp.matmul(through_NDD[:, None], jnp.moveaxis(value_NHDD, 2, 1), precision=highest)
  down_NDHR = jnp.repeat(_per_layer(params, config, ("attention", "value_down")), queries_per_kv, axis=2)
  up_NHRD = _per_layer(params, config, ("attention", "value_up"))
  return jnp.matmul(jnp.matmul(up_NHRD, through_NDD[:, None], precision=highest), jnp.moveaxis(down_NDHR, 2, 1),
                    precision=highest)


def copying_score(circuits_NHRR: jax.Array) -> np.ndarray:
  """scores_NH: the real part of the sum of each circuit's eigenvalues over the sum of their absolute values.

  In float64 numpy on the host: the eigenvalues of a nonsymmetric matrix are a CPU-only routine in JAX. A circuit
  of zeros scores 0.
  """
  eigenvalues_NHR = np.linalg.eigvals(np.asarray(circuits_NHRR, np.float64))
  magnitude_NH = np.abs(eigenvalues_NHR).sum(axis=-1)
  return np.where(magnitude_NH > 0, eigenvalues_NHR.real.sum(axis=-1) / np.where(magnitude_NH > 0, magnitude_NH, 1.0),
                  0.0)


def head_scores(model: TransformerLM, params: Any, tokens_BL: jax.Array, batch: int = INDUCTION_BATCH,
                seed: int = 0) -> dict[str, np.ndarray]:
  """Every score of every head: entropy, distance and previous-token on tokens_BL, induction on repeated blocks.

  Args:
    model: the trained model.
    params: its parameters.
    tokens_BL: the sequences for the entropy, distance and previous-token scores.
    batch: repeated-block sequences (and as many controls) for the induction score.
    seed: their seed.

  Returns:
    {score name: scores_NH} for every name in SCORE_TITLES.
  """
  weights_NBHLM = forward_pass.forward(model, params, jnp.asarray(tokens_BL))["weights_NBHLM"]
  probe = induction_probe(model.config.vocab_size, model.config.max_len, batch, seed)
  probe_weights_NBHLM = forward_pass.forward(model, params, jnp.asarray(probe.sequences_BL))["weights_NBHLM"]
  return scores_of(weights_NBHLM, probe_weights_NBHLM, probe, ov_circuits(model.config, params))


def scores_of(weights_NBHLM: jax.Array, probe_weights_NBHLM: jax.Array, probe: InductionProbe,
              circuits_NHRR: jax.Array) -> dict[str, np.ndarray]:
  """{score name: scores_NH}, in SCORE_TITLES order.

  Args:
    weights_NBHLM: attention of the sequences of the entropy, distance and previous-token scores.
    probe_weights_NBHLM: attention of probe.sequences_BL (the repeats, then the controls).
    probe: the induction probe.
    circuits_NHRR: ov_circuits of the model.
  """
  scores = {**_attention_scores(weights_NBHLM, probe_weights_NBHLM, probe.targets_BLM),
            "copying": copying_score(circuits_NHRR)}
  return {name: np.asarray(scores[name]) for name in SCORE_TITLES}  # a jitted dict comes back in sorted key order


# One compiled program per shape: run op by op, these scores would compile dozens of small ones (seconds on a CPU).
@jax.jit
def _attention_scores(weights_NBHLM: jax.Array, probe_weights_NBHLM: jax.Array,
                      targets_BLM: jax.Array) -> dict[str, jax.Array]:
  """The scores read from attention weights (scores_of's arguments)."""
  batch = targets_BLM.shape[0]
  return {
      "entropy": entropy(weights_NBHLM),
      "distance": mean_distance(weights_NBHLM),
      "previous_token": previous_token_score(weights_NBHLM),
      "induction": induction_score(probe_weights_NBHLM[:, :batch], targets_BLM),
      "induction_control": induction_score(probe_weights_NBHLM[:, batch:], targets_BLM),
  }


def random_tokens(vocab_size: int, length: int, batch: int, seed: int = 0) -> np.ndarray:
  """tokens_BL drawn uniformly from [1, V): the default sequences of `heads` when no prompt is given."""
  return np.random.default_rng(seed).integers(1, vocab_size, (batch, length)).astype(np.int32)

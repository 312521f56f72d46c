"""Tests of the per-head scores on hand-built patterns and weights: each score reads what it is named after.

No training: an induction circuit (a previous-token head feeding a head that matches tokens) and a fixed-offset head
are written into a model's weights; OV circuits are checked against float64 numpy eigenvalues of the full V x V map.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.inspection import head_scores
from transformer import ModelConfig, TransformerLM

pytestmark = pytest.mark.usefixtures("fast_compilation")  # tiny programs: compiling them would dominate


def test_scores_of_known_patterns():
  """Hand-made patterns: entropy, distance and previous-token each read the pattern they are named after."""
  l = 8
  previous_LM = np.eye(l, k=-1)
  previous_LM[0, 0] = 1.0
  uniform_LM = np.tril(np.ones((l, l))) / np.arange(1, l + 1)[:, None]
  weights_NBHLM = np.stack([previous_LM, uniform_LM])[None, None]  # one layer, one sequence, two heads
  np.testing.assert_allclose(head_scores.previous_token_score(weights_NBHLM),
                             [[1.0, np.mean(1 / np.arange(2, l + 1))]], rtol=1e-6)
  np.testing.assert_allclose(head_scores.entropy(weights_NBHLM), [[0.0, np.mean(np.log(np.arange(1, l + 1)))]],
                             rtol=1e-6)
  np.testing.assert_allclose(head_scores.mean_distance(weights_NBHLM)[0, 0], (l - 1) / l, rtol=1e-6)


def test_induction_targets_are_the_detectors_pattern():
  """Key m is a target of query l when m <= l and token m - 1 is token l, repeated tokens within a block included."""
  tokens_BL = np.array([[5, 6, 5, 5, 7, 6], [1, 2, 3, 1, 2, 3]])
  expected_BLM = np.zeros((2, 6, 6), bool)
  for b, l, m in np.ndindex(2, 6, 6):
    expected_BLM[b, l, m] = 1 <= m <= l and tokens_BL[b, m - 1] == tokens_BL[b, l]
  np.testing.assert_array_equal(head_scores.induction_targets(tokens_BL), expected_BLM)
  assert expected_BLM[0, 3, 3] and expected_BLM[0, 3, 1] and expected_BLM[1, 5, 3]  # the pattern is not empty


@pytest.mark.parametrize("vocab_size, max_len", [(12, 16), (2000, 200), (6, 24)])
def test_induction_probe_varies_the_block_and_its_control_breaks_every_target(vocab_size, max_len):
  """And with 5 tokens for blocks of 6 to 12 (6, 24): repeats within blocks, controls break what they can."""
  probe = head_scores.induction_probe(vocab_size, max_len)
  length, shortest, longest = head_scores.induction_layout(max_len)
  assert probe.repeats_BL.shape == probe.controls_BL.shape == (head_scores.INDUCTION_BATCH, length)
  assert probe.repeats_BL.min() >= 1 and probe.controls_BL.min() >= 1 and probe.controls_BL.max() < vocab_size
  periods = [next(p for p in range(1, length) if (row[p:] == row[:-p]).all()) for row in probe.repeats_BL]
  assert min(periods) >= shortest and max(periods) <= longest and len(set(periods)) >= 3  # no one offset fits
  assert probe.targets_BLM.any(axis=-1).mean() > 0.4  # most queries lie in a repeat
  # No control token at a target's m - 1 equals the query's: an attention by content finds nothing there.
  b, l, m = np.nonzero(probe.targets_BLM)
  kept_T = probe.controls_BL[b, m - 1] == probe.controls_BL[b, l]
  if vocab_size > longest:
    assert not kept_T.any()
  else:  # a target survives only where the query's earlier targets took every token
    assert 0 < kept_T.mean() < 0.5
    for query in set(zip(b[kept_T], l[kept_T])):
      assert len(set(probe.controls_BL[query[0], np.flatnonzero(probe.targets_BLM[query]) - 1])) == vocab_size - 1


def _weights(config: ModelConfig):
  """Zeros in the parameter tree of `config` (numpy, to be written by hand)."""
  shapes = jax.eval_shape(lambda: TransformerLM(config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
  return jax.tree.map(lambda s: np.zeros(s.shape, np.float32), nn.unbox(shapes)["params"])


SHARP = 6.0  # query and key gains: the softmax of a match is ~1


def induction_circuit(offset: int) -> tuple[TransformerLM, dict]:
  """Layer 0, head 0: attends to the previous token and writes its identity into a third block of the stream.
  Layer 1, head 0: queries with its token, keys with their previous token: attends to the token after each earlier
  occurrence of its own (a query bias and a key on position 0 keep it off key 0, which has no previous token).
  Layer 1, head 1: attends `offset` tokens back, whatever the tokens. The stream: token one-hot [0, V), position
  one-hot [V, V + T), previous token [V + T, 2V + T). MLPs, biases and other heads are 0.
  """
  v, t = 12, 16
  config = ModelConfig(vocab_size=v, max_len=t, num_layers=2, d_model=2 * v + t, num_heads=2, head_dim=t,
                       value_rank=v)
  tokens, positions, previous = np.arange(v), v + np.arange(t), v + t + np.arange(v)
  p = _weights(config)
  p["embed"]["embedding"][tokens, tokens] = 1.0
  p["position_embedding"][np.arange(t), positions] = 1.0
  for norm in ("attention_norm", "mlp_norm"):
    for block in ("block_0", "block_1"):
      p[block][norm]["scale"][:] = 1.0
  p["final_norm"]["scale"][:] = 1.0
  first, second = p["block_0"]["attention"], p["block_1"]["attention"]
  first["query"][positions, 0, np.arange(t)] = SHARP  # query at i: position i
  first["key"][positions[:-1], 0, np.arange(1, t)] = SHARP  # key at j: position j + 1
  first["value_down"][tokens, 0, tokens] = 1.0
  first["value_up"][0, tokens, previous] = 1.0
  second["query"][tokens, 0, tokens] = SHARP
  second["key"][previous, 0, tokens] = SHARP
  second["query_bias"][0, t - 1] = 1.0
  second["key"][positions[0], 0, t - 1] = -100.0
  second["query"][positions[offset:], 1, np.arange(t - offset)] = SHARP  # query at i: position i - offset
  second["key"][positions[:t - offset], 1, np.arange(t - offset)] = SHARP
  return TransformerLM(config), p


def test_a_hand_built_induction_head_scores_high_and_a_fixed_offset_head_scores_its_control():
  offset = 7  # lands on a target in blocks of 4 and 8 (the probe draws 4 to 8 for 16 tokens)
  model, params = induction_circuit(offset)
  probe = head_scores.induction_probe(model.config.vocab_size, model.config.max_len)
  # The probe's own sequences for the other scores: one compiled forward pass serves both calls.
  scores = head_scores.head_scores(model, params, probe.sequences_BL)
  assert list(scores) == list(head_scores.SCORE_TITLES)  # the order of tables and plots
  print({name: scores[name].round(3).tolist() for name in ("previous_token", "induction", "induction_control")})
  assert scores["previous_token"][0, 0] > 0.99
  # On the controls it finds its token's earlier occurrences elsewhere, or none (then it spreads over every key).
  assert scores["induction"][1, 0] > 0.95 and scores["induction_control"][1, 0] < 0.15
  # Attention by position is the same on the repeats and on their controls: the score equals its control.
  assert 0.05 < scores["induction"][1, 1] == pytest.approx(scores["induction_control"][1, 1], abs=1e-4)
  flagged_NH = head_scores.induction_heads(scores)
  np.testing.assert_array_equal(flagged_NH, [[False, False], [True, False]])


def test_induction_heads_need_both_the_margin_and_the_ratio():
  scores = {"induction": np.array([[0.5, 0.5, 0.15, 0.05]]), "induction_control": np.array([[0.1, 0.3, 0.0, 0.0]])}
  np.testing.assert_array_equal(head_scores.induction_heads(scores), [[True, False, True, False]])


def _random_ov_params(config: ModelConfig, rng: np.random.Generator) -> dict:
  """What ov_circuits reads, in the model's tree (unrolled or scanned), with random values and LayerNorm scales."""
  d, h, g, r, v, n = (config.d_model, config.num_heads, config.kv_heads, config.value_dim, config.vocab_size,
                      config.num_layers)
  p = {"embed": {"embedding": rng.normal(size=(v, d))}, "final_norm": {"scale": rng.uniform(0.5, 1.5, d)}}
  if not config.tie_embeddings:
    p["unembed"] = rng.normal(size=(d, v))
  values = {"value": (d, g, d)} if config.value_mode == "full" else {"value_down": (d, g, r), "value_up": (h, r, d)}
  blocks = [{"attention_norm": {"scale": rng.uniform(0.5, 1.5, d)},
             "attention": {name: rng.normal(size=shape) for name, shape in values.items()}} for _ in range(n)]
  if config.scan_layers:
    p["blocks"] = {"block": jax.tree.map(lambda *layers: np.stack(layers), *blocks)}
  else:
    p.update({f"block_{i}": block for i, block in enumerate(blocks)})
  return jax.tree.map(lambda x: np.asarray(x, np.float32), p)


def _copying_reference(config: ModelConfig, params: dict) -> np.ndarray:
  """scores_NH from the eigenvalues of the full V x V circuit in float64, written out as the module docstring says."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  d, h, g, v = config.d_model, config.num_heads, config.kv_heads, config.vocab_size
  centre_DD, centre_VV = np.eye(d) - 1.0 / d, np.eye(v) - 1.0 / v
  embed_VD = p["embed"]["embedding"]
  unembed_DV = embed_VD.T if config.tie_embeddings else p["unembed"]
  scores_NH = np.zeros((config.num_layers, h))
  for n in range(config.num_layers):
    block = jax.tree.map(lambda x, n=n: x[n], p["blocks"]["block"]) if config.scan_layers else p[f"block_{n}"]
    attention_scale = np.ones(d) if config.post_ln else block["attention_norm"]["scale"]
    final_scale = np.ones(d) if config.post_ln else p["final_norm"]["scale"]
    head_reads_VD = embed_VD @ centre_DD @ np.diag(attention_scale)
    logits_of_DV = centre_DD @ np.diag(final_scale) @ unembed_DV @ centre_VV
    for head in range(h):
      kv = head // (h // g)
      if config.value_mode == "full":
        ov_DD = block["attention"]["value"][:, kv, :]
      else:
        ov_DD = block["attention"]["value_down"][:, kv, :] @ block["attention"]["value_up"][head]
      eigenvalues = np.linalg.eigvals(head_reads_VD @ ov_DD @ logits_of_DV)
      scores_NH[n, head] = eigenvalues.sum().real / np.abs(eigenvalues).sum()
  return scores_NH


OV_VARIANTS = [
    dict(),
    dict(num_heads=4, num_kv_heads=2, value_rank=3, tie_embeddings=False, scan_layers=True),
    dict(value_mode="full", num_kv_heads=1),
    dict(post_ln=True, tie_embeddings=False),
]


@pytest.mark.parametrize("variant", OV_VARIANTS, ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_copying_score_is_the_full_circuits_eigenvalue_ratio(variant):
  config = ModelConfig(**{**dict(vocab_size=20, max_len=8, num_layers=2, d_model=8, num_heads=2), **variant})
  params = _random_ov_params(config, np.random.default_rng(0))
  got_NH = head_scores.copying_score(head_scores.ov_circuits(config, params))
  expected_NH = _copying_reference(config, params)
  assert np.ptp(expected_NH) > 0.1  # random weights: scores spread between -1 and 1
  np.testing.assert_allclose(got_NH, expected_NH, atol=1e-4)


@pytest.mark.parametrize("value_mode", ["factored", "full"])
def test_copying_score_is_one_for_an_identity_circuit_and_minus_one_for_its_negation(value_mode):
  """value_up = value_down transposed (an identity on R directions) or value = I: W_E W_OV W_E^T is PSD."""
  config = ModelConfig(vocab_size=20, max_len=8, num_layers=1, d_model=8, num_heads=2, value_mode=value_mode,
                       value_rank=None if value_mode == "full" else 3)
  params = _random_ov_params(config, np.random.default_rng(1))
  params["final_norm"]["scale"][:] = params["block_0"]["attention_norm"]["scale"][:] = 1.0
  attention = params["block_0"]["attention"]
  for sign in (1.0, -1.0):
    if value_mode == "full":
      attention["value"][:] = sign * np.eye(8)[:, None, :]
    else:
      attention["value_up"][:] = sign * np.moveaxis(attention["value_down"], 0, -1)
    got_NH = head_scores.copying_score(head_scores.ov_circuits(config, params))
    np.testing.assert_allclose(got_NH, sign, atol=1e-5)
    np.testing.assert_allclose(_copying_reference(config, params), sign, atol=1e-9)

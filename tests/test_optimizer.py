"""Tests of experiments/optimizer.py against the formulas: the schedules, the weight-decay exemptions, clipping."""

from __future__ import annotations

import math

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from experiments import optimizer
from transformer import ModelConfig, TransformerLM

PEAK, END, WARMUP, DECAY = 1e-2, 1e-3, 4, 20


def _opt(**changes):
  o = base.get_config().optimizer
  o.learning_rate, o.end_learning_rate, o.warmup_steps, o.decay_steps = PEAK, END, WARMUP, DECAY
  for key, value in changes.items():
    o[key] = value
  return o


def _expected_rate(schedule: str, step: int, warmup: int = WARMUP) -> float:
  """The README's schedule written out: linear warmup from 0, then the decay to END at step DECAY, then END."""
  if step < warmup:
    return PEAK * step / warmup
  done = min(step - warmup, DECAY - warmup) / (DECAY - warmup)
  if schedule == "cosine":
    return END + (PEAK - END) * 0.5 * (1 + math.cos(math.pi * done))
  if schedule == "linear":
    return PEAK + (END - PEAK) * done
  return PEAK


STEPS = (0, 1, 3, 4, 5, 9, 12, 19, 20, 30)


@pytest.mark.parametrize("schedule", optimizer.SCHEDULES)
@pytest.mark.parametrize("warmup", [WARMUP, 0])
def test_each_schedule_follows_its_formula(schedule, warmup):
  rate = optimizer.learning_rate_schedule(_opt(schedule=schedule, warmup_steps=warmup), total_steps=1000)
  got = [float(rate(step)) for step in STEPS]
  np.testing.assert_allclose(got, [_expected_rate(schedule, s, warmup) for s in STEPS], rtol=1e-5, atol=1e-9)


def test_decay_steps_zero_decays_over_the_whole_run():
  rate = optimizer.learning_rate_schedule(_opt(schedule="linear", decay_steps=0), total_steps=DECAY)
  assert float(rate(DECAY)) == pytest.approx(END) and float(rate(DECAY // 2)) > END


def _params(**changes):
  config = ModelConfig(vocab_size=11, max_len=8, num_layers=2, d_model=8, num_heads=2, tie_embeddings=False,
                       **changes)
  shapes = jax.eval_shape(lambda: TransformerLM(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  return flax.linen.unbox(shapes["params"])


def _named(tree) -> dict[str, object]:
  return {"/".join(str(k.key) for k in path): x for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


DECAYED = ("attention/query", "attention/key", "attention/value_down", "attention/value_up", "mlp/up", "mlp/down")


@pytest.mark.parametrize("scan_layers", [False, True])
def test_decay_mask_exempts_norms_biases_and_embeddings(scan_layers):
  mask = _named(optimizer.decay_mask(_params(scan_layers=scan_layers), "norms,biases,embeddings"))
  decayed = sorted(name for name, on in mask.items() if on)
  blocks = ["blocks/block"] if scan_layers else ["block_0", "block_1"]
  assert decayed == sorted(f"{b}/{w}" for b in blocks for w in DECAYED)
  assert {"embed/embedding", "position_embedding", "unembed", "final_norm/scale"} <= set(mask)


def test_each_exempt_kind_is_its_own_switch():
  params = _params()
  everything = _named(optimizer.decay_mask(params, ""))
  assert all(everything.values()) and len(everything) == len(_named(params))
  only_biases = _named(optimizer.decay_mask(params, "biases"))
  # A norm's bias is of the norm's kind: "biases" are the attention's and the MLP's.
  assert sorted(n for n, on in only_biases.items() if not on) == sorted(n for n in only_biases if n.endswith("_bias"))
  only_norms = _named(optimizer.decay_mask(params, "norms"))
  assert sorted(n for n, on in only_norms.items() if not on) == sorted(n for n in only_norms if "norm/" in n)


def _random(tree, scale: float, seed: int):
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [jnp.asarray(rng.normal(size=x.shape) * scale, jnp.float32) for x in leaves])


def test_weight_decay_shrinks_only_the_masked_parameters():
  """With zero gradients AdamW's step is -lr * weight_decay * p exactly where the mask decays, 0 elsewhere."""
  params = _random(_params(), 1.0, 0)
  tx = optimizer.make_optimizer(_opt(schedule="constant", warmup_steps=0, weight_decay=0.5), 10, params)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  mask = _named(optimizer.decay_mask(params, "norms,biases,embeddings"))
  for name, update in _named(updates).items():
    expected = -PEAK * 0.5 * np.asarray(_named(params)[name]) if mask[name] else 0.0
    np.testing.assert_allclose(np.asarray(update), expected, rtol=1e-6, atol=0, err_msg=name)


@pytest.mark.parametrize("scale", [10.0, 0.01])
def test_gradients_are_clipped_to_the_global_norm(scale):
  """Adam's first step is g / (|g| + eps): with a large eps it is nearly linear in g, so the clip shows."""
  params = _random(_params(), 1.0, 0)
  grads = _random(params, scale, 1)
  clip, eps = 1.0, 1.0
  o = _opt(schedule="constant", warmup_steps=0, weight_decay=0.0, grad_clip=clip, eps=eps)
  tx = optimizer.make_optimizer(o, 10, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  norm = math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in jax.tree.leaves(grads)))
  factor = min(1.0, clip / norm)
  assert (factor < 1.0) == (scale == 10.0)  # one case clips, the other does not
  for name, update in _named(updates).items():
    g = np.asarray(_named(grads)[name], np.float64) * factor
    # Step 1 after bias correction: m_hat = g, v_hat = g^2.
    np.testing.assert_allclose(np.asarray(update), -PEAK * g / (np.abs(g) + eps), rtol=1e-4, atol=1e-12,
                               err_msg=name)


def test_grad_clip_zero_leaves_the_gradients_whole():
  params = _random(_params(), 1.0, 0)
  grads = _random(params, 10.0, 1)
  o = _opt(schedule="constant", warmup_steps=0, weight_decay=0.0, grad_clip=0.0, eps=1.0)
  tx = optimizer.make_optimizer(o, 10, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  for name, update in _named(updates).items():
    g = np.asarray(_named(grads)[name], np.float64)
    np.testing.assert_allclose(np.asarray(update), -PEAK * g / (np.abs(g) + 1.0), rtol=1e-4, err_msg=name)


def test_the_mask_follows_the_parameter_names_not_their_shapes():
  # A bias-free model has no biases to exempt; its weights still decay and its norms' scales do not.
  mask = _named(optimizer.decay_mask(_params(use_bias=False), "norms,biases,embeddings"))
  assert not any(name.endswith("bias") for name in mask)
  assert sorted(n for n, on in mask.items() if on) == sorted(f"{b}/{w}" for b in ("block_0", "block_1")
                                                             for w in DECAYED)

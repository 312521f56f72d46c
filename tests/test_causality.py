"""Tests of causality in transformer/attention.py and transformer/model.py: gradients are exactly zero where the
mask forbids, and not zero where it allows, through one attention layer and through a two-layer model; the
attention weights are exactly zero where masked."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers.attention_module import MASKS, apply_attention, contiguous_positions, make_config, random_params
from tests.helpers.float64_reference import allowed_matrix, reference_allowed
from tests.helpers.random_params import random_params as model_params
from transformer.model import TransformerLM

pytestmark = pytest.mark.usefixtures("fast_compilation")


@pytest.mark.parametrize(
    "mask, impl",
    [(mask, impl) for mask in MASKS for impl in ("reference", "chunked")]
    + [("sliding_window", "auto"), ("prefix", "auto")],  # local_window_size flag; explicit mask
)
def test_attention_gradients_follow_the_mask(mask, impl):
  # d update[t] / d x[s] is exactly 0 where t may not attend to s, and not 0 where it may.
  # value_rank = head_dim, so that "auto" runs jax.nn.dot_product_attention rather than its fallback.
  c = make_config(mask, "factored", heads=2, kv_heads=1, window=2, prefix_length=3, attention_impl=impl,
                  positions="rope", value_rank=4)
  p = random_params(c, seed=11)
  length = 6
  x = jnp.asarray(np.random.RandomState(12).randn(1, length, c.d_model), jnp.float32)
  positions = contiguous_positions(1, length)
  jacobian_fn = jax.jacrev(lambda x: apply_attention(c, p, x, positions)[0])
  if impl != "reference":  # the kernels' scans are traced anew on every eager call: compile them once
    jacobian_fn = jax.jit(jacobian_fn)
  jacobian = jacobian_fn(x)[0, :, :, 0]  # [L,D,L,D]
  dependence = np.abs(np.asarray(jacobian)).sum(axis=(1, 3))
  allowed = allowed_matrix(c, length)
  assert np.all(dependence[~allowed] == 0.0), dependence
  assert np.all(dependence[allowed] > 1e-6), dependence
  if mask == "prefix":  # really bidirectional: token 0 depends on token 2
    assert dependence[0, 2] > 1e-6


@pytest.mark.parametrize("mask", MASKS)
def test_model_loss_gradients_are_causal(mask):
  """Through 2 layers: the loss at position t has exactly zero gradient with respect to inputs after t."""
  length, window, prefix = 7, 2, 3
  c = make_config(mask, "factored", heads=2, window=window, prefix_length=prefix, num_layers=2, max_len=length,
                  positions="learned")
  params = model_params(c, seed=13)
  tokens = jnp.asarray(np.random.RandomState(14).randint(0, c.vocab_size, (1, length)))
  targets = jnp.asarray(np.random.RandomState(15).randint(0, c.vocab_size, (length,)))

  def losses_L(delta_LD):
    # The differentiable input: a perturbation added to the embeddings, injected by intercepting nn.Embed.
    def add_delta(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, nn.Embed) and context.method_name == "__call__":
        out = out + delta_LD[None]
      return out

    with nn.intercept_methods(add_delta):
      logits_LV = TransformerLM(c).apply({"params": params}, tokens)[0]
    return jax.nn.logsumexp(logits_LV, axis=-1) - jnp.take_along_axis(logits_LV, targets[:, None], axis=-1)[:, 0]

  jacobian_LLD = jax.jit(jax.jacrev(losses_L))(jnp.zeros((length, c.d_model)))
  dependence = np.abs(np.asarray(jacobian_LLD)).sum(axis=-1)  # [t, s]
  for t in range(length):
    for s in range(length):
      if mask == "none":
        reachable = True
      elif mask == "sliding_window":  # two layers reach 2 (W - 1) tokens back
        reachable = t - 2 * (window - 1) <= s <= t
      elif mask == "prefix":
        reachable = s <= t or (t < prefix and s < prefix)
      else:
        reachable = s <= t
      if reachable:
        assert dependence[t, s] > 1e-7, (t, s, dependence)
      else:
        assert dependence[t, s] == 0.0, (t, s, dependence)


@pytest.mark.parametrize("mask", MASKS)
def test_attention_weights_exactly_zero_where_masked_and_rows_sum_to_one(mask):
  c = make_config(mask, "full", heads=4, kv_heads=2, window=2, prefix_length=3)
  p = random_params(c, seed=16)
  x = jnp.asarray(np.random.RandomState(17).randn(2, 6, c.d_model), jnp.float32)
  segments = jnp.array([[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]])
  positions = jnp.array([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 0, 1]])
  _, weights = apply_attention(c, p, x, positions, segments)
  assert weights.shape == (2, 4, 6, 6)
  weights = np.asarray(weights)
  for b in range(2):
    allowed = np.array([[reference_allowed(c, positions[b, i], positions[b, j], segments[b, i], segments[b, j])
                         for j in range(6)] for i in range(6)])
    for h in range(4):
      assert np.all(weights[b, h][~allowed] == 0.0)
      assert np.all(weights[b, h][allowed] > 0.0)
      np.testing.assert_allclose(weights[b, h].sum(axis=-1), 1.0, rtol=0, atol=1e-6)

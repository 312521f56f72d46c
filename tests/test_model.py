"""Tests of transformer/model.py: scanned equals unrolled, jit equals eager, bfloat16, dropout, packed sequences,
the parameter tree and its initialization. ModelConfig's validation is tested in test_model_config.py."""

import contextlib
import dataclasses
import io

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from tests.helpers.random_params import random_params
from transformer.config import ModelConfig
from transformer.model import Dropout, LayerNorm, TransformerLM

pytestmark = pytest.mark.usefixtures("fast_compilation")

BATCH, LENGTH = 2, 6


def small_model_config(**overrides) -> ModelConfig:
  """Two layers of width 8 with two heads over 11 tokens; each test passes what it changes."""
  fields = dict(vocab_size=11, max_len=8, num_layers=2, d_model=8, num_heads=2, chunk_size=4)
  fields.update(overrides)
  return ModelConfig(**fields)


def param_shapes(c: ModelConfig) -> dict:
  tokens = jnp.zeros((1, c.max_len), jnp.int32)
  return nn.unbox(jax.eval_shape(TransformerLM(c).init, jax.random.key(0), tokens)["params"])


def random_tokens(seed: int, c: ModelConfig, batch: int = BATCH, length: int = LENGTH) -> jax.Array:
  return jnp.asarray(np.random.RandomState(seed).randint(0, c.vocab_size, (batch, length)))


def forward(c: ModelConfig):
  """The jitted forward pass of a config, (params, tokens) -> logits."""
  return jax.jit(lambda params, tokens: TransformerLM(c).apply({"params": params}, tokens))


def to_scanned(params: dict, num_layers: int) -> dict:
  """Unrolled params (block_0 .. block_{N-1}) -> the scanned layout (blocks/block with a leading layer axis)."""
  out = {name: value for name, value in params.items() if not name.startswith("block_")}
  layers = [params[f"block_{i}"] for i in range(num_layers)]
  assert set(params) - set(out) == {f"block_{i}" for i in range(num_layers)}
  out["blocks"] = {"block": jax.tree.map(lambda *leaves: jnp.stack(leaves), *layers)}
  return out


def _shapes(tree):
  return jax.tree.map(lambda leaf: (tuple(leaf.shape), leaf.dtype), tree)


# ----------------------------------------------------------------------------------------------
# scan_layers == unrolled


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(positions="rope", num_kv_heads=1, value_mode="full", mask="prefix", prefix_length=3,
             remat_policy="full", attention_impl="chunked"),
        dict(remat_policy="dots", tie_embeddings=False, positions="sinusoidal", num_layers=3, mask="sliding_window",
             window=2, post_ln=True),
    ],
    ids=["default", "rope-mqa-full-prefix-remat_full-chunked", "remat_dots-untied-sinusoidal-sliding-post_ln"],
)
def test_scan_layers_equals_unrolled(overrides):
  overrides = dict(overrides)
  remat_policy = overrides.pop("remat_policy", "none")  # only scanned layers take one
  unrolled = small_model_config(**overrides)
  scanned = dataclasses.replace(unrolled, scan_layers=True, remat_policy=remat_policy)
  params = random_params(unrolled, seed=1)
  scanned_params = to_scanned(params, unrolled.num_layers)
  # The conversion gives exactly the scanned model's own layout.
  assert _shapes(scanned_params) == _shapes(param_shapes(scanned))
  tokens = random_tokens(2, unrolled)
  expected = forward(unrolled)(params, tokens)
  got = forward(scanned)(scanned_params, tokens)
  assert np.abs(np.asarray(expected)).max() > 0.1
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_scan_layers_gradients_equal_unrolled_with_remat():
  unrolled = small_model_config(num_kv_heads=1)
  scanned = dataclasses.replace(unrolled, scan_layers=True, remat_policy="dots_no_batch")
  params = random_params(unrolled, seed=3)
  tokens = random_tokens(4, unrolled)

  def loss(c):
    return lambda params: jnp.mean(jax.nn.log_softmax(TransformerLM(c).apply({"params": params}, tokens))[..., 0])

  expected = to_scanned(jax.jit(jax.grad(loss(unrolled)))(params), unrolled.num_layers)
  got = jax.jit(jax.grad(loss(scanned)))(to_scanned(params, unrolled.num_layers))
  jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6), got, expected)
  assert np.abs(np.asarray(got["blocks"]["block"]["attention"]["query"])).max() > 1e-4


@pytest.mark.parametrize("policy, keeps_projections", [("full", False), ("dots", True), ("dots_no_batch", True)])
def test_dot_remat_policies_keep_the_projection_outputs(policy, keeps_projections):
  """dense() is a custom-VJP matmul: the dot policies must still keep its outputs (here the MLP's hidden
  layer, [layers, B*L, F]) instead of recomputing them in the backward pass."""
  c = ModelConfig(vocab_size=16, max_len=8, num_layers=2, d_model=16, num_heads=2, mlp_dim=48, scan_layers=True,
                  remat_policy=policy)
  tokens = jnp.zeros((2, 8), jnp.int32)
  params = TransformerLM(c).init(jax.random.key(0), tokens)["params"]
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    print_saved_residuals(lambda p: TransformerLM(c).apply({"params": p}, tokens).sum(), params)
  assert ("f32[2,16,48] output of scan" in printed.getvalue()) == keeps_projections, printed.getvalue()


def test_residual_stream_is_sown_per_block():
  c = small_model_config()
  params = random_params(c)
  tokens = random_tokens(5, c)
  logits, state = TransformerLM(c).apply({"params": params}, tokens, mutable=["intermediates"])
  assert set(state["intermediates"]) == {"block_0", "block_1"}
  residual = state["intermediates"]["block_1"]["residual"][0]
  assert residual.shape == (BATCH, LENGTH, c.d_model)
  # The last residual, normalized and unembedded with the tied embedding, gives the logits.
  normalized = LayerNorm(c).apply({"params": params["final_norm"]}, residual)
  np.testing.assert_allclose(normalized @ params["embed"]["embedding"].T, logits, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# jit == eager, bfloat16


def test_jit_equals_eager():
  c = small_model_config(positions="rope", num_kv_heads=1, mask="prefix", prefix_length=2)
  params = random_params(c, seed=6)
  tokens = random_tokens(7, c)
  eager = TransformerLM(c).apply({"params": params}, tokens)
  jitted = forward(c)(params, tokens)
  assert eager.dtype == jitted.dtype == jnp.float32
  assert eager.shape == (BATCH, LENGTH, c.vocab_size)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)


def test_bfloat16_runs_and_stays_close():
  c32 = small_model_config(num_kv_heads=1, positions="rope")
  c16 = dataclasses.replace(c32, dtype="bfloat16")
  params = random_params(c32, seed=8)
  tokens = random_tokens(9, c32)

  def loss_and_logits(c):
    def fn(params):
      logits = TransformerLM(c).apply({"params": params}, tokens)
      return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[..., 0]), logits
    return jax.jit(jax.value_and_grad(fn, has_aux=True))

  (loss32, logits32), grads32 = loss_and_logits(c32)(params)
  (loss16, logits16), grads16 = loss_and_logits(c16)(params)
  # Parameters stay float32 and logits come back in float32.
  assert logits16.dtype == jnp.float32
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
  assert np.all(np.isfinite(np.asarray(logits16)))
  relative = np.linalg.norm(np.asarray(logits16 - logits32)) / np.linalg.norm(np.asarray(logits32))
  assert relative < 3e-2, relative
  assert not np.array_equal(np.asarray(logits16), np.asarray(logits32))  # it did compute in bfloat16
  np.testing.assert_allclose(loss16, loss32, rtol=3e-2)
  flat16, flat32 = jax.tree.leaves(grads16), jax.tree.leaves(grads32)
  cosine = sum(float(jnp.vdot(a, b)) for a, b in zip(flat16, flat32)) / (
      np.sqrt(sum(float(jnp.vdot(a, a)) for a in flat16)) * np.sqrt(sum(float(jnp.vdot(b, b)) for b in flat32)))
  assert cosine > 0.99, cosine
  # The chunked kernel in bfloat16 too (its backward pass in bfloat16 is tested in test_kernels_backward.py).
  chunked16 = forward(dataclasses.replace(c16, attention_impl="chunked"))(params, tokens)
  relative = np.linalg.norm(np.asarray(chunked16 - logits32)) / np.linalg.norm(np.asarray(logits32))
  assert relative < 3e-2, relative


# ----------------------------------------------------------------------------------------------
# Dropout


def test_dropout_only_with_deterministic_false_and_the_dropout_rng():
  c = small_model_config(dropout_rate=0.3, attention_dropout_rate=0.3)
  params = random_params(c, seed=10)
  tokens = random_tokens(11, c)

  @jax.jit
  def run(params, rng):
    return TransformerLM(c).apply({"params": params}, tokens, deterministic=False, rngs={"dropout": rng})

  plain = forward(c)(params, tokens)
  # deterministic=True (the default) ignores the rates, with or without an RNG.
  with_rng = TransformerLM(c).apply({"params": params}, tokens, rngs={"dropout": jax.random.key(0)})
  np.testing.assert_allclose(with_rng, plain, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(plain, forward(small_model_config())(params, tokens), rtol=1e-6, atol=1e-6)
  a, b, other = run(params, jax.random.key(1)), run(params, jax.random.key(1)), run(params, jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a - plain)).max() > 1e-2
  assert np.abs(np.asarray(a - other)).max() > 1e-2
  with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
    TransformerLM(c).apply({"params": params}, tokens, deterministic=False)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_dropout_call_draws_its_own_mask(scan_layers):
  # Embeddings, then each layer's attention and MLP branches: 5 masks, all different; under nn.scan too,
  # where the layers must not share the 'dropout' RNG.
  c = small_model_config(dropout_rate=0.5, scan_layers=scan_layers)
  params = random_params(small_model_config(), seed=19)
  if scan_layers:
    params = to_scanned(params, c.num_layers)
  tokens = random_tokens(20, c)
  masks = []

  def record_mask(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, Dropout):
      jax.debug.callback(lambda kept: masks.append(np.asarray(kept)), out != 0)
    return out

  @jax.jit
  def run(params):
    with nn.intercept_methods(record_mask):
      return TransformerLM(c).apply({"params": params}, tokens, deterministic=False,
                                    rngs={"dropout": jax.random.key(4)})

  run(params).block_until_ready()
  jax.effects_barrier()
  assert len(masks) == 1 + 2 * c.num_layers
  assert len({mask.tobytes() for mask in masks}) == len(masks)
  assert all(0.3 < mask.mean() < 0.7 for mask in masks)


@pytest.mark.parametrize("field", ["dropout_rate", "attention_dropout_rate"])
def test_each_dropout_rate_acts_alone(field):
  c = small_model_config(**{field: 0.5})
  params = random_params(c, seed=12)
  tokens = random_tokens(13, c)
  plain = TransformerLM(c).apply({"params": params}, tokens)
  dropped = TransformerLM(c).apply({"params": params}, tokens, deterministic=False,
                                   rngs={"dropout": jax.random.key(3)})
  assert np.abs(np.asarray(dropped - plain)).max() > 1e-2


def test_zero_rates_need_no_rng_even_when_not_deterministic():
  c = small_model_config()
  params = random_params(c, seed=14)
  tokens = random_tokens(15, c)
  np.testing.assert_array_equal(TransformerLM(c).apply({"params": params}, tokens, deterministic=False),
                                TransformerLM(c).apply({"params": params}, tokens))


# ----------------------------------------------------------------------------------------------
# Packed sequences


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_packed_sequences_equal_separate_sequences(impl):
  # Two sequences packed in one row (segment ids, positions restarting) give the logits each gets alone.
  # (attention_impl "auto" with segments is tested in test_attention.py.)
  c = small_model_config(attention_impl=impl, mask="prefix", prefix_length=2, num_kv_heads=1)
  params = random_params(c, seed=16)
  separate = random_tokens(17, c, 2, 4)
  packed = separate.reshape(1, 8)
  positions = jnp.array([[0, 1, 2, 3, 0, 1, 2, 3]])
  segments = jnp.array([[0, 0, 0, 0, 1, 1, 1, 1]])
  model = TransformerLM(c)

  @jax.jit
  def run(params):
    return model.apply({"params": params}, packed, positions, segments), model.apply({"params": params}, separate)

  got, expected = run(params)
  np.testing.assert_allclose(got.reshape(2, 4, -1), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Parameters


def test_parameter_tree():
  tied = param_shapes(small_model_config())
  assert set(tied) == {"embed", "position_embedding", "block_0", "block_1", "final_norm"}
  assert set(tied["block_0"]) == {"attention", "attention_norm", "mlp", "mlp_norm"}
  assert tied["position_embedding"].shape == (8, 8)
  assert tied["block_0"]["mlp"]["up"].shape == (8, 32)
  untied = param_shapes(small_model_config(tie_embeddings=False, post_ln=True, positions="rope", use_bias=False))
  assert set(untied) == {"embed", "unembed", "block_0", "block_1"}  # post-LN: no final norm
  assert untied["unembed"].shape == (8, 11)
  assert set(untied["block_0"]["mlp"]) == {"up", "down"}
  assert set(untied["block_0"]["attention_norm"]) == {"scale"}
  scanned = param_shapes(small_model_config(scan_layers=True, num_layers=3))
  assert scanned["blocks"]["block"]["attention"]["query"].shape == (3, 8, 2, 4)


def test_init_scales_and_independent_scanned_layers():
  c = small_model_config(d_model=32, num_heads=2, num_layers=2, scan_layers=True, init_std=0.05)
  variables = jax.jit(TransformerLM(c).init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  params = nn.unbox(variables["params"])
  block = params["blocks"]["block"]
  query, value_up = block["attention"]["query"], block["attention"]["value_up"]  # [N,D,H,K], [N,H,R,D]
  assert not np.allclose(query[0], query[1])  # each scanned layer has its own initialization
  np.testing.assert_allclose(np.std(query), 0.05, rtol=0.15)
  # GPT-2: maps that write into the residual stream start 1/sqrt(2N) smaller.
  np.testing.assert_allclose(np.std(value_up), 0.05 / np.sqrt(2 * c.num_layers), rtol=0.15)
  np.testing.assert_allclose(np.std(block["mlp"]["down"]), 0.05 / np.sqrt(2 * c.num_layers), rtol=0.15)
  np.testing.assert_array_equal(block["attention"]["query_bias"], 0.0)
  np.testing.assert_array_equal(block["attention_norm"]["scale"], 1.0)
  # Logical axis names for sharding: the scanned layer axis comes first.
  boxed = variables["params"]["blocks"]["block"]["attention"]["query"]
  assert tuple(boxed.names) == ("layers", "embed", "heads", "head_dim")

"""The runner's train and eval steps and the sampler's decode step lower for GPUs and TPUs on a CPU machine.

`jax.export` lowers a jitted function to StableHLO for platforms it has no devices of. That catches, before
anyone has an accelerator, an operation with no lowering there and a host callback (which cannot run on
another machine). It cannot catch what only the platform's own compiler sees (the philox4x32 mask that
failed to compile once sharded lowered fine), nor code that asks which backend it runs on, which takes
its CPU branch here: attention_impl='auto' chooses cuDNN that way, so here it lowers
jax.nn.dot_product_attention's XLA implementation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from experiments import build, sample, sharding, validation
from tests.helpers.tiny_config import MESH, tiny_config
from transformer import decoding

PLATFORMS = ("cuda", "tpu")
STEPS_PER_CALL = 2


def _lower(function, *args) -> export.Exported:
  exported = export.export(function, platforms=PLATFORMS)(*args)
  assert exported.platforms == PLATFORMS and exported.mlir_module_serialized
  return exported


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


# attention_impl -> attention dropout: `auto` with attention dropout falls back to the chunked kernel,
# so it runs without, to lower jax.nn.dot_product_attention.
IMPLS = {"reference": 0.1, "chunked": 0.1, "auto": 0.0}


@pytest.mark.parametrize("attention_impl", list(IMPLS))
def test_steps_lower_for_accelerators_in_bfloat16_with_dropout(attention_impl, tfds_data_dir, tmp_path):
  config = tiny_config(tfds_data_dir, {
      **MESH, "model.attention_impl": attention_impl, "model.dtype": "bfloat16", "model.dropout_rate": 0.1,
      "model.attention_dropout_rate": IMPLS[attention_impl], "train.steps_per_call": STEPS_PER_CALL})
  config = validation.resolve(config)
  data = build.load_data(config)
  sharded = build.ShardedModel(config)
  evaluation, training = build.Evaluation(config, sharded, data), build.Training(config, sharded, data)
  batch = next(iter(training.new_iterator()))
  stacked = {name: jax.ShapeDtypeStruct((STEPS_PER_CALL, *np.shape(x)), np.asarray(x).dtype,
                                        sharding=sharding.stacked_batch_sharding(sharded.mesh))
             for name, x in batch.items()}

  train = _lower(training.train_steps, training.abstract_state, stacked)
  state, metrics = jax.tree.unflatten(train.out_tree, train.out_avals)
  # bfloat16 compute keeps float32 parameters, optimizer state and metrics.
  assert jax.tree.map(lambda a: (a.shape, a.dtype), state) == \
      jax.tree.map(lambda a: (a.shape, a.dtype), training.abstract_state)
  assert {(a.shape, a.dtype) for a in metrics.values()} == {((STEPS_PER_CALL,), np.dtype(np.float32))}

  single = {name: jax.ShapeDtypeStruct(s.shape[1:], s.dtype, sharding=sharding.batch_sharding(sharded.mesh))
            for name, s in stacked.items()}
  _lower(evaluation.eval_step, sharded.abstract_params, single)

  cache = _abstract(decoding.init_cache(sharded.model, batch_size=1))
  tokens_1L = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  start = jax.ShapeDtypeStruct((), jnp.int32)
  decode = _lower(sample._cached_logits, sharded.model, sharded.abstract_params, cache, tokens_1L, start)
  assert decode.out_avals[0].shape == (sharded.model.config.vocab_size,)


def test_a_host_callback_is_refused():
  """The check can fail: a step that calls back into Python cannot be exported for another machine."""

  def with_callback(x):
    return jax.pure_callback(lambda v: np.asarray(v) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

  # JAX 0.10 says NotImplementedError with two platforms and ValueError with one; either way, no export.
  with pytest.raises((NotImplementedError, ValueError)):
    _lower(jax.jit(with_callback), jax.ShapeDtypeStruct((4,), jnp.float32))

"""What a run builds once from its resolved config: its data, the model on the mesh, evaluation, training.

`ShardedModel` is all that reading, evaluating or lowering a run's model needs (no optimizer, no data);
`Evaluation` adds the validation split and the compiled eval step; `Training` the optimizer, the train
state's layout, the compiled init and train steps and the training data's order. The runner builds all
three; experiments/evaluate.py only the first two.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from experiments import sharding, validation
from experiments.data import datasets, pipeline
from experiments.optimizer import learning_rate_schedule, make_optimizer
from experiments.steps import TrainState, eval_step, summarize_eval, train_steps
from experiments.workdir import data_dir
from transformer import TransformerLM


def load_data(config: ConfigDict) -> datasets.Data:
  """Prepares the run's data on first use (process 0 first, then the others read it) and opens it.

  Raises:
    ConfigError: the data cannot be prepared as configured (one line naming the field).
  """
  try:
    if jax.process_index() == 0:
      data = datasets.load(config.data, data_dir(config))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      multihost_utils.sync_global_devices("data prepared")
    if jax.process_index() != 0:
      data = datasets.load(config.data, data_dir(config))
  except ValueError as error:
    message = str(error)
    raise validation.ConfigError(message if message.startswith("data.") else f"data.{message}") from None
  return data


class ShardedModel:
  """A run's model on its device mesh: the model, the mesh and where each parameter lies on it."""

  def __init__(self, config: ConfigDict):
    """Builds the model of a resolved config (see validation.resolve) and its parameters' layout."""
    self.model_config = validation.model_config(config)
    self.model = TransformerLM(self.model_config)
    self.mesh = sharding.make_mesh(config.mesh)
    self.example_tokens_BL = jnp.zeros((1, config.data.seq_len), jnp.int32)
    boxed_params = jax.eval_shape(lambda: self.model.init(jax.random.key(0), self.example_tokens_BL))["params"]
    self.param_shardings = sharding.param_shardings(boxed_params, self.mesh, sharding.parse_rules(config.mesh.rules))
    # Shapes, dtypes and shardings of the parameters: what restoring them from a checkpoint needs.
    self.abstract_params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                        nn.unbox(boxed_params), self.param_shardings)


class Evaluation:
  """The validation split and the compiled eval step: the eval metrics of any parameters of the model."""

  def __init__(self, config: ConfigDict, sharded: ShardedModel, data: datasets.Data):
    """Compiles nothing yet: the eval step compiles at its first call."""
    self.mesh = sharded.mesh
    self.max_batches = config.eval.max_batches
    self.eval_step = jax.jit(functools.partial(eval_step, model=sharded.model),
                             in_shardings=(sharded.param_shardings, sharding.batch_sharding(self.mesh)),
                             out_shardings=sharding.replicated(self.mesh))
    eval_batch = (config.eval.batch_size or config.train.batch_size) // jax.process_count()
    self.batches = pipeline.eval_batches(data.validation, batch_size=eval_batch, process_index=jax.process_index(),
                                         process_count=jax.process_count())

  def evaluate(self, params: Any) -> dict[str, float]:
    """Metrics over the validation split (or its first eval.max_batches batches)."""
    totals = None
    for index, local_batch in enumerate(self.batches):
      if self.max_batches and index >= self.max_batches:
        break
      sums = self.eval_step(params, sharding.global_batch(local_batch, self.mesh))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return summarize_eval({k: float(v) for k, v in jax.device_get(totals).items()})


def initial_train_state(seed: int | jax.Array, *, model: TransformerLM, tx: Any,
                        example_tokens_BL: jax.Array) -> TrainState:
  """The train state at step 0 of the run with this seed: its initialisation and its base RNG."""
  key = jax.random.key(seed)
  params = nn.unbox(model.init(jax.random.fold_in(key, 0), example_tokens_BL)["params"])
  return TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.fold_in(key, 1)))


class Training:
  """What only training needs: the optimizer, the train state's layout, its compiled steps, the data order."""

  def __init__(self, config: ConfigDict, sharded: ShardedModel, data: datasets.Data):
    """Compiles nothing yet: each program compiles at its first call."""
    self.config = config
    self.data = data
    t, model, mesh = config.train, sharded.model, sharded.mesh
    self.tx = make_optimizer(config.optimizer, t.steps, sharded.abstract_params)
    abstract_opt_state = jax.eval_shape(self.tx.init, sharded.abstract_params)
    replicated = sharding.replicated(mesh)
    self.state_shardings = TrainState(
        step=replicated, params=sharded.param_shardings, rng=replicated,
        opt_state=sharding.optimizer_shardings(self.tx, abstract_opt_state, sharded.param_shardings, mesh))

    init_state = functools.partial(initial_train_state, model=model, tx=self.tx,
                                   example_tokens_BL=sharded.example_tokens_BL)
    self._init_state = jax.jit(init_state, static_argnums=0, out_shardings=self.state_shardings)
    self.abstract_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        jax.eval_shape(init_state, t.seed), self.state_shardings)
    # Steps over stacked batches (see steps.train_steps); one compilation per number of steps per call.
    self.train_steps = jax.jit(
        functools.partial(train_steps, model=model, tx=self.tx,
                          accumulation_steps=config.optimizer.accumulation_steps,
                          schedule=learning_rate_schedule(config.optimizer, t.steps)),
        in_shardings=(self.state_shardings, sharding.stacked_batch_sharding(mesh)),
        out_shardings=(self.state_shardings, replicated), donate_argnums=0)

  def new_iterator(self):
    """A fresh iterator of this process's training batches, at the start of the data order."""
    local_batch = self.config.train.batch_size // jax.process_count()
    return pipeline.train_iterator(self.data.train, batch_size=local_batch, seed=self.config.train.seed,
                                   process_index=jax.process_index(), process_count=jax.process_count(),
                                   worker_count=self.config.data.worker_count,
                                   prefetch_batches=pipeline.prefetch_for(self.config.train.steps_per_call))

  def initial_state(self) -> TrainState:
    """The train state at step 0, created already laid out on the mesh."""
    return self._init_state(self.config.train.seed)

"""Checkpoints with orbax: the train state and the data iterator's position, saved together.

Layout of a workdir: `config.json` (the run's config), `checkpoints/<step>/{state,data}` (orbax),
`metrics.jsonl`, `tensorboard/`, `summary.json`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen
import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

from experiments.files import CONFIG_FILE
from experiments.steps import TrainState
from transformer import TransformerLM, model_config_from

CHECKPOINTS = "checkpoints"


def make_manager(workdir: str, ck: ConfigDict | None = None, *, read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over workdir/checkpoints keeping the last `keep` and the best `keep_best`.

  Args:
    workdir: the run's directory.
    ck: the `checkpoint` config section (None when only reading).
    read_only: open another run's checkpoints without ever deleting or writing.
  """
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINTS))
  if read_only or ck is None:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    return ocp.CheckpointManager(directory, options=options)
  policies = [ocp.checkpoint_managers.LatestN(n=ck.keep)]
  if ck.keep_best:
    metric = ck.best_metric
    policies.append(ocp.checkpoint_managers.BestN(
        get_metric_fn=lambda metrics: metrics[metric], n=ck.keep_best,
        # BestN keeps the end of the sorted list: sort descending to keep the smallest values.
        reverse=ck.best_mode == "min", keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      enable_async_checkpointing=ck.async_save, create=True)
  return ocp.CheckpointManager(directory, options=options)


def _state_tree(state: TrainState) -> dict[str, Any]:
  # A plain dict on disk, so that other tools (and partial restores of params) need no TrainState class.
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": state.rng}


def save(manager: ocp.CheckpointManager, state: TrainState, data_iterator: Any,
         metrics: dict[str, float] | None = None) -> None:
  """Starts saving the state and the data iterator at state.step (asynchronously if configured)."""
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_state_tree(state)),
                                             data=grain.checkpoint.CheckpointSave(data_iterator)),
               metrics=metrics, force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: TrainState, data_iterator: Any) -> TrainState:
  """Restores the state (laid out as the shardings in abstract_state say) and moves the iterator in place."""
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_state_tree(abstract_state)),
      data=grain.checkpoint.CheckpointRestore(data_iterator)))
  tree = restored["state"]
  return TrainState(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"], rng=tree["rng"])


def restore_params(workdir: str, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
  """Reads only the parameters of another run's checkpoint (latest, or `step`), laid out as abstract_params says.

  Raises:
    FileNotFoundError: the workdir has no checkpoint (at that step).
  """
  manager = make_manager(workdir, read_only=True)
  steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, CHECKPOINTS)}")
  step = max(steps) if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint at step {step} in {workdir}; saved steps: {sorted(steps)}")
  restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape,
                                                             dtype=a.dtype), abstract_params)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item={"params": abstract_params}, restore_args={"params": restore_args}, partial_restore=True)))
  manager.close()
  return restored["state"]["params"], step


def read_config(workdir: str) -> ConfigDict:
  """The config a run saved in its workdir."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir!r} the workdir of a training run?")
  with open(path, encoding="utf-8") as f:
    return ConfigDict(json.load(f))


def load_model(workdir: str, step: int | None = None) -> tuple[TransformerLM, Any, int]:
  """Rebuilds a run's model from its config.json and reads its parameters onto the default device.

  For commands that look at a trained model (sampling, inspection): no optimizer state, data or mesh.

  Args:
    workdir: the run's directory.
    step: the checkpoint to read (default: the latest).

  Returns:
    (model, params, step): the model, its parameters and the step they were saved at.

  Raises:
    FileNotFoundError: the workdir has no config.json or no checkpoint (at that step).
  """
  config = read_config(workdir)
  # The saved config is resolved (vocab_size and max_len filled in), so it builds the model alone.
  model = TransformerLM(model_config_from(config.model))
  tokens_BL = jnp.zeros((1, model.config.max_len), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens_BL))["params"]
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          flax.linen.unbox(shapes))
  params, step = restore_params(workdir, abstract, step)
  return model, params, step

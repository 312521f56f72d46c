"""Checkpoints with orbax: the train state and the data iterator's position, saved together.

Layout of a workdir: `config.json` (the run's config), `checkpoints/<step>/{state,data}` (orbax),
`metrics.jsonl`, `tensorboard/`, `summary.json`. A checkpoint the keep policies drop is first renamed into
`checkpoints/.deleting/` and only then deleted, so a kill during a deletion never leaves a half-deleted step listed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import flax.linen
import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

from experiments import population, sharding
from experiments.files import CONFIG_FILE
from experiments.steps import TrainState
from transformer import TransformerLM, model_config_from

CHECKPOINTS = "checkpoints"
UNREADABLE = "unreadable_checkpoints"  # where training moves a checkpoint it could not read (kept, not deleted)
# Inside checkpoints/: where orbax renames a checkpoint it drops, before this module deletes it. Not a step's name,
# so no reader lists what a kill left there.
DELETING = ".deleting"
T = TypeVar("T")


class CheckpointError(RuntimeError):
  """A checkpoint asked for by step, or every checkpoint of a workdir, could not be read."""

  def __init__(self, message: str, errors: dict[int, BaseException] | None = None):
    super().__init__(message)
    self.errors = errors or {}  # each step's error, for callers that tell a changed config from a broken file


def error_line(error: BaseException) -> str:
  """The first line of the innermost cause: orbax wraps tensorstore's one-line reason (which names the file)
  in a multi-line dump of the array's spec."""
  while (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  lines = [line for line in str(error).splitlines() if line.strip()]
  return f"{type(error).__name__}: {lines[0].strip()[:300]}" if lines else type(error).__name__


def restore_newest(directory: str, steps: list[int], restore_step: Callable[[int], T]) -> tuple[T, int, list[int]]:
  """Restores the newest of `steps` that reads, each failure reported in one warning line.

  Args:
    directory: the checkpoints' folder (for the messages).
    steps: the saved steps.
    restore_step: reads one step (raising on any failure).

  Returns:
    (what restore_step returned, its step, the newer steps that failed).

  Raises:
    CheckpointError: no step reads (one line naming each with its error).
  """
  errors: dict[int, BaseException] = {}
  for step in sorted(steps, reverse=True):
    try:
      return restore_step(step), step, sorted(errors)
    except Exception as error:  # pylint: disable=broad-except  (orbax and tensorstore raise bare Exceptions)
      errors[step] = error
      logging.warning("checkpoint %s/%d does not restore (trying an older one): %s", directory, step,
                      error_line(error))
  raise CheckpointError(f"no checkpoint in {directory} restores: " + "; ".join(
      f"step {step}: {error_line(error)}" for step, error in errors.items()), errors)


class _ReadOnlyNotice(logging.Filter):
  """Drops orbax's warning that a manager opened read-only is read-only: asked for, so no news to the reader."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Given directory is read only")


class _AbandonedReads:
  """sys.unraisablehook that drops the reports of the reads a failed restore abandons, passing on all others.

  When one array of a checkpoint does not read, orbax stops waiting for the other reads and closes their event
  loop; as each of them ends, later, tensorstore reports as unraisable that the loop is closed, or that this read
  failed too: a traceback each, at any moment up to the interpreter's exit, of a failure the caller already has.
  """

  def __init__(self, previous: Callable[[Any], None]):
    self.previous = previous

  def __call__(self, unraisable: Any) -> None:
    error = unraisable.exc_value
    abandoned = ((isinstance(error, RuntimeError) and str(error) == "Event loop is closed")
                 or (type(error) is Exception and str(error).startswith("Encountered error while reading array")))
    if not abandoned:
      self.previous(unraisable)


def make_manager(workdir: str, ck: ConfigDict | None = None, *, read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over workdir/checkpoints keeping the last `keep` and the best `keep_best`.

  Args:
    workdir: the run's directory.
    ck: the `checkpoint` config section (None when only reading).
    read_only: open another run's checkpoints without ever deleting or writing.
  """
  if not isinstance(sys.unraisablehook, _AbandonedReads):
    sys.unraisablehook = _AbandonedReads(sys.unraisablehook)
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINTS))
  if read_only or ck is None:
    # save_interval_steps=0: orbax warns of setting it itself for a read-only manager.
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    notice = _ReadOnlyNotice()
    logging.getLogger("absl").addFilter(notice)  # orbax logs through absl
    try:
      return ocp.CheckpointManager(directory, options=options)
    finally:
      logging.getLogger("absl").removeFilter(notice)
  policies = [ocp.checkpoint_managers.LatestN(n=ck.keep)]
  if ck.keep_best:
    metric = ck.best_metric
    policies.append(ocp.checkpoint_managers.BestN(
        get_metric_fn=lambda metrics: metrics[metric], n=ck.keep_best,
        # BestN keeps the end of the sorted list: sort descending to keep the smallest values.
        reverse=ck.best_mode == "min", keep_checkpoints_without_metrics=False))
  # Orbax's own deletion removes a step's files in place, so a kill midway left a step that is still listed but
  # no longer reads; renamed first (one atomic step), the step is gone from the listing before any file goes.
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      enable_async_checkpointing=ck.async_save, create=True, todelete_subdir=DELETING)
  logging.getLogger("absl").addFilter(_RAISED_AGAIN)
  remains = purge_deleted(workdir)
  if remains:
    logging.warning("removed what a kill left of the deleted checkpoint(s) of step(s) %s in %s",
                    ", ".join(remains), directory)
  return ocp.CheckpointManager(directory, options=options)


class _RaisedAgain(logging.Filter):
  """Drops orbax's ERROR records of a save that failed in one of its threads (a full disk, say), each with a
  traceback: orbax keeps the same error and raises it again in the caller's thread, at the next save or
  wait_until_finished, where the command reports it in one line."""

  # The orbax functions (0.12) that log such an error with its traceback and then keep or raise it: the save's
  # commit thread, the manager's wait, a signalling thread's run, the metadata writer.
  _LOG_AND_KEEP = ("_thread_func", "wait_until_finished", "run", "_write_and_log")

  def filter(self, record: logging.LogRecord) -> bool:
    from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname
    return not (from_orbax and record.levelno >= logging.ERROR and record.exc_info
                and record.funcName in self._LOG_AND_KEEP)


_RAISED_AGAIN = _RaisedAgain()  # one instance, so that adding it again changes nothing


def purge_deleted(workdir: str) -> list[str]:
  """Deletes the checkpoints orbax renamed into checkpoints/.deleting/ (on process 0, the one that renames them).

  Called after every save, as orbax's deletions of that save are done by then (a save waits for the one before),
  and when a manager opens: a kill during a deletion leaves its remains there, never a listed step.

  Returns:
    The names of the steps whose remains were deleted.
  """
  folder = os.path.join(workdir, CHECKPOINTS, DELETING)
  if jax.process_index() != 0 or not os.path.isdir(folder):
    return []
  # One entry at a time: orbax may rename another one in while this runs (an asynchronous save's deletions).
  names = sorted(os.listdir(folder))
  for name in names:
    shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
  return names


def finish(manager: ocp.CheckpointManager, workdir: str) -> None:
  """Waits for pending asynchronous saves (and the deletions they cause), closes the manager, deletes what it
  dropped: every way a run ends goes through here, so that no half-written checkpoint is left by the run itself."""
  try:
    manager.wait_until_finished()
  finally:
    manager.close()
    purge_deleted(workdir)


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
  purge_deleted(_workdir_of(manager))


def save_params(workdir: str, params: Any, step: int = 0) -> None:
  """Writes parameters alone as workdir's checkpoint at `step`: a model made elsewhere (an imported one).

  The same layout as a run's `state` item, without the optimizer state, RNG and data position that only
  resuming a run needs: evaluation, sampling, inspection and `checkpoint.restore_from` read the parameters alone.
  """
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True)
  with ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CHECKPOINTS)), options=options) as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(
        {"step": jnp.array(step, jnp.int32), "params": params})), force=True)


def holds_params_only(workdir: str, step: int) -> bool:
  """Whether workdir's checkpoint at `step` was written by save_params: no data position, so no run to resume."""
  saved = os.path.join(workdir, CHECKPOINTS, str(step))
  return os.path.isdir(os.path.join(saved, "state")) and not os.path.exists(os.path.join(saved, "data"))


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: TrainState, data_iterator: Any) -> TrainState:
  """Restores the state (laid out as the shardings in abstract_state say) and moves the iterator in place."""
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_state_tree(abstract_state)),
      data=grain.checkpoint.CheckpointRestore(data_iterator)))
  tree = restored["state"]
  return TrainState(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"], rng=tree["rng"])


def save_population(manager: ocp.CheckpointManager, step: int, tree: dict[str, Any], data_iterators: list[Any]) -> None:
  """Starts saving a population's stacked state (`tree`: the train state's leaves with a member axis first, and the
  members' bookkeeping) and each member's data iterator, at `step`."""
  iterators = {f"data_{i}": grain.checkpoint.CheckpointSave(it) for i, it in enumerate(data_iterators)}
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), **iterators), force=True)
  purge_deleted(_workdir_of(manager))


def _workdir_of(manager: ocp.CheckpointManager) -> str:
  return os.path.dirname(str(manager.directory))


def restore_population(manager: ocp.CheckpointManager, step: int, abstract_tree: dict[str, Any],
                       data_iterators: list[Any]) -> dict[str, Any]:
  """Restores what save_population saved (laid out as abstract_tree says) and moves each iterator in place."""
  iterators = {f"data_{i}": grain.checkpoint.CheckpointRestore(it) for i, it in enumerate(data_iterators)}
  return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_tree),
                                                       **iterators))["state"]


def set_aside(workdir: str, steps: list[int]) -> None:
  """Moves the checkpoints of `steps` (ones that did not restore) to workdir/unreadable_checkpoints/.

  Training from an older checkpoint saves these steps again, which orbax refuses while they exist; moved,
  not deleted, they stay for a look at what broke.
  """
  for step in steps:
    target = os.path.join(workdir, UNREADABLE, f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(os.path.join(workdir, CHECKPOINTS, str(step)), target)
    logging.warning("moved the unreadable checkpoint of step %d to %s", step, target)


def restore_params(workdir: str, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
  """Reads only the parameters of a run's checkpoint, laid out as abstract_params says.

  A population member's directory (experiments/population.py) reads its member's slice of the population's
  checkpoint.

  Args:
    workdir: the run's directory, or a population member's.
    abstract_params: shapes, dtypes and shardings of the parameters.
    step: the checkpoint to read; None reads the newest that restores (a failure is one warning line).

  Returns:
    (params, the step they were saved at).

  Raises:
    FileNotFoundError: the workdir has no checkpoint (at that step).
    CheckpointError: the checkpoint at `step`, or with None every checkpoint, does not read.
  """
  directory = os.path.join(workdir, CHECKPOINTS)
  member = population.population_of(workdir)
  if member is not None and not os.path.isdir(directory):
    return _restore_member_params(*member, abstract_params, step)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint in {directory}")
  manager = make_manager(workdir, read_only=True)
  steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  if step is not None and step not in steps:
    raise FileNotFoundError(f"no checkpoint at step {step} in {workdir}; saved steps: {sorted(steps)}")
  restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape,
                                                             dtype=a.dtype), abstract_params)

  def read(at: int) -> Any:
    restored = manager.restore(at, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": abstract_params}, restore_args={"params": restore_args}, partial_restore=True)))
    return restored["state"]["params"]

  try:
    if step is None:
      params, step, _ = restore_newest(directory, steps, read)
    else:
      try:
        params = read(step)
      except Exception as error:  # pylint: disable=broad-except  (orbax and tensorstore raise bare Exceptions)
        raise CheckpointError(f"checkpoint {directory}/{step} does not restore: {error_line(error)}") from None
  finally:
    manager.close()
  return params, step


def _restore_member_params(population_workdir: str, member: int, abstract_params: Any,
                           step: int | None) -> tuple[Any, int]:
  """Member `member`'s parameters from the stacked checkpoint of a population, laid out as abstract_params says."""
  size = population.size_of(read_config(population_workdir))
  stacked = jax.tree.map(lambda a: jax.ShapeDtypeStruct((size, *a.shape), a.dtype,
                                                        sharding=sharding.with_members(a.sharding, ())),
                         abstract_params)
  params, step = restore_params(population_workdir, stacked, step)
  out = jax.tree.map(lambda a: a.sharding, abstract_params)
  return jax.jit(lambda tree: jax.tree.map(lambda x: x[member], tree), out_shardings=out)(params), step


def single_run_config(workdir: str) -> ConfigDict:
  """The config of the single model in workdir: a run's, or a population member's directory.

  Raises:
    FileNotFoundError: workdir is no run, or it holds a whole population (one line naming --member).
  """
  config = read_config(workdir)
  size = population.size_of(config)
  if size > 1:
    raise FileNotFoundError(f"{workdir} holds a population of {size} models: give --member=I (0 to {size - 1}), or "
                            f"a member's directory")
  return config


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
    workdir: the run's directory, or a population member's.
    step: the checkpoint to read (default: the latest).

  Returns:
    (model, params, step): the model, its parameters and the step they were saved at.

  Raises:
    FileNotFoundError: the workdir has no config.json or no checkpoint (at that step), or holds a population.
    CheckpointError: the checkpoint at `step`, or with None every checkpoint, does not read.
  """
  config = single_run_config(workdir)
  # The saved config is resolved (vocab_size and max_len filled in), so it builds the model alone.
  model = TransformerLM(model_config_from(config.model))
  tokens_BL = jnp.zeros((1, model.config.max_len), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens_BL))["params"]
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          flax.linen.unbox(shapes))
  params, step = restore_params(workdir, abstract, step)
  return model, params, step

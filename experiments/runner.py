"""The training run: builds everything a config describes, trains, evaluates, checkpoints, resumes.

`train_and_evaluate(config, workdir)` is the one entry; experiments/train.py wraps it in flags.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from experiments import checkpoint, host, sharding, validation
from experiments.data import datasets, pipeline, tokenizers
from experiments.files import SUMMARY_FILE, exclusive_lock, write_json
from experiments.inspection import training_probes
from experiments.metrics import MetricWriter, device_peak_flops
from experiments.optimizer import learning_rate_schedule, make_optimizer
from experiments.steps import TrainState, eval_step, summarize_eval, train_steps
from transformer import TransformerLM
from transformer.accounting import flops_per_token, parameter_counts


class ConfigError(ValueError):
  """The config is invalid; the message has one line per problem."""


class NonFiniteLoss(RuntimeError):
  """Training produced a NaN or infinite loss."""


class WorkdirLocked(RuntimeError):
  """Another live process trains in this workdir."""


def data_dir(config: ConfigDict) -> str:
  return config.data.data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Holds an exclusive lock on workdir for the life of the run; the OS releases it if the process dies."""
  path = os.path.join(workdir, f".lock.process_{jax.process_index()}")
  with exclusive_lock(path, wait=False) as handle:
    if handle is None:
      with open(path, encoding="utf-8") as f:
        owner = f.read().strip() or "another process"
      raise WorkdirLocked(f"workdir {workdir} is in use by a live run ({owner}); wait for it or use another "
                          f"--workdir")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    yield


def check_resumable(workdir: str, config: ConfigDict) -> None:
  """Refuses to resume a workdir whose saved model or data differ from this config's."""
  path = os.path.join(workdir, checkpoint.CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  for section in ("model", "data"):
    old, new = saved.get(section, {}), config[section].to_dict()
    # Where the data live is not what they are: a moved data_dir or manual_dir resumes.
    changed = sorted(k for k in set(old) | set(new)
                     if old.get(k) != new.get(k) and k not in ("data_dir", "manual_dir"))
    if changed:
      key = changed[0]
      raise ConfigError(f"{section}.{key}={new.get(key)!r} differs from {old.get(key)!r} saved in {path}: "
                        f"use a new --workdir, or the saved value to resume")


class Preemption:
  """Turns SIGTERM and SIGINT into a flag the loop checks, so that it can save and exit cleanly."""

  def __init__(self):
    self.signal_name = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      # On several hosts the coordination service handles SIGTERM and agrees on a step (see `reached`).
      if sig == signal.SIGTERM and jax.process_count() > 1:
        continue
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name

  def reached(self, step: int) -> bool:
    """True once a signal asks the run to stop; on several hosts, at the same step on all of them."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = self.signal_name or "SIGTERM"
        return True
    return self.signal_name is not None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _mean_metrics(pending: list[tuple[int, dict[str, jax.Array]]]) -> tuple[dict[str, float], int | None]:
  """Averages the steps' metrics fetched in one transfer; returns them and the first non-finite step.

  `pending` holds (first step, metrics stacked one row a step) for each compiled call since the last fetch.
  """
  values = jax.device_get([metrics for _, metrics in pending])
  bad = [first + int(np.argmin(np.isfinite(m["train/loss"]))) for (first, _), m in zip(pending, values)
         if not np.isfinite(m["train/loss"]).all()]
  mean = {k: float(np.mean(np.concatenate([m[k] for m in values]))) for k in values[0] if k != "train/tokens"}
  mean["train/learning_rate"] = float(values[-1]["train/learning_rate"][-1])
  return mean, (bad[0] if bad else None)


def steps_in_call(train: ConfigDict, step: int) -> int:
  """Steps in the compiled call after `step`: up to train.steps_per_call, ending at the next step that
  logs, evaluates or checkpoints, and at the last. A function of the step alone, so a resumed run makes
  the same calls as one that never stopped."""
  end = min(step + train.steps_per_call, train.steps)
  for every in (train.log_every, train.eval_every, train.checkpoint_every):
    if every:
      end = min(end, (step // every + 1) * every)
  return end - step


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
    raise ConfigError(message if message.startswith("data.") else f"data.{message}") from None
  return data


class Trainer:
  """Everything built once per run: mesh, model, optimizer, shardings, compiled steps, data."""

  def __init__(self, config: ConfigDict, workdir: str, data: datasets.Data | None = None):
    """Builds the run of a resolved config; `data` from `load_data`, or loaded here when None."""
    self.config = config
    self.workdir = workdir
    self.model_config = validation.model_config(config)
    self.model = TransformerLM(self.model_config)
    self.mesh = sharding.make_mesh(config.mesh)
    self.rules = sharding.parse_rules(config.mesh.rules)
    t = config.train

    tokens_BL = jnp.zeros((1, config.data.seq_len), jnp.int32)
    boxed_params = jax.eval_shape(lambda: self.model.init(jax.random.key(0), tokens_BL))["params"]
    self.param_shardings = sharding.param_shardings(boxed_params, self.mesh, self.rules)
    abstract_params = nn.unbox(boxed_params)
    self.schedule = learning_rate_schedule(config.optimizer, t.steps)
    self.tx = make_optimizer(config.optimizer, t.steps, abstract_params)
    abstract_opt_state = jax.eval_shape(self.tx.init, abstract_params)
    replicated = sharding.replicated(self.mesh)
    self.state_shardings = TrainState(
        step=replicated, params=self.param_shardings, rng=replicated,
        opt_state=sharding.optimizer_shardings(self.tx, abstract_opt_state, self.param_shardings, self.mesh))

    def init_state(seed):
      key = jax.random.key(seed)
      params = nn.unbox(self.model.init(jax.random.fold_in(key, 0), tokens_BL)["params"])
      return TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=self.tx.init(params),
                        rng=jax.random.key_data(jax.random.fold_in(key, 1)))

    self._init_state = jax.jit(init_state, static_argnums=0, out_shardings=self.state_shardings)
    self.abstract_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        jax.eval_shape(init_state, t.seed), self.state_shardings)
    batch_sharding = sharding.batch_sharding(self.mesh)
    # Steps over stacked batches (see steps.train_steps); one compilation per number of steps per call.
    self.train_steps = jax.jit(
        functools.partial(train_steps, model=self.model, tx=self.tx,
                          accumulation_steps=config.optimizer.accumulation_steps, schedule=self.schedule),
        in_shardings=(self.state_shardings, sharding.stacked_batch_sharding(self.mesh)),
        out_shardings=(self.state_shardings, replicated), donate_argnums=0)
    self.eval_step = jax.jit(functools.partial(eval_step, model=self.model),
                             in_shardings=(self.param_shardings, batch_sharding), out_shardings=replicated)

    self.data = load_data(config) if data is None else data
    self.local_batch = t.batch_size // jax.process_count()
    eval_batch = (config.eval.batch_size or t.batch_size) // jax.process_count()
    self.eval_data = pipeline.eval_batches(self.data.validation, batch_size=eval_batch, process_index=jax.process_index(),
                                           process_count=jax.process_count())

  def new_train_iterator(self):
    return pipeline.train_iterator(self.data.train, batch_size=self.local_batch, seed=self.config.train.seed,
                                   process_index=jax.process_index(), process_count=jax.process_count(),
                                   worker_count=self.config.data.worker_count)

  def initial_state(self) -> TrainState:
    return self._init_state(self.config.train.seed)

  def evaluate(self, params) -> dict[str, float]:
    """Metrics over the validation split (or its first eval.max_batches batches)."""
    totals = None
    for index, local_batch in enumerate(self.eval_data):
      if self.config.eval.max_batches and index >= self.config.eval.max_batches:
        break
      sums = self.eval_step(params, sharding.global_batch(local_batch, self.mesh))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return summarize_eval({k: float(v) for k, v in jax.device_get(totals).items()})


def train_and_evaluate(config: ConfigDict, workdir: str, progress: bool = False) -> dict[str, Any]:
  """Runs (or resumes) the training a config describes and returns the final summary.

  Raises:
    ConfigError: the config is invalid (nothing was written).
    WorkdirLocked: another live run uses the workdir.
    NonFiniteLoss: the loss became NaN or infinite (the last good checkpoint stays).
  """
  errors = validation.validate(config)
  if errors:
    raise ConfigError("\n".join(errors))
  start_time = time.time()
  data = load_data(config)
  config = validation.resolve(config, data.vocab_size)
  if config.model.vocab_size < data.vocab_size:
    raise ConfigError(f"model.vocab_size={config.model.vocab_size} is smaller than the data's {data.vocab_size} "
                      f"tokens: set 0 to follow the data")
  os.makedirs(workdir, exist_ok=True)
  with workdir_lock(workdir):
    check_resumable(workdir, config)
    return _run(config, workdir, data, progress, start_time)


def _run(config: ConfigDict, workdir: str, data: datasets.Data, progress: bool, start_time: float) -> dict[str, Any]:
  t, lead = config.train, jax.process_index() == 0
  trainer = Trainer(config, workdir, data)
  if lead:
    write_json(os.path.join(workdir, checkpoint.CONFIG_FILE), config.to_dict())
    if data.tokenizer is not None:
      # Beside the checkpoints, so sampling and evaluation decode exactly as training encoded.
      tokenizers.save_atomically(data.tokenizer, os.path.join(workdir, tokenizers.TOKENIZER_DIR))
  manager = checkpoint.make_manager(workdir, config.checkpoint)
  iterator = trainer.new_train_iterator()
  latest = manager.latest_step()
  if latest is not None:
    try:
      state = checkpoint.restore(manager, latest, trainer.abstract_state, iterator)
    except (ValueError, KeyError, TypeError) as error:
      manager.close()
      first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
      raise ConfigError(f"the checkpoint at step {latest} in {workdir} does not fit this config's train state "
                        f"(were optimizer settings such as grad_clip changed?): {first_line}") from error
    logging.info("resumed from step %d of %s", latest, workdir)
  else:
    state = trainer.initial_state()
    if config.checkpoint.restore_from:
      params, step = checkpoint.restore_params(config.checkpoint.restore_from, trainer.abstract_state.params)
      state = state.replace(params=params)
      logging.info("initialized params from %s step %d", config.checkpoint.restore_from, step)
  first_step = int(jax.device_get(state.step))
  try:
    # The data's own tokenizer, not the one saved in the workdir: every process has it, on any file system.
    tokenizer = data.tokenizer or tokenizers.TokenIds(trainer.model_config.vocab_size)
    probes = training_probes.TrainingProbes(config, trainer.model, tokenizer, sharding.replicated(trainer.mesh))
  except ValueError as error:
    manager.close()
    raise ConfigError(str(error)) from error

  counts = parameter_counts(trainer.model_config)
  flops_token = flops_per_token(trainer.model_config, config.data.seq_len)
  peak_flops, peak_source = device_peak_flops(trainer.model_config.dtype)
  writer = MetricWriter(workdir, enabled=lead)
  bar = None
  if progress and lead:
    import tqdm  # pylint: disable=g-import-not-at-top

    bar = tqdm.tqdm(total=t.steps, initial=first_step, unit="step", dynamic_ncols=True)

  best: dict[str, float] = {}
  last_eval: dict[str, float] = {}
  last_train: dict[str, float] = {}
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  tokens_per_step = t.batch_size * config.data.seq_len
  timer_start, timer_steps, data_wait = time.perf_counter(), 0, 0.0
  stop_reason = "completed"

  def flush(step: int) -> None:
    """Fetches pending metrics (the only host sync of the loop) and stops on a non-finite loss."""
    nonlocal timer_start, timer_steps, data_wait, last_train
    if not pending:
      return
    mean, bad_step = _mean_metrics(pending)
    pending.clear()
    if bad_step is not None:
      raise NonFiniteLoss(f"the training loss became NaN or infinite at step {bad_step}; the last good checkpoint "
                          f"is kept in {workdir}/checkpoints (try a lower optimizer.learning_rate or "
                          f"optimizer.grad_clip)")
    elapsed = time.perf_counter() - timer_start
    tokens_per_sec = tokens_per_step * timer_steps / max(elapsed, 1e-9)
    mean["perf/tokens_per_sec"] = tokens_per_sec
    mean["perf/step_time"] = elapsed / max(timer_steps, 1)
    mean["perf/mfu"] = flops_token * tokens_per_sec / peak_flops
    mean["perf/data_wait_fraction"] = data_wait / max(elapsed, 1e-9)
    writer.write(step, mean)
    last_train = mean
    if bar is not None:
      bar.set_postfix(loss=f"{mean['train/loss']:.4f}", tok_s=f"{tokens_per_sec:,.0f}", refresh=False)
    timer_start, timer_steps, data_wait = time.perf_counter(), 0, 0.0

  def run_eval(step: int) -> dict[str, float]:
    nonlocal last_eval
    metrics = trainer.evaluate(state.params)
    writer.write(step, metrics)
    if probes.enabled:  # reads the parameters only: the train state, its RNG and the data order are untouched
      probes.write(step, state.params, writer)
    last_eval = metrics
    metric, sign = config.checkpoint.best_metric, (1 if config.checkpoint.best_mode == "min" else -1)
    if not best or sign * metrics[metric] < sign * best[metric]:
      best.update(metrics, step=step)
    return metrics

  # Where the train command gave every thread one heap (big steps), growth of that heap past one call's
  # needs is undone between calls (see host.HeapGuard).
  heap_guard = host.HeapGuard(host.estimated_step_temporaries(config) // 2) if host.one_heap_pays(config) else None
  with Preemption() as preemption:
    step = first_step
    while step < t.steps:
      count = steps_in_call(t, step)
      wait_start = time.perf_counter()
      batches = sharding.global_batches([next(iterator) for _ in range(count)], trainer.mesh)
      data_wait += time.perf_counter() - wait_start
      state, metrics = trainer.train_steps(state, batches)
      if heap_guard is not None:
        if heap_guard.settled_bytes is None:
          jax.block_until_ready(state)  # settled: the first call has compiled and run, its temporaries resident
          heap_guard.settle()
        else:
          heap_guard.check()
      pending.append((step + 1, metrics))
      step += count
      timer_steps += count
      if bar is not None:
        bar.update(count)
      final = step == t.steps
      if step % t.log_every == 0 or final:
        flush(step)
      eval_metrics = None
      if (t.eval_every and step % t.eval_every == 0) or final:
        flush(step)
        eval_metrics = run_eval(step)
      stopping = preemption.reached(step)
      if (t.checkpoint_every and step % t.checkpoint_every == 0) or final or stopping:
        flush(step)  # never save a state whose loss went non-finite
        checkpoint.save(manager, state, iterator, eval_metrics)
      if stopping:
        stop_reason = f"stopped by {preemption.signal_name} at step {step}"
        logging.warning("%s: checkpoint saved, exiting", stop_reason)
        break
      if eval_metrics is not None:
        timer_start, timer_steps, data_wait = time.perf_counter(), 0, 0.0  # eval time is not step time
  manager.wait_until_finished()
  manager.close()
  if bar is not None:
    bar.close()

  summary = {
      "status": stop_reason,
      "step": step,
      "final": {**last_train, **last_eval},
      "best": best,
      "parameters": counts["total"],
      "flops_per_token": flops_token,
      "peak_flops": peak_flops,
      "peak_flops_source": peak_source,
      "wall_time_sec": time.time() - start_time,
      "devices": jax.device_count(),
      "processes": jax.process_count(),
  }
  if lead:
    write_json(os.path.join(workdir, SUMMARY_FILE), summary)
  writer.close()
  return summary

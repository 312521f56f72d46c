"""Trains a population (experiments/population.py): S models as one compiled step, each written as a run of its own.

The step is steps.train_step vmapped over a leading member axis of the train state, the batches and the members'
traced optimizer values; each member reads its own data order (an iterator of its own seed) and every member is
evaluated on the same batches. A member stops alone: at a non-finite loss or gradient its state stays as it was
before that step (a mask inside the step, so nothing waits for the host), and at an evaluation that meets
train.stop_when the host clears its mask. The population ends when every member stopped or the steps ran out.

The workdir holds the population's config.json, summary.json and checkpoints (the stacked state, its bookkeeping
and one data position per member); each member's directory holds what a single run writes (config.json: the
member's own single-run config, metrics.jsonl, summary.json) and member.json, which points readers of its
parameters (evaluate, sample, inspect, restore_from) at its slice of the stacked checkpoint.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from experiments import build, checkpoint, host, population, sharding, targets, terminal
from experiments.data import datasets, pipeline, tokenizers
from experiments.files import CONFIG_FILE, SUMMARY_FILE, read_json, read_metrics, write_json
from experiments.metrics import MetricWriter, Throughput, device_peak_flops
from experiments.optimizer import learning_rate_schedule, make_optimizer, traced_learning_rate_schedule
from experiments.steps import TrainState, eval_step, summarize_eval, train_step
from experiments.validation import ConfigError
from experiments.workdir import resume_changes
from transformer.accounting import flops_per_token, parameter_counts

# Why a member stopped before the population's end (its code in the checkpoint's `stop_code`).
TRAINING, REACHED_TARGET, DIVERGED = 0, 1, 2
ALL_STOPPED = "all_stopped"  # the population's status when every member stopped before train.steps


def member_steps(state: TrainState, active: jax.Array, batches: dict[str, jax.Array], values: dict[str, jax.Array],
                 *, optimizer: ConfigDict, total_steps: int, abstract_params: Any,
                 **step_kwargs) -> tuple[TrainState, jax.Array, dict[str, jax.Array]]:
  """One member's steps over the leading axis of `batches`: steps.train_step with its own optimizer values.

  A step whose loss or gradient norm is not finite, and every step of a member no longer `active`, leaves the
  state as it was; the metrics' `trained` row says which steps changed it.

  Args:
    state: the member's train state.
    active: whether it still trains (a bool scalar).
    batches: its batches, one per step.
    values: its traced optimizer values by key (learning_rate, weight_decay, warmup_steps); the others are the
      config's.
    optimizer: the config's `optimizer` section.
    total_steps: train.steps.
    abstract_params: the parameters' shapes (for the weight-decay mask).
    **step_kwargs: model and accumulation_steps for train_step.
  """
  # The config's numbers, with the member's traced ones in their place: optax takes either.
  settings = types.SimpleNamespace(**{**optimizer.to_dict(), **values})
  schedule = (traced_learning_rate_schedule if "warmup_steps" in values else learning_rate_schedule)(
      settings, total_steps)
  tx = make_optimizer(settings, total_steps, abstract_params, schedule)

  def body(carry, batch):
    old, trains = carry
    new, metrics = train_step(old, batch, tx=tx, schedule=schedule, **step_kwargs)
    trained = trains & jnp.isfinite(metrics["train/loss"]) & jnp.isfinite(metrics["train/grad_norm"])
    kept = jax.tree.map(lambda n, o: jnp.where(trained, n, o), new, old)
    return (kept, trained), {**metrics, "trained": trained}

  (state, active), metrics = jax.lax.scan(body, (state, active), batches)
  return state, active, metrics


class PopulationTraining:
  """A population's stacked train state, its compiled init, train and eval steps, and its members' data orders."""

  def __init__(self, config: ConfigDict, sharded: build.ShardedModel, data: datasets.Data):
    """Compiles nothing yet: each program compiles at its first call."""
    self.config, self.data, self.mesh = config, data, sharded.mesh
    self.size = population.size_of(config)
    self.members = [population.member_config(config, i) for i in range(self.size)]
    t, model = config.train, sharded.model
    single = build.Training(self.members[0], sharded, data)  # one member's layout and optimizer state's tree
    self.axes = sharding.member_axes(sharding.parse_rules(config.mesh.rules))
    stack = functools.partial(sharding.with_members, axes=self.axes)
    self.state_shardings = jax.tree.map(stack, single.state_shardings)
    self.param_shardings = self.state_shardings.params
    self.member_sharding = stack(sharding.replicated(self.mesh))  # one value per member
    self.abstract_state = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct((self.size, *a.shape), a.dtype, sharding=sh),
                                       single.abstract_state, self.state_shardings)
    self.values = {key: jax.device_put(np.asarray(v, np.float32), self.member_sharding)
                   for key, v in population.traced_values(config).items()}
    init = functools.partial(build.initial_train_state, model=model, tx=single.tx,
                             example_tokens_BL=sharded.example_tokens_BL)
    self._init = jax.jit(jax.vmap(init), out_shardings=self.state_shardings)
    steps = functools.partial(member_steps, optimizer=config.optimizer, total_steps=t.steps,
                              abstract_params=sharded.abstract_params, model=model,
                              accumulation_steps=config.optimizer.accumulation_steps)
    replicated = sharding.replicated(self.mesh)
    self.train_steps = jax.jit(
        jax.vmap(steps),
        in_shardings=(self.state_shardings, self.member_sharding,
                      sharding.population_batch_sharding(self.mesh, self.axes),
                      {key: self.member_sharding for key in self.values}),
        out_shardings=(self.state_shardings, self.member_sharding, replicated), donate_argnums=0)
    self.eval_batch_sharding = sharding.shared_batch_sharding(self.mesh, self.axes)
    self.eval_step = jax.jit(jax.vmap(functools.partial(eval_step, model=model), in_axes=(0, None)),
                             in_shardings=(self.param_shardings, self.eval_batch_sharding), out_shardings=replicated)

  def initial_state(self) -> TrainState:
    """The members' train states at step 0, stacked: member i as the single run of its seed starts."""
    seeds = np.asarray([m.train.seed for m in self.members], np.uint32)
    return self._init(seeds)

  def new_iterators(self) -> list[Any]:
    """Each member's iterator of training batches (its own seed's order), at the start."""
    # One process trains a population (validation says so), so each iterator reads the whole batch.
    return [pipeline.train_iterator(self.data.train, batch_size=m.train.batch_size, seed=m.train.seed,
                                    process_index=0, process_count=1, worker_count=m.data.worker_count,
                                    prefetch_batches=pipeline.prefetch_for(m.train.steps_per_call))
            for m in self.members]

  def batches(self, iterators: list[Any], count: int) -> dict[str, jax.Array]:
    """The next `count` batches of every member, as arrays [members, count, batch, ...] on the mesh."""
    local = [[next(it) for _ in range(count)] for it in iterators]
    names = local[0][0]
    stacked = {name: np.stack([np.stack([b[name] for b in member]) for member in local]) for name in names}
    batch_sharding = sharding.population_batch_sharding(self.mesh, self.axes)
    return {name: jax.device_put(value, batch_sharding) for name, value in stacked.items()}

  def evaluate(self, params: Any, evaluation: build.Evaluation) -> list[dict[str, float]]:
    """Every member's eval metrics over the same batches as a single run's evaluation."""
    totals = None
    for index, local_batch in enumerate(evaluation.batches):
      if evaluation.max_batches and index >= evaluation.max_batches:
        break
      batch = {name: jax.device_put(value, self.eval_batch_sharding) for name, value in local_batch.items()}
      sums = self.eval_step(params, batch)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    return [summarize_eval({k: float(v[i]) for k, v in totals.items()}) for i in range(self.size)]


def _is_done(summary: dict | None, t: ConfigDict, size: int) -> bool:
  """Whether a workdir's summary is already this population's result: it completed train.steps, or every member
  stopped within them, under the same stop_when."""
  if (not summary or summary.get("stop_when", "") != targets.canonical(t.stop_when)
      or len(summary.get("members", ())) != size):
    return False
  if summary.get("status") == "completed":
    return summary.get("step") == t.steps
  return summary.get("status") == ALL_STOPPED and summary["step"] <= t.steps


def _disk_tree(state: TrainState, active: Any, stop_code: Any, stop_step: Any) -> dict[str, Any]:
  """What a population's checkpoint holds: the train state's leaves as a single run saves them (each with a member
  axis first, so that a member's parameters read as `params` do), and why and when each member stopped."""
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": state.rng,
          "active": active, "stop_code": stop_code, "stop_step": stop_step}


def _start(config: ConfigDict, workdir: str, training: PopulationTraining, abstract_params: Any,
           iterators: list[Any]) -> tuple[dict[str, Any], int, list[int]]:
  """The stacked state to train from: the newest checkpoint that restores (the iterators moved to its place), else
  step 0 (every member from restore_from's params, when given); its step; and the newer steps that did not restore."""
  member_ints = jax.ShapeDtypeStruct((training.size,), jnp.int32, sharding=training.member_sharding)
  abstract = _disk_tree(training.abstract_state,
                        jax.ShapeDtypeStruct((training.size,), jnp.bool_, sharding=training.member_sharding),
                        member_ints, member_ints)
  directory = os.path.join(workdir, checkpoint.CHECKPOINTS)
  if os.path.isdir(directory):
    manager = checkpoint.make_manager(workdir, read_only=True)
    try:
      steps = manager.all_steps()
      if steps:
        tree, step, failed = checkpoint.restore_newest(
            directory, steps, lambda at: checkpoint.restore_population(manager, at, abstract, iterators))
        logging.info("resumed the population from step %d of %s", step, workdir)
        return tree, step, failed
    finally:
      manager.close()
  state = training.initial_state()
  if config.checkpoint.restore_from:
    params, step = checkpoint.restore_params(config.checkpoint.restore_from, abstract_params)
    stacked = jax.tree.map(lambda p, sh: jax.device_put(jnp.broadcast_to(p, (training.size, *p.shape)), sh),
                           params, training.param_shardings)
    state = state.replace(params=stacked)
    logging.info("initialized every member's params from %s step %d", config.checkpoint.restore_from, step)
  zeros = jax.device_put(np.zeros(training.size, np.int32), training.member_sharding)
  ones = jax.device_put(np.ones(training.size, bool), training.member_sharding)
  return _disk_tree(state, ones, zeros, zeros), 0, []


def _write_run_files(config: ConfigDict, workdir: str, dirs: list[str], members: list[ConfigDict],
                     data: datasets.Data) -> None:
  """The population's config and member list, and in each member's directory what makes it a run to read."""
  write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())
  write_json(os.path.join(workdir, population.POPULATION_FILE), {"member_dirs": [os.path.abspath(d) for d in dirs]})
  for index, (member_dir, member) in enumerate(zip(dirs, members)):
    os.makedirs(member_dir, exist_ok=True)
    write_json(os.path.join(member_dir, CONFIG_FILE), member.to_dict())
    write_json(os.path.join(member_dir, population.MEMBER_FILE),
               {"population": os.path.abspath(workdir), "member": index})
    if data.tokenizer is not None:
      tokenizers.save_atomically(data.tokenizer, os.path.join(member_dir, tokenizers.TOKENIZER_DIR))


class MemberLogs:
  """Each member's metrics.jsonl, last train metrics and evaluations, and why it stopped."""

  def __init__(self, dirs: list[str], first_step: int, tree: dict[str, Any], ck: ConfigDict,
               throughput: Throughput):
    from experiments.runner import EvalRecord  # pylint: disable=g-import-not-at-top  (the runner imports this)

    self.writers = [MetricWriter(d) for d in dirs]
    self.throughput = throughput
    self.pending: list[dict[str, jax.Array]] = []
    self.pending_first: list[int] = []
    self.active = np.array(jax.device_get(tree["active"]))  # copies: the host changes them
    self.stop_code = np.array(jax.device_get(tree["stop_code"]))
    self.stop_step = np.array(jax.device_get(tree["stop_step"]))
    self.evals = [EvalRecord(ck) for _ in dirs]
    self.last_train: list[dict[str, float]] = []
    for member_dir, evals in zip(dirs, self.evals):
      # What the member logged up to the step the population starts from: its best evaluation survives a resume.
      earlier = [row for row in read_metrics(member_dir) if row["step"] <= first_step]
      for row in earlier:
        if evals.metric in row:
          evals.add(row["step"], {k: v for k, v in row.items() if k.startswith("eval/")})
      self.last_train.append(next(({k: v for k, v in row.items() if k != "step"} for row in reversed(earlier)
                                   if "train/loss" in row), {}))

  def add(self, first_step: int, count: int, metrics: dict[str, jax.Array]) -> None:
    self.pending.append(metrics)
    self.pending_first.append(first_step)
    self.throughput.steps += count

  def flush(self) -> None:
    """Fetches the pending metrics and writes each training member's means over the steps it trained; a member
    whose loss or gradient became non-finite gets a `train/nonfinite` row at that step and stops."""
    if not self.pending:
      return
    values = jax.device_get(self.pending)
    steps = np.concatenate([first + np.arange(m["trained"].shape[1]) for first, m in zip(self.pending_first, values)])
    perf = self.throughput.metrics()
    for i in np.flatnonzero(self.active):
      column = {k: np.concatenate([m[k][i] for m in values]) for k in values[0]}
      trained = column.pop("trained")
      if trained.any():
        row = {k: float(np.mean(v[trained])) for k, v in column.items() if k != "train/tokens"}
        row["train/learning_rate"] = float(column["train/learning_rate"][trained][-1])
        row.update(perf)
        self.writers[i].write(int(steps[trained][-1]), row)
        self.last_train[i] = row
      if not trained.all():
        bad = int(steps[np.argmin(trained)])
        self.writers[i].write(bad, {"train/nonfinite": 1.0})
        self.active[i], self.stop_code[i], self.stop_step[i] = False, DIVERGED, bad
        logging.warning("member %d: the training loss or gradient became NaN or infinite at step %d; it stops with "
                        "its state after step %d (the other members train on)", i, bad, bad - 1)
    self.pending.clear()
    self.pending_first.clear()
    self.throughput.restart()

  def evaluated(self, step: int, metrics: list[dict[str, float]], target: targets.Target | None) -> None:
    """Writes each training member's evaluation; one that meets the target stops."""
    for i in np.flatnonzero(self.active):
      self.writers[i].write(step, metrics[i])
      self.evals[i].add(step, metrics[i])
      if target is not None and target.met(metrics[i]):
        self.active[i], self.stop_code[i], self.stop_step[i] = False, REACHED_TARGET, step

  def close(self) -> None:
    for writer in self.writers:
      writer.close()


def run(config: ConfigDict, workdir: str, data: datasets.Data, progress: bool, start_time: float,
        member_dirs: list[str] | None, eval_lines: bool = False,
        on_member_evaluation: Callable[[int, int, dict[str, float]], None] | None = None) -> dict[str, Any]:
  """Trains (or resumes) the population of a resolved, validated config in a locked workdir; returns its summary.

  The summary (also workdir/summary.json) has the population's `status` ("completed": train.steps ran;
  "all_stopped": every member stopped before; or "stopped by SIGTERM at step N", resumed by a rerun), its `step`,
  `member_dirs` and `members`: each member's summary as its directory's summary.json holds it, a single run's
  with the status "completed", "reached_target" (with steps_to_target), "diverged" (with diverged_at: its state
  is that of the step before) or the population's signal. With eval_lines, each evaluation prints one line per
  member it evaluated (terminal.eval_line), through the progress bar, and on_member_evaluation (if given) is
  called with each member evaluated, the step and its metrics.

  Raises:
    ConfigError: member_dirs is not one directory per member, or the checkpoint is past train.steps.
  """
  from experiments.runner import run_facts, steps_in_call  # pylint: disable=g-import-not-at-top  (the runner imports this)

  t = config.train
  size = population.size_of(config)
  try:
    dirs = population.member_dirs(workdir, size, member_dirs)
  except ValueError as error:
    raise ConfigError(str(error)) from None
  finished = read_json(os.path.join(workdir, SUMMARY_FILE))
  if _is_done(finished, t, size):
    logging.warning("%s: the population already ended (%s at step %d): nothing to do", workdir, finished["status"],
                    finished["step"])
    return finished
  target = targets.parse_target(t.stop_when)
  sharded = build.ShardedModel(config)
  evaluation = build.Evaluation(config, sharded, data)
  training = PopulationTraining(config, sharded, data)
  iterators = training.new_iterators()
  tree, first_step, unreadable = _start(config, workdir, training, sharded.abstract_params, iterators)
  if first_step > t.steps:
    raise ConfigError(f"train.steps={t.steps} is below step {first_step} of the checkpoint in {workdir}: raise it "
                      f"to continue that population, or use a new --workdir")
  for change in resume_changes(workdir, config) if first_step else []:
    logging.warning("resuming %s with %s", workdir, change)
  checkpoint.set_aside(workdir, unreadable)
  _write_run_files(config, workdir, dirs, training.members, data)

  counts = parameter_counts(sharded.model_config)
  flops_token = flops_per_token(sharded.model_config, config.data.seq_len)
  peak_flops, peak_source = device_peak_flops(sharded.model_config.dtype)
  # perf/ metrics are a member's: its tokens per second of the population's wall time.
  throughput = Throughput(t.batch_size * config.data.seq_len, flops_token, peak_flops)
  logs = MemberLogs(dirs, first_step, tree, config.checkpoint, throughput)
  for writer, member in zip(logs.writers, training.members):  # each member is a run of its own in TensorBoard
    writer.write_config(first_step, member)
  state = TrainState(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"], rng=tree["rng"])
  active = tree["active"]
  bar = None
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top

    bar = tqdm.tqdm(total=t.steps, initial=first_step, unit="step", dynamic_ncols=True)
  # A member's best checkpoint is not the population's: a population keeps its latest ones only.
  kept = ConfigDict(config.checkpoint.to_dict())
  kept.keep_best = 0
  manager = checkpoint.make_manager(workdir, kept)
  stop_reason, step = "completed", first_step
  try:
    with host.Preemption(jax.process_count()) as preemption:
      while step < t.steps and logs.active.any():
        count = steps_in_call(t, step)
        with throughput.waiting_for_data():
          batches = training.batches(iterators, count)
        state, active, metrics = training.train_steps(state, active, batches, training.values)
        logs.add(step + 1, count, metrics)
        if bar is not None:
          bar.update(count)
        step += count
        final = step == t.steps
        evaluating = bool(t.eval_every and step % t.eval_every == 0) or final
        saving = bool(t.checkpoint_every and step % t.checkpoint_every == 0) or final
        if step % t.log_every == 0 or final or evaluating or saving:
          logs.flush()
        if evaluating and logs.active.any():
          evaluated = np.flatnonzero(logs.active)
          member_metrics = training.evaluate(state.params, evaluation)
          logs.evaluated(step, member_metrics, target)
          for i in evaluated if on_member_evaluation is not None else []:
            on_member_evaluation(int(i), step, member_metrics[i])
          for i in evaluated if eval_lines else []:
            terminal.say(terminal.eval_line(step, t.steps, member_metrics[i],
                                            logs.last_train[i].get("perf/tokens_per_sec"), time.time() - start_time,
                                            member=int(i)), bar)
          # The host knows every member's mask right after a flush: a member that met its target stops here.
          active = jax.device_put(logs.active, training.member_sharding)
        ending = None if logs.active.any() else ALL_STOPPED
        if ending is None and preemption.reached(step):
          ending = f"stopped by {preemption.signal_name} at step {step}"
        if saving or ending:
          logs.flush()
          active, codes, stops = (jax.device_put(v, training.member_sharding)
                                  for v in (logs.active, logs.stop_code, logs.stop_step))
          checkpoint.save_population(manager, step, _disk_tree(state, active, codes, stops), iterators)
        if ending:
          stop_reason = ending
          logging.info("%s at step %d: checkpoint saved, exiting", ending, step)
          break
        if evaluating:
          throughput.restart()  # eval time is not step time
  finally:
    checkpoint.finish(manager, workdir)
    if bar is not None:
      bar.close()
  if not logs.active.any() and stop_reason == "completed" and step < t.steps:
    stop_reason = ALL_STOPPED  # resumed with every member already stopped

  trained_steps = np.asarray(jax.device_get(state.step))
  summaries = []
  for i, member_dir in enumerate(dirs):
    code = logs.stop_code[i]
    status = {REACHED_TARGET: "reached_target", DIVERGED: "diverged"}.get(
        int(code), "completed" if stop_reason in ("completed", ALL_STOPPED) else stop_reason)
    summary = {
        "status": status,
        "step": int(trained_steps[i]),
        "final": {**logs.last_train[i], **logs.evals[i].last},
        "best": logs.evals[i].best,
        **run_facts(counts, flops_token, peak_flops, peak_source, start_time, t),
        "population": os.path.abspath(workdir),
        "member": i,
    }
    if target is not None:
      summary["steps_to_target"] = int(logs.stop_step[i]) if code == REACHED_TARGET else None
    if code == DIVERGED:
      summary["diverged_at"] = int(logs.stop_step[i])
    write_json(os.path.join(member_dir, SUMMARY_FILE), summary)
    logs.writers[i].write_hparams(summary["step"], training.members[i],
                                  [k for k in summary["final"] if k.startswith("eval/")], start_time,
                                  succeeded=status in ("completed", "reached_target"))
    summaries.append(summary)
  logs.close()
  result = {"status": stop_reason, "step": step, "member_dirs": [os.path.abspath(d) for d in dirs],
            "members": summaries, "stop_when": targets.canonical(t.stop_when),
            "wall_time_sec": time.time() - start_time}
  write_json(os.path.join(workdir, SUMMARY_FILE), result)
  return result

"""The training loop: trains, evaluates and checkpoints the run a config describes, or resumes it.

`train_and_evaluate(config, workdir)` is the one entry; experiments/train.py wraps it in flags. What a run
builds once (its data, the model on the mesh, evaluation, training) is in experiments/build.py. The loop
syncs with the host only at the steps that log, evaluate or checkpoint. A config with population.size > 1 trains
its members as one vmapped step in experiments/population_loop.py instead, after the same checks and lock.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from experiments import build, checkpoint, host, population, sharding, targets, terminal, validation
from experiments.data import datasets, tokenizers
from experiments.checkpoint import CheckpointError
from experiments.files import CONFIG_FILE, SUMMARY_FILE, read_json, read_metrics, write_json
from experiments.inspection import training_probes
from experiments.metrics import MetricWriter, NonFiniteLoss, Throughput, TrainLog, device_peak_flops
from experiments.steps import TrainState
from experiments.validation import ConfigError
from experiments.workdir import made_for_the_run, resume_changes, resume_conflict, workdir_lock
from transformer.accounting import flops_per_token, parameter_counts


def steps_in_call(train: ConfigDict, step: int) -> int:
  """Steps in the compiled call after `step`: up to train.steps_per_call, ending at the next step that
  logs, evaluates or checkpoints, and at the last. A function of the step alone, so a resumed run makes
  the same calls as one that never stopped."""
  end = min(step + train.steps_per_call, train.steps)
  for every in (train.log_every, train.eval_every, train.checkpoint_every):
    if every:
      end = min(end, (step // every + 1) * every)
  return end - step


class EvalRecord:
  """The last evaluation and the best one by checkpoint.best_metric (with its step)."""

  def __init__(self, ck: ConfigDict):
    self.metric, self.sign = ck.best_metric, (1 if ck.best_mode == "min" else -1)
    self.last: dict[str, float] = {}
    self.best: dict[str, float] = {}

  def add(self, step: int, metrics: dict[str, float]) -> None:
    self.last = metrics
    if not self.best or self.sign * metrics[self.metric] < self.sign * self.best[self.metric]:
      self.best.update(metrics, step=step)


def train_and_evaluate(config: ConfigDict, workdir: str, progress: bool = False,
                       on_evaluation: Callable[[int, dict[str, float]], bool] | None = None,
                       member_dirs: list[str] | None = None, eval_lines: bool = False,
                       on_member_evaluation: Callable[[int, int, dict[str, float]], None] | None = None
                       ) -> dict[str, Any]:
  """Runs (or resumes) the training a config describes and returns the final summary (also in summary.json).

  The summary's `status` says why the run ended at its `step`, each way with a checkpoint of that step:
  "completed" (train.steps trained), "reached_target" (an evaluation met train.stop_when), "pruned"
  (on_evaluation asked to stop) or "stopped by SIGTERM at step N" (or SIGINT; a rerun resumes). `stop_when` is the
  target's canonical text ("" without one); a run with a target also records `steps_to_target`, the step of the
  first evaluation that met it, or None when none did (censored at `step`). It is None exactly when the status
  is not "reached_target".

  A workdir whose summary.json completed train.steps, or reached its target (at a step within train.steps), under
  this config's stop_when is left untouched and its summary returned: raising train.steps continues a completed
  run, not one that reached its target. Any other workdir continues from its newest checkpoint: a completed run
  given a new target, or one that reached another target, first looks in the evaluations it logged up to that
  checkpoint (an earlier one that met the new target ends it there at once, with that evaluation's step as
  steps_to_target), then trains on towards it; pruned and stopped runs train on. This rule also finishes a run
  stopped after the evaluation that met its target but before its summary.

  Args:
    config: the run config (validated here).
    workdir: the run's directory, made if missing.
    progress: show a progress bar (process 0).
    eval_lines: print one line per evaluation on stdout (process 0; see terminal.eval_line), through the bar.
    on_evaluation: called on process 0 after every evaluation of the loop, after the target check, with the step
      and the eval metrics; True ends the run there, checkpointed, with status "pruned" (unless the target was
      met there too, or the step was the last one: then the run reached its target or completed anyway). On
      several processes its answer on process 0 holds for all. A population takes none (its members are not
      pruned).
    member_dirs: a population's member directories (see population_loop.run).
    on_member_evaluation: a population's: called after every evaluation with each member it evaluated, the step
      and that member's eval metrics (a sweep reports them to the member's trial).

  Raises:
    ConfigError: the config is invalid, or its model or data differ from the run saved in the workdir; both are
      found before any data are prepared, except a vocabulary only the data tell (nothing was written).
    WorkdirLocked: another live run uses the workdir.
    OSError: the workdir cannot be made or written (read-only, not a folder, no space...).
    NonFiniteLoss: the loss became NaN or infinite (the last good checkpoint stays, complete).
    CheckpointError: none of the workdir's checkpoints restores (nothing was written).
  """
  errors = validation.validate(config)
  if errors:
    raise ConfigError("\n".join(errors))
  size = population.size_of(config)
  if size > 1 and on_evaluation is not None:
    raise ValueError("on_evaluation prunes a single run: a population's members are not pruned")
  # Before the data: a changed data section would otherwise prepare a whole new dataset only to be refused.
  conflict = resume_conflict(workdir, config)
  if conflict:
    raise ConfigError(conflict)
  start_time = time.time()
  # Made and locked before the data too, so a workdir that cannot be written fails at once.
  with made_for_the_run(workdir), workdir_lock(workdir, jax.process_index()):
    data = build.load_data(config)
    config = validation.resolve(config, data.vocab_size)
    if config.model.vocab_size < data.vocab_size:
      raise ConfigError(f"model.vocab_size={config.model.vocab_size} is smaller than the data's {data.vocab_size} "
                        f"tokens: set 0 to follow the data")
    # Again with what the data resolved (a character vocabulary), and now under the lock.
    conflict = resume_conflict(workdir, config)
    if conflict:
      raise ConfigError(conflict)
    if size > 1:
      from experiments import population_loop  # pylint: disable=g-import-not-at-top  (it imports this module)

      return population_loop.run(config, workdir, data, progress, start_time, member_dirs, eval_lines,
                                 on_member_evaluation)
    finished = read_json(os.path.join(workdir, SUMMARY_FILE))
    if _is_done(finished, config.train):
      if finished["status"] == "completed":
        logging.warning("%s already completed its %d steps: nothing to do (raise train.steps to continue it)",
                        workdir, config.train.steps)
      else:
        logging.warning("%s already reached its target %s at step %d: nothing to do (change train.stop_when to "
                        "continue it)", workdir, finished["stop_when"], finished["steps_to_target"])
      return finished
    return _run(config, workdir, data, progress, start_time, on_evaluation, eval_lines)


def run_facts(counts: dict[str, int], flops_token: float, peak_flops: float, peak_source: str, start_time: float,
              t: ConfigDict) -> dict[str, Any]:
  """What every summary (a run's, a population member's) records besides its result: the model's size and FLOPs,
  the device peak, the wall time since start_time, the devices and processes, and the canonical target."""
  return {"parameters": counts["total"], "flops_per_token": flops_token, "peak_flops": peak_flops,
          "peak_flops_source": peak_source, "wall_time_sec": time.time() - start_time,
          "devices": jax.device_count(), "processes": jax.process_count(), "stop_when": targets.canonical(t.stop_when)}


def _is_done(summary: dict | None, t: ConfigDict) -> bool:
  """Whether a workdir's summary is already the result of a run with these train settings: it completed
  train.steps, or reached its target within them, under the same stop_when (older summaries have none)."""
  if not summary or summary.get("stop_when", "") != targets.canonical(t.stop_when):
    return False
  if summary.get("status") == "completed":
    return summary.get("step") == t.steps
  return summary.get("status") == "reached_target" and summary["step"] <= t.steps


def _from_the_lead(value: int) -> int:
  """Process 0's value on every process: what only it read (metrics.jsonl) or was told (on_evaluation)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def _restore_newest(workdir: str, training: build.Training, iterator: Any) -> tuple[TrainState | None, list[int]]:
  """The newest checkpoint of workdir that restores (the iterator moved to its place), or None if it has none;
  and the newer steps that failed to read (each reported in one warning line)."""
  directory = os.path.join(workdir, checkpoint.CHECKPOINTS)
  if not os.path.isdir(directory):
    return None, []
  manager = checkpoint.make_manager(workdir, read_only=True)  # nothing in the workdir changes until it restored
  try:
    steps = manager.all_steps()
    if not steps:
      return None, []
    if checkpoint.holds_params_only(workdir, max(steps)):
      raise ConfigError(f"{workdir} holds a model's parameters alone (an imported one), no run to resume: train "
                        f"from it in a new --workdir with --config.checkpoint.restore_from={workdir}")
    state, step, failed = checkpoint.restore_newest(
        directory, steps, lambda at: checkpoint.restore(manager, at, training.abstract_state, iterator))
  except CheckpointError as error:
    # orbax raises these itself when the tree it is asked for differs from the saved one; a file that does
    # not read comes wrapped in a bare Exception.
    if all(isinstance(e, (ValueError, KeyError, TypeError)) for e in error.errors.values()):
      latest = max(error.errors)
      raise ConfigError(f"the checkpoint at step {latest} in {workdir} does not fit this config's train state (were "
                        f"optimizer settings such as grad_clip changed?): {checkpoint.error_line(error.errors[latest])}"
                        ) from None
    raise
  finally:
    manager.close()
  logging.info("resumed from step %d of %s", step, workdir)
  return state, failed


def _start_state(config: ConfigDict, workdir: str, training: build.Training,
                 iterator: Any) -> tuple[TrainState, list[int]]:
  """The state to train from: the newest checkpoint that restores, else step 0 (from restore_from's params);
  and the newer checkpoints that did not restore."""
  state, failed = _restore_newest(workdir, training, iterator)
  if state is not None:
    return state, failed
  state = training.initial_state()
  if config.checkpoint.restore_from:
    params, step = checkpoint.restore_params(config.checkpoint.restore_from, training.abstract_state.params)
    state = state.replace(params=params)
    logging.info("initialized params from %s step %d", config.checkpoint.restore_from, step)
  return state, failed


def _run(config: ConfigDict, workdir: str, data: datasets.Data, progress: bool, start_time: float,
         on_evaluation: Callable[[int, dict[str, float]], bool] | None, eval_lines: bool) -> dict[str, Any]:
  t, lead = config.train, jax.process_index() == 0
  target = targets.parse_target(t.stop_when)
  sharded = build.ShardedModel(config)
  evaluation = build.Evaluation(config, sharded, data)
  training = build.Training(config, sharded, data)
  try:
    # The data's own tokenizer, not the one saved in the workdir: every process has it, on any file system.
    tokenizer = data.tokenizer or tokenizers.TokenIds(sharded.model_config.vocab_size)
    # The default probe draws a built-in task's validation example (data without a tokenizer of their own).
    probes = training_probes.TrainingProbes(config, sharded.model, tokenizer, sharding.replicated(sharded.mesh),
                                            validation=data.validation if data.tokenizer is None else None)
  except ValueError as error:
    raise ConfigError(str(error)) from error
  iterator = training.new_iterator()
  state, unreadable = _start_state(config, workdir, training, iterator)
  first_step = int(jax.device_get(state.step))
  if first_step > t.steps:
    raise ConfigError(f"train.steps={t.steps} is below step {first_step} of the checkpoint in {workdir}: raise it "
                      f"to continue that run, or use a new --workdir")
  # Written only once the restore succeeded: a failed resume leaves the workdir as it found it.
  if lead:
    for change in resume_changes(workdir, config) if first_step else []:
      logging.warning("resuming %s with %s", workdir, change)
    checkpoint.set_aside(workdir, unreadable)
    write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())
    if data.tokenizer is not None:
      # Beside the checkpoints, so sampling and evaluation decode exactly as training encoded.
      tokenizers.save_atomically(data.tokenizer, os.path.join(workdir, tokenizers.TOKENIZER_DIR))
  if unreadable and jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices("unreadable checkpoints set aside")  # before any manager lists the steps

  counts = parameter_counts(sharded.model_config)
  flops_token = flops_per_token(sharded.model_config, config.data.seq_len)
  peak_flops, peak_source = device_peak_flops(sharded.model_config.dtype)
  writer = MetricWriter(workdir, enabled=lead)
  writer.write_config(first_step, config)
  bar = None
  if progress and lead:
    import tqdm  # pylint: disable=g-import-not-at-top

    bar = tqdm.tqdm(total=t.steps, initial=first_step, unit="step", dynamic_ncols=True)
  evals = EvalRecord(config.checkpoint)
  throughput = Throughput(t.batch_size * config.data.seq_len, flops_token, peak_flops)
  train_log = TrainLog(writer, throughput, bar, workdir)
  # Where the train command gave every thread one heap (big steps), growth of that heap past one call's
  # needs is undone between calls (see host.HeapGuard).
  heap_guard = host.HeapGuard(host.estimated_step_temporaries(config) // 2) if host.one_heap_pays(config) else None
  # What the run logged up to the step it starts from: the best evaluation so far survives a resume.
  earlier = [row for row in read_metrics(workdir) if row["step"] <= first_step] if lead else []
  for row in earlier:
    if evals.metric in row:
      evals.add(row["step"], {k: v for k, v in row.items() if k.startswith("eval/")})
  # An evaluation up to the restored step that met the target (of a run stopped before its summary, or one
  # reached under another target) ends the run where it is: nothing is trained.
  met_at = _from_the_lead(next((row["step"] for row in earlier if target is not None and target.met(row)), -1))
  steps_to_target = met_at if met_at >= 0 else None
  stop_reason = "completed" if steps_to_target is None else "reached_target"
  manager = checkpoint.make_manager(workdir, config.checkpoint)
  try:
    with host.Preemption(jax.process_count()) as preemption:
      step = first_step
      while step < t.steps and steps_to_target is None:
        count = steps_in_call(t, step)
        with throughput.waiting_for_data():
          batches = sharding.global_batches([next(iterator) for _ in range(count)], sharded.mesh)
        state, metrics = training.train_steps(state, batches)
        if heap_guard is not None:
          heap_guard.after_call(lambda: jax.block_until_ready(state))  # pylint: disable=cell-var-from-loop
        train_log.add(step + 1, count, metrics)
        step += count
        final = step == t.steps
        if step % t.log_every == 0 or final:
          train_log.flush(step)
        eval_metrics = None
        ending = None  # why the run ends at this step, if it does: its target, on_evaluation or a signal
        if (t.eval_every and step % t.eval_every == 0) or final:
          train_log.flush(step)
          eval_metrics = evaluation.evaluate(state.params)
          writer.write(step, eval_metrics)
          if eval_lines and lead:
            terminal.say(terminal.eval_line(step, t.steps, eval_metrics, train_log.last.get("perf/tokens_per_sec"),
                                            time.time() - start_time), bar)
          if probes.enabled:  # reads the parameters only: the train state, its RNG and the data order are untouched
            probes.write(step, state.params, writer)
          evals.add(step, eval_metrics)
          if target is not None and target.met(eval_metrics):
            steps_to_target, ending = step, "reached_target"
          prune = lead and on_evaluation is not None and bool(on_evaluation(step, dict(eval_metrics)))
          if _from_the_lead(prune) and ending is None and not final:
            ending = "pruned"
        # Asked after every call on every process (on several it is a sync point); a target or on_evaluation that
        # ends the run at this step goes first.
        stopping = preemption.reached(step) and ending is None
        if stopping:
          ending = f"stopped by {preemption.signal_name} at step {step}"
        if (t.checkpoint_every and step % t.checkpoint_every == 0) or final or ending:
          train_log.flush(step)  # never save a state whose loss went non-finite
          checkpoint.save(manager, state, iterator, eval_metrics)
        if ending:
          stop_reason = ending
          if stopping:
            logging.warning("%s: checkpoint saved, exiting", ending)
          else:
            logging.info("%s at step %d: checkpoint saved, exiting", ending, step)
          break
        if eval_metrics is not None:
          throughput.restart()  # eval time is not step time
  except NonFiniteLoss as error:
    manager.wait_until_finished()
    kept = manager.latest_step()
    raise NonFiniteLoss(f"{error}; a rerun resumes from its last complete checkpoint, step {kept}" if kept is not None
                        else f"{error}; no checkpoint was saved before it") from None
  finally:
    # Every way out (the end, a NaN, any error, a signal) lets pending asynchronous saves finish first: an exit
    # during one leaves only a *.orbax-checkpoint-tmp folder, and orbax's threads then find their loop closed.
    checkpoint.finish(manager, workdir)
    if bar is not None:
      bar.close()
  if step == first_step:
    # It had ended (at train.steps or at its target) and saved its last checkpoint, but wrote no summary for this
    # config: that summary now, from what the run logged and one evaluation of the final parameters, writing no
    # metrics twice.
    train_log.last = next(({k: v for k, v in row.items() if k != "step"} for row in reversed(earlier)
                           if "train/loss" in row), {})
    evals.last = evaluation.evaluate(state.params)

  summary = {
      "status": stop_reason,
      "step": step,
      "final": {**train_log.last, **evals.last},
      "best": evals.best,
      **run_facts(counts, flops_token, peak_flops, peak_source, start_time, t),
  }
  if target is not None:
    summary["steps_to_target"] = steps_to_target
  if lead:
    write_json(os.path.join(workdir, SUMMARY_FILE), summary)
  writer.write_hparams(step, config, [k for k in summary["final"] if k.startswith("eval/")], start_time,
                       succeeded=stop_reason in ("completed", "reached_target"))
  writer.close()
  return summary

"""Runs a sweep: validates every trial, then workers ask the study for trials and run them until it is covered.

One worker runs in this process, or several in spawned processes that die with it (host.die_with_parent); they
take trials one at a time under a lock in SWEEPDIR (`studies.queue_lock`) and run each to its end (trials.run_trial),
or with `vectorize` a population of trials at a time (studies.ask_population, trials.run_population).
What makes a rerun of the same sweep safe is told where users read it, in the command's docstring
(experiments/sweep.py).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys

from ml_collections import ConfigDict

from experiments import host
from experiments.files import SUMMARY_FILE, TRIAL_FILE, read_json, write_json
from experiments.sweeps import space, studies, trials


class SweepError(ValueError):
  """The sweep config or one of its trials' configs is invalid; one line per problem."""


class Unfinished(RuntimeError):
  """The workers ended with trials left unfinished (see trials.unfinished); `counts` are the study's states."""

  def __init__(self, message: str, counts: dict[str, int]):
    super().__init__(message)
    self.counts = counts


def raise_interrupt(signum, frame):
  """A signal handler that stops the sweep as Ctrl-C does (trials save a checkpoint and are requeued)."""
  del signum, frame
  raise KeyboardInterrupt


def work(sweep: ConfigDict, sweepdir: str, storage_url: str, worker_index: int = 0) -> int:
  """One worker: asks for trials and runs them until the sweep is covered; returns the trials it trained.

  Args:
    sweep: the sweep config.
    sweepdir: the sweep's workdir.
    storage_url: the Optuna storage.
    worker_index: this worker's index on this machine (seeds random and TPE samplers).

  Returns:
    The number of trials this worker trained (or tried to).
  """
  if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # SIGTERM outside training stops like Ctrl-C
    signal.signal(signal.SIGTERM, raise_interrupt)
  study = studies.open_study(sweep, storage_url, worker_index)
  trained, idle = 0, 0
  planned = studies.planned_trials(sweep)
  max_idle = planned + 5 if sweep.sampler == "grid" else 3 * max(planned, 1)
  try:
    while True:
      trials.recover_stale(study, sweep, sweepdir)
      with studies.queue_lock(sweepdir):  # one local worker at a time queues and takes a trial
        if studies.finished(study, sweep):
          break
        if idle > max_idle:  # every trial asked for lately was done already: the sampler has nothing new
          logging.warning("worker %d: %d trials in a row were already done; stopping", worker_index, idle)
          break
        group = studies.ask_population(study, sweep) if space.vectorized(sweep) else [study.ask()]
      if space.vectorized(sweep):
        trial_dirs = trials.run_population(study, group, sweep, sweepdir)
      else:
        trial_dirs = [d for d in [trials.run_trial(study, group[0], sweep, sweepdir)] if d is not None]
      if not trial_dirs:
        idle += 1
        continue
      trained, idle = trained + len(trial_dirs), 0
      for trial_dir in trial_dirs:
        print(trial_line(trial_dir, sweep.metric), file=sys.stderr, flush=True)
      print(progress_line(studies.sweep_progress(study, sweep), sweep.name), file=sys.stderr, flush=True)
  except trials.Interrupted as error:
    logging.warning("worker %d stopped: %s; rerun the same command to resume", worker_index, error)
    raise KeyboardInterrupt from None
  return trained


def trial_line(trial_dir: str, metric: str) -> str:
  """One line on a trial that ended: its id, status, metric, steps and wall time (from its files)."""
  record = read_json(os.path.join(trial_dir, TRIAL_FILE)) or {}
  summary = read_json(os.path.join(trial_dir, SUMMARY_FILE)) or {}
  status = record.get("status", "?")
  parts = [f"trial {record.get('id', os.path.basename(trial_dir))}: {status}"]
  value = summary.get("final", {}).get(metric)
  if value is not None:
    parts.append(f"{metric} {value:.4g}")
  if summary.get("step") is not None:
    parts.append(f"step {summary['step']}")
  if summary.get("steps_to_target") is not None:
    parts.append(f"target met at step {summary['steps_to_target']}")
  attempts = [a["wall_sec"] for a in record.get("attempts") or [] if "wall_sec" in a]
  if attempts:
    parts.append(f"{sum(attempts):.0f} s")
  if status == "failed" and record.get("error"):
    parts.append(record["error"].splitlines()[0][:120])
  return ", ".join(parts)


def progress_line(progress: dict, name: str) -> str:
  """The sweep's progress: trials ended of planned, failed, running, and a time left from the mean trial so far.

  The time left assumes that the runs going on (a population is one run) and the one this worker takes next go on
  in parallel, sharing the trials left, each trial at the mean wall time of the trials ended so far.
  """
  line = f"sweep {name}: {progress['done']}/{progress['planned']} trials ended"
  if progress["failed"]:
    line += f" ({progress['failed']} failed)"
  line += f", {progress['running']} running"
  left = progress["planned"] - progress["done"]
  if progress["mean_wall_sec"] and left > 0:
    parallel = progress.get("running_groups", progress["running"]) + 1
    seconds = progress["mean_wall_sec"] * left / min(parallel, left)
    line += f", about {seconds / 60:.0f} min left" if seconds >= 90 else f", about {seconds:.0f} s left"
  return line


def keep_freed_memory(sweep: ConfigDict) -> None:
  """host.keep_freed_memory as for the sweep's base config (a base that does not load is reported later)."""
  try:
    one_heap = host.one_heap_pays(space.load_config_file(sweep.base))
  except (FileNotFoundError, ValueError, TypeError, AttributeError):
    one_heap = False
  host.keep_freed_memory(one_heap)


def _worker_process(sweep_dict: dict, sweepdir: str, storage_url: str, worker_index: int, parent_pid: int) -> None:
  # A parent killed with SIGKILL cannot stop its workers: the kernel sends them SIGTERM instead, which saves
  # the trial in progress and requeues it, so that no orphan trains on while a rerun finds its trial RUNNING.
  host.die_with_parent(parent_pid)
  # Warnings and errors only: a worker's INFO lines (orbax, TFDS) would bury the trials' own messages.
  logging.basicConfig(level=logging.WARNING, format=f"[worker {worker_index}] %(levelname)s %(message)s")
  keep_freed_memory(ConfigDict(sweep_dict))
  try:
    work(ConfigDict(sweep_dict), sweepdir, storage_url, worker_index)
  except KeyboardInterrupt:
    sys.exit(130)  # the parent tells an interrupted worker from a crashed one by this status


def _run_workers(sweep: ConfigDict, sweepdir: str, storage_url: str, workers: int) -> None:
  """Runs `workers` worker processes to their end; a signal to this process stops them all."""
  context = multiprocessing.get_context("spawn")  # fork would copy JAX's threads and state
  processes = [context.Process(target=_worker_process,
                               args=(sweep.to_dict(), sweepdir, storage_url, index, os.getpid()))
               for index in range(workers)]
  for process in processes:
    process.start()
  try:
    for process in processes:
      process.join()
  except KeyboardInterrupt:  # the workers got the signal too if it came from a terminal; make sure
    for process in processes:
      if process.is_alive():
        # SIGTERM, not SIGINT: a process started in the background ignores SIGINT outside training.
        os.kill(process.pid, signal.SIGTERM)
    for process in processes:
      process.join()
    raise
  codes = [process.exitcode for process in processes]
  if any(code == 130 or (code is not None and code < 0) for code in codes):
    raise KeyboardInterrupt  # a worker was stopped by a signal: the sweep is not done
  if any(codes):
    raise RuntimeError(f"sweep workers exited with status {codes}: see their messages above")


def run(sweep: ConfigDict, sweepdir: str, storage_url: str | None = None, workers: int = 1,
        retry: bool = False) -> dict[str, int]:
  """Validates every trial, then runs the sweep with `workers` processes (1: in this process).

  Args:
    sweep: the sweep config.
    sweepdir: the sweep's workdir.
    storage_url: Optuna storage (default: SQLite in sweepdir).
    workers: trials run in parallel, each in its own process.
    retry: run the points of failed trials again (after fixing what made them fail).

  Returns:
    Counts of the study's trials by state (COMPLETE, FAIL, ...) after the run: the sweep is finished.

  Raises:
    SweepError: the sweep or a trial's config is invalid (nothing was run or written).
    KeyboardInterrupt: a signal stopped the sweep (or a worker); rerunning resumes it.
    Unfinished: the workers ended with trials unfinished, trained by other processes or by none.
  """
  errors = space.validate_trials(sweep)
  if errors:
    raise SweepError("\n".join(errors))
  os.makedirs(os.path.join(sweepdir, "trials"), exist_ok=True)
  storage_url = storage_url or studies.default_storage(sweepdir)
  write_json(os.path.join(sweepdir, "sweep.json"), {**sweep.to_dict(), "storage": storage_url})
  study = studies.open_study(sweep, storage_url)
  if retry:
    with studies.queue_lock(sweepdir):
      logging.warning("retrying %d failed trials", studies.retry_failed(study, sweep))
  if workers <= 1:
    work(sweep, sweepdir, storage_url)
  else:
    _run_workers(sweep, sweepdir, storage_url, workers)
  trials.recover_stale(study, sweep, sweepdir)  # a trial whose process died is never counted RUNNING
  message = trials.unfinished(study, sweepdir)
  if message:
    raise Unfinished(message, studies.state_counts(study))
  return studies.state_counts(study)


def run_command(sweep: ConfigDict, sweepdir: str, storage_url: str | None, workers: int, retry: bool) -> dict[str, int]:
  """`run` as the sweep command calls it: SIGTERM stops it as Ctrl-C does, and freed memory is kept as for the base.

  Spawned workers keep freed memory themselves; this covers trials run in this process (workers <= 1).
  """
  signal.signal(signal.SIGTERM, raise_interrupt)
  keep_freed_memory(sweep)
  return run(sweep, sweepdir, storage_url, workers, retry)

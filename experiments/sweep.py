r"""Runs a sweep: many training runs of one base config, recorded in an Optuna study.

  python -m experiments.sweep --config=configs/sweeps/heads.py --workdir=runs/heads [--workers=2]
      [--storage=postgresql://user@host/db]

Each trial is a normal training run (experiments.runner) in SWEEPDIR/trials/<id>, the id made from the
trial's overrides (experiments/sweep_space.py). The study lives in --storage (default: SQLite in
SWEEPDIR/study.db); processes on several machines that share a storage and a SWEEPDIR share the study.

What makes a rerun of the same command safe:
  - A trial holds an exclusive lock on SWEEPDIR/trials/<id>/.claim while it runs, so no point trains in two
    processes at once, and a RUNNING trial whose lock is free belongs to a process that died.
  - Such a trial (and one stopped by SIGINT/SIGTERM) is marked FAIL with the user attribute `interrupted`
    and enqueued again with the same parameters: the rerun resumes it from its checkpoints.
  - A point whose workdir holds a completed summary.json is recorded from it without training again.
  - A trial that raises is recorded as FAIL with its error (user attribute `error`); the sweep goes on.
Interrupted trials do not count towards `num_trials`; failed ones are retried only with --retry_failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from typing import Any

import optuna
from absl import app, flags
from ml_collections import ConfigDict, config_flags

from experiments import host, sweep_space
from experiments.files import CLAIM_FILE, SUMMARY_FILE, TRIAL_FILE, exclusive_lock, read_json, write_json

STALE_UNCLAIMED_SEC = 120  # a RUNNING trial that never claimed a point after this long is dead


class SweepError(ValueError):
  """The sweep config or one of its trials' configs is invalid; one line per problem."""


class Interrupted(Exception):
  """A signal stopped the trial in progress; its checkpoint is saved and the worker stops."""


def default_storage(sweepdir: str) -> str:
  return f"sqlite:///{os.path.abspath(os.path.join(sweepdir, 'study.db'))}"


def make_storage(url: str) -> optuna.storages.RDBStorage:
  """An RDB storage; SQLite waits for a busy database (several local workers) instead of failing."""
  engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
  return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


class _GridSampler(optuna.samplers.GridSampler):
  """Optuna's grid sampler without its `study.stop()` once the grid is covered.

  That call only works inside `study.optimize`; this engine uses ask and tell and decides itself when a
  sweep is done (`_finished`), because an interrupted trial must not count as a covered point.
  """

  def after_trial(self, study, trial, state, values):
    del study, trial, state, values


def make_sampler(sweep: ConfigDict, worker_index: int) -> optuna.samplers.BaseSampler:
  """The sweep's sampler. Grid: the same seed in every worker (it fixes the grid's order, shared by all)."""
  if sweep.sampler == "grid":
    return _GridSampler(sweep_space.grid_space(sweep), seed=sweep.seed)
  seed = sweep.seed + worker_index  # workers of one machine draw different points
  if sweep.sampler == "random":
    return optuna.samplers.RandomSampler(seed=seed)
  return optuna.samplers.TPESampler(seed=seed, constant_liar=True)  # constant liar: parallel workers spread out


def open_study(sweep: ConfigDict, storage_url: str, worker_index: int = 0) -> optuna.Study:
  """Creates or loads the sweep's study (processes on several machines may race to create it)."""
  storage = make_storage(storage_url)
  for attempt in range(5):
    try:
      return optuna.create_study(storage=storage, study_name=sweep.name, sampler=make_sampler(sweep, worker_index),
                                 direction=sweep.direction, load_if_exists=True)
    except optuna.exceptions.DuplicatedStudyError:
      time.sleep(0.2 * (attempt + 1))
  raise RuntimeError(f"could not create or load study {sweep.name!r} in {storage_url}")


@contextlib.contextmanager
def claim(trial_dir: str):
  """Yields True while this process holds the point's lock, False if a live process holds it."""
  os.makedirs(trial_dir, exist_ok=True)
  with exclusive_lock(os.path.join(trial_dir, CLAIM_FILE), wait=False) as handle:
    yield handle is not None


@contextlib.contextmanager
def _ask_lock(sweepdir: str):
  """Serializes `study.ask()` among the processes sharing sweepdir.

  Popping a queued (WAITING) trial is a read then a write; PostgreSQL and MySQL lock the row (SELECT ... FOR
  UPDATE), SQLite does not, so two local workers could both pop the same queued trial.
  """
  with exclusive_lock(os.path.join(sweepdir, ".ask.lock"), wait=True):
    yield


def _record(trial_dir: str, **fields: Any) -> None:
  """Updates trial.json, the trial's record that the report reads without the database."""
  path = os.path.join(trial_dir, TRIAL_FILE)
  write_json(path, {**(read_json(path) or {}), **fields, "updated": time.time()})


def _suggest(trial: optuna.Trial, sweep: ConfigDict) -> dict[str, Any]:
  """Asks the sampler for every parameter; returns the Optuna params."""
  for entry in sweep_space.parameters(sweep):
    name = sweep_space.entry_name(entry)
    if "values" in entry:
      trial.suggest_categorical(name, [sweep_space.encode(entry, v) for v in entry["values"]])
    elif entry.get("int"):
      trial.suggest_int(name, entry["low"], entry["high"], log=bool(entry.get("log")))
    else:
      trial.suggest_float(name, entry["low"], entry["high"], log=bool(entry.get("log")))
  return dict(trial.params)


def _requeue(study: optuna.Study, sweep: ConfigDict, frozen: optuna.trial.FrozenTrial, reason: str) -> None:
  """Marks a RUNNING trial FAIL as interrupted and enqueues its point again (to resume from checkpoints)."""
  # Optuna has no public call to finish another process's trial; the storage's is the one its own
  # heartbeat mechanism uses, and it refuses (UpdateFinishedTrialError) if another process got there first.
  storage = study._storage  # pylint: disable=protected-access
  trial_key = frozen._trial_id  # pylint: disable=protected-access
  try:
    storage.set_trial_user_attr(trial_key, "interrupted", reason)  # a finished trial takes no attribute
    if not storage.set_trial_state_values(trial_key, state=optuna.trial.TrialState.FAIL):
      return
  except optuna.exceptions.UpdateFinishedTrialError:
    return
  if len(frozen.params) == len(sweep_space.parameters(sweep)):
    study.enqueue_trial(dict(frozen.params), user_attrs={"retry_of": frozen.number})
  logging.warning("trial %d (%s) was interrupted (%s): enqueued again", frozen.number,
                  frozen.user_attrs.get("trial_id", "no point yet"), reason)


def recover_stale(study: optuna.Study, sweep: ConfigDict, sweepdir: str) -> None:
  """Requeues RUNNING trials whose process died: their point's lock is free (or never taken, long ago)."""
  for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    point = frozen.user_attrs.get("trial_id")
    if point is None:
      started = frozen.datetime_start.timestamp() if frozen.datetime_start else time.time()
      if time.time() - started > STALE_UNCLAIMED_SEC:
        _requeue(study, sweep, frozen, "its process died before it claimed a point")
      continue
    trial_dir = os.path.join(sweepdir, "trials", point)
    with claim(trial_dir) as owned:
      if owned:  # held by no live process; re-read under the lock so that a trial just finished is left alone
        current = study._storage.get_trial(frozen._trial_id)  # pylint: disable=protected-access
        if current.state == optuna.trial.TrialState.RUNNING:
          _requeue(study, sweep, current, "its process died")
          _record(trial_dir, status="interrupted")


def _progress(study: optuna.Study, sweep: ConfigDict) -> dict[str, Any]:
  """Counts of the study: trials that count towards the sweep, points done, running and waiting."""
  state = optuna.trial.TrialState
  counted, done, running, waiting = 0, set(), set(), 0
  trials = study.get_trials(deepcopy=False)
  retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
  for t in trials:
    if t.state == state.WAITING:
      waiting += 1
    elif t.state == state.RUNNING:
      running.add(t.user_attrs.get("trial_id", f"unclaimed {t.number}"))
    elif t.state == state.COMPLETE or (t.state == state.FAIL and "interrupted" not in t.user_attrs
                                       and t.number not in retried):
      if "trial_id" in t.user_attrs:
        counted += 1
        done.add(t.user_attrs["trial_id"])
  return {"counted": counted, "done": done, "running": running, "waiting": waiting}


def retry_failed(study: optuna.Study, sweep: ConfigDict) -> int:
  """Enqueues again the points of failed trials (not those already retried); returns how many."""
  trials = study.get_trials(deepcopy=False)
  retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
  count = 0
  for t in trials:
    if (t.state == optuna.trial.TrialState.FAIL and "interrupted" not in t.user_attrs and t.number not in retried
        and len(t.params) == len(sweep_space.parameters(sweep))):
      study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
      count += 1
  return count


def _remaining_grid(sweep: ConfigDict, progress: dict[str, Any]) -> list[dict[str, Any]]:
  """Grid points neither done nor running, as Optuna params."""
  busy = progress["done"] | progress["running"]
  return [p for p in sweep_space.grid_points(sweep)
          if sweep_space.trial_id(sweep, sweep_space.overrides_of(sweep, p)) not in busy]


def _finished(study: optuna.Study, sweep: ConfigDict) -> bool:
  """True when nothing is left for this worker: no queued trial, and the grid or num_trials is covered."""
  progress = _progress(study, sweep)
  if progress["waiting"]:
    return False
  if sweep.num_trials and progress["counted"] + len(progress["running"]) >= sweep.num_trials:
    return True
  if sweep.sampler != "grid":
    return False
  remaining = _remaining_grid(sweep, progress)
  if remaining and study.sampler.is_exhausted(study):
    # The grid sampler counts a point visited once any trial with it finished, an interrupted one
    # included; queue what it will no longer hand out.
    for params in remaining:
      study.enqueue_trial(params, user_attrs={"requeued": True})
    return False
  return not remaining


def run_trial(study: optuna.Study, trial: optuna.Trial, sweep: ConfigDict, sweepdir: str) -> bool:
  """Runs one asked trial to its end and tells the study; returns whether it trained.

  Raises:
    Interrupted: a signal stopped the training (checkpoint saved, trial requeued).
  """
  params = _suggest(trial, sweep)
  overrides = sweep_space.overrides_of(sweep, params)
  point = sweep_space.trial_id(sweep, overrides)
  trial_dir = os.path.join(sweepdir, "trials", point)
  with claim(trial_dir) as owned:
    if not owned:  # another live process trains this point (a race of two workers on one grid point)
      if study._storage.get_trial(trial._trial_id).user_attrs.get("trial_id") == point:  # pylint: disable=protected-access
        return False  # this very trial, popped twice: its owner tells the study
      trial.set_user_attr("duplicate_of", point)
      study.tell(trial, state=optuna.trial.TrialState.PRUNED)
      return False
    trial.set_user_attr("trial_id", point)  # only under the lock: recover_stale relies on this order
    trial.set_user_attr("overrides", json.loads(json.dumps(overrides, default=str)))
    summary = read_json(os.path.join(trial_dir, SUMMARY_FILE))
    if summary and summary.get("status") == "completed":  # trained before (e.g. a study database was lost)
      trial.set_user_attr("reused", True)
      _tell(study, trial, summary, sweep.metric, trial_dir)
      return False
    _record(trial_dir, id=point, status="running", number=trial.number, params=params, overrides=overrides,
            metric=sweep.metric, worker=f"{socket.gethostname()}:{os.getpid()}", error=None)
    from experiments import runner  # pylint: disable=g-import-not-at-top  (imports JAX: only in workers)

    try:
      config = sweep_space.trial_config(sweep, params)
      summary = runner.train_and_evaluate(config, trial_dir)
    except KeyboardInterrupt:
      _requeue(study, sweep, study._storage.get_trial(trial._trial_id), "KeyboardInterrupt")  # pylint: disable=protected-access
      _record(trial_dir, status="interrupted")
      raise Interrupted(f"trial {point} interrupted") from None
    except Exception as error:  # pylint: disable=broad-except  (any failure of one trial is recorded, not fatal)
      message = f"{type(error).__name__}: {error}".strip()
      logging.error("trial %d (%s) failed: %s", trial.number, point, message)
      trial.set_user_attr("error", message[:4000])
      study.tell(trial, state=optuna.trial.TrialState.FAIL)
      _record(trial_dir, status="failed", error=message)
      return True
    if summary["status"] != "completed":  # stopped by SIGINT/SIGTERM: the runner saved a checkpoint
      _requeue(study, sweep, study._storage.get_trial(trial._trial_id), summary["status"])  # pylint: disable=protected-access
      _record(trial_dir, status="interrupted")
      raise Interrupted(f"trial {point}: {summary['status']}")
    _tell(study, trial, summary, sweep.metric, trial_dir)
    return True


def _tell(study: optuna.Study, trial: optuna.Trial, summary: dict, metric: str, trial_dir: str) -> None:
  value = summary.get("final", {}).get(metric)
  if value is None:
    message = f"the run's summary has no {metric!r}: set the sweep's metric to one the run evaluates"
    trial.set_user_attr("error", message)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    _record(trial_dir, status="failed", error=message)
    return
  study.tell(trial, float(value))
  _record(trial_dir, status="completed", value=float(value), error=None)


def _raise_interrupt(signum, frame):
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
  import jax  # pylint: disable=g-import-not-at-top

  if not jax.config.jax_compilation_cache_dir:  # reruns and repeated shapes skip compiling
    jax.config.update("jax_compilation_cache_dir", os.path.join(sweepdir, "xla_cache"))
  if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # SIGTERM outside training stops like Ctrl-C
    signal.signal(signal.SIGTERM, _raise_interrupt)
  study = open_study(sweep, storage_url, worker_index)
  trained, idle = 0, 0
  max_idle = len(sweep_space.grid_points(sweep)) + 5 if sweep.sampler == "grid" else 3 * max(sweep.num_trials, 1)
  try:
    while True:
      recover_stale(study, sweep, sweepdir)
      if _finished(study, sweep):
        break
      if idle > max_idle:  # every point asked for lately was trained already: the sampler has nothing new
        logging.warning("worker %d: %d trials in a row were already done; stopping", worker_index, idle)
        break
      with _ask_lock(sweepdir):  # one local worker at a time takes a trial (see _ask_lock)
        trial = study.ask()
      if run_trial(study, trial, sweep, sweepdir):
        trained, idle = trained + 1, 0
      else:
        idle += 1
  except Interrupted as error:
    logging.warning("worker %d stopped: %s; rerun the same command to resume", worker_index, error)
    raise KeyboardInterrupt from None
  return trained


def _keep_freed_memory(sweep: ConfigDict) -> None:
  """host.keep_freed_memory as for the sweep's base config (a base that does not load is reported later)."""
  try:
    one_heap = host.one_heap_pays(sweep_space.load_config_file(sweep.base))
  except (FileNotFoundError, ValueError, TypeError, AttributeError):
    one_heap = False
  host.keep_freed_memory(one_heap)


def _worker_process(sweep_dict: dict, sweepdir: str, storage_url: str, worker_index: int) -> None:
  # Warnings and errors only: a worker's INFO lines (orbax, TFDS) would bury the trials' own messages.
  logging.basicConfig(level=logging.WARNING, format=f"[worker {worker_index}] %(levelname)s %(message)s")
  _keep_freed_memory(ConfigDict(sweep_dict))
  try:
    work(ConfigDict(sweep_dict), sweepdir, storage_url, worker_index)
  except KeyboardInterrupt:
    sys.exit(130)  # the parent tells an interrupted worker from a crashed one by this status


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
    Counts of the study's trials by state (COMPLETE, FAIL, ...) after the run.

  Raises:
    SweepError: the sweep or a trial's config is invalid (nothing was run or written).
    KeyboardInterrupt: a signal stopped the sweep (or a worker); rerunning resumes it.
  """
  errors = sweep_space.validate_trials(sweep)
  if errors:
    raise SweepError("\n".join(errors))
  os.makedirs(os.path.join(sweepdir, "trials"), exist_ok=True)
  storage_url = storage_url or default_storage(sweepdir)
  write_json(os.path.join(sweepdir, "sweep.json"), {**sweep.to_dict(), "storage": storage_url})
  study = open_study(sweep, storage_url)
  if retry:
    logging.warning("retrying %d failed trials", retry_failed(study, sweep))
  if workers <= 1:
    work(sweep, sweepdir, storage_url)
  else:
    context = multiprocessing.get_context("spawn")  # fork would copy JAX's threads and state
    processes = [context.Process(target=_worker_process, args=(sweep.to_dict(), sweepdir, storage_url, index))
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
  counts: dict[str, int] = {}
  for t in study.get_trials(deepcopy=False):
    counts[t.state.name] = counts.get(t.state.name, 0) + 1
  return counts


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  args = flags.FLAGS
  if args.workdir is None or args.config is None:
    raise app.UsageError("--config and --workdir are required")
  sweep = args.config
  workers = args.workers if args.workers is not None else sweep.workers
  signal.signal(signal.SIGTERM, _raise_interrupt)
  _keep_freed_memory(sweep)  # for trials run in this process (workers <= 1); spawned workers apply it themselves
  try:
    counts = run(sweep, args.workdir, args.storage, workers, args.retry_failed)
  except SweepError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("interrupted: rerun the same command to resume", file=sys.stderr)
    sys.exit(130)
  print(json.dumps(counts))


def define_flags() -> None:
  """The command's flags, defined only when it runs as a command (tests import this module beside others)."""
  config_flags.DEFINE_config_file("config", None, "Sweep config file (configs/sweeps/<name>.py[:scale]).")
  flags.DEFINE_string("workdir", None, "Directory of the sweep: trials/, study.db, results.")
  flags.DEFINE_integer("workers", None, "Trials run in parallel processes (default: the config's).")
  flags.DEFINE_string("storage", None, "Optuna storage URL (default: sqlite:///WORKDIR/study.db).")
  flags.DEFINE_bool("retry_failed", False, "Run the points of failed trials again (failures are final otherwise).")


if __name__ == "__main__":
  define_flags()
  app.run(main)

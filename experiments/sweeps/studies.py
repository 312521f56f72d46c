"""The sweep's Optuna study: its storage and sampler, and what its trials say about the sweep's progress.

The study lives in an RDB storage (default: SQLite in SWEEPDIR/study.db); processes on several machines that
share a storage and a SWEEPDIR share the study.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from typing import Any

import optuna
from ml_collections import ConfigDict

from experiments.files import exclusive_lock
from experiments.sweeps import space


@contextlib.contextmanager
def queue_lock(sweepdir: str):
  """Serializes, among the processes sharing sweepdir, every change to the study's queue: queueing the trials a
  sweep needs (`finished`) with `study.ask()`, and requeueing an interrupted trial (`requeue`).

  Popping a queued (WAITING) trial is a read then a write; PostgreSQL and MySQL lock the row (SELECT ... FOR
  UPDATE), SQLite does not, so two local workers could both pop the same queued trial. And a requeue marks the
  trial failed before it queues its point again: a worker looking for missing trials in between would queue
  that point too, and it would train twice.
  """
  with exclusive_lock(os.path.join(sweepdir, ".ask.lock"), wait=True):
    yield


def default_storage(sweepdir: str) -> str:
  return f"sqlite:///{os.path.abspath(os.path.join(sweepdir, 'study.db'))}"


def make_storage(url: str) -> optuna.storages.RDBStorage:
  """An RDB storage; SQLite waits for a busy database (several local workers) instead of failing."""
  engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
  return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


class _GridSampler(optuna.samplers.GridSampler):
  """Optuna's grid sampler without its `study.stop()` once the grid is covered.

  That call only works inside `study.optimize`; this engine uses ask and tell, queues the grid's trials itself and
  decides itself when a sweep is done (`finished`), because an interrupted trial must not count as a covered point.
  """

  def after_trial(self, study, trial, state, values):
    del study, trial, state, values


def make_sampler(sweep: ConfigDict, worker_index: int) -> optuna.samplers.BaseSampler:
  """The sweep's sampler. A grid's trials are all queued (see _missing): its sampler only checks them."""
  if sweep.sampler == "grid":
    return _GridSampler(space.grid_space(sweep), seed=sweep.seed)
  seed = sweep.seed + worker_index  # workers of one machine draw different points
  if sweep.sampler == "random":
    return optuna.samplers.RandomSampler(seed=seed)
  return optuna.samplers.TPESampler(seed=seed, constant_liar=True)  # constant liar: parallel workers spread out


def make_pruner(sweep: ConfigDict) -> optuna.pruners.BasePruner:
  """The sweep's pruner (random and TPE searches only; space.check_sweep refuses one on a grid)."""
  name = space.pruner_name(sweep)
  if name == "median":
    return optuna.pruners.MedianPruner()  # after 5 finished trials, stops one below their median at the same step
  if name == "successive_halving":
    return optuna.pruners.SuccessiveHalvingPruner()
  return optuna.pruners.NopPruner()


def open_study(sweep: ConfigDict, storage_url: str, worker_index: int = 0) -> optuna.Study:
  """Creates or loads the sweep's study (processes on several machines may race to create it).

  The study's objective carries the metric's name, which optuna-dashboard shows beside its values.
  """
  storage = make_storage(storage_url)
  for attempt in range(5):
    try:
      study = optuna.create_study(storage=storage, study_name=sweep.name, sampler=make_sampler(sweep, worker_index),
                                  pruner=make_pruner(sweep), direction=sweep.direction, load_if_exists=True)
      break
    except optuna.exceptions.DuplicatedStudyError:
      time.sleep(0.2 * (attempt + 1))
  else:
    raise RuntimeError(f"could not create or load study {sweep.name!r} in {storage_url}")
  if study.metric_names != [sweep.metric]:
    with warnings.catch_warnings():  # experimental since Optuna 3.2, and the only way to name the objective
      warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
      study.set_metric_names([sweep.metric])
  return study


def suggest(trial: optuna.Trial, sweep: ConfigDict) -> dict[str, Any]:
  """Asks the sampler for every parameter (a queued trial gets its own); returns the Optuna params."""
  for entry in space.parameters(sweep):
    name = space.entry_name(entry)
    if "values" in entry:
      trial.suggest_categorical(name, [space.encode(entry, v) for v in entry["values"]])
    elif entry.get("int"):
      trial.suggest_int(name, entry["low"], entry["high"], log=bool(entry.get("log")))
    else:
      trial.suggest_float(name, entry["low"], entry["high"], log=bool(entry.get("log")))
  return dict(trial.params)


def _queued_key(sweep: ConfigDict, frozen: optuna.trial.FrozenTrial) -> str | None:
  """The population_key of a queued trial (None: one queued without parameters)."""
  params = frozen.system_attrs.get("fixed_params")
  if not params or len(params) != len(space.parameters(sweep)):
    return None
  return space.population_key(sweep, params, frozen.user_attrs.get("replicate", 0))


def ask_population(study: optuna.Study, sweep: ConfigDict) -> list[optuna.Trial]:
  """The trials of the next population of a vectorised sweep: a trial asked as `study.ask()` would, then the
  queued ones that share its population_key, oldest first, up to max_population.

  A point a random or TPE sampler chose queues its other replicates here, to train with it. Call it under
  `queue_lock`, after `finished` queued what the sweep needs.
  """
  first = study.ask()
  params = suggest(first, sweep)
  replicate = int(first.user_attrs.get("replicate", 0))
  key = space.population_key(sweep, params, replicate)
  if sweep.sampler != "grid" and "planned" not in first.user_attrs:  # a point the sampler chose just now
    taken = {t.user_attrs.get("planned") for t in study.get_trials(deepcopy=False)}
    for r in range(1, space.replicates(sweep)):
      if space.trial_id(sweep, space.replicate_overrides(sweep, space.overrides_of(sweep, params), r)) not in taken:
        enqueue(study, sweep, params, r)
  group = [first]
  storage = study._storage  # pylint: disable=protected-access  (popping a chosen queued trial, as ask pops the first)
  for frozen in storage.get_all_trials(study._study_id, deepcopy=False,  # pylint: disable=protected-access
                                       states=(optuna.trial.TrialState.WAITING,)):
    if len(group) == space.max_population(sweep):
      break
    if _queued_key(sweep, frozen) != key:
      continue
    try:
      if not storage.set_trial_state_values(frozen._trial_id, state=optuna.trial.TrialState.RUNNING):
        continue  # another process popped it first
    except optuna.exceptions.UpdateFinishedTrialError:
      continue
    group.append(optuna.Trial(study, frozen._trial_id))  # pylint: disable=protected-access
  return group


def enqueue(study: optuna.Study, sweep: ConfigDict, params: dict[str, Any], replicate: int, **attrs: Any) -> None:
  """Queues replicate r of a point; its id is recorded (`planned`), so that a queued trial counts as planned."""
  planned = space.trial_id(sweep, space.replicate_overrides(sweep, space.overrides_of(sweep, params), replicate))
  study.enqueue_trial(dict(params), user_attrs={"replicate": replicate, "planned": planned, **attrs})


def requeue(study: optuna.Study, sweep: ConfigDict, frozen: optuna.trial.FrozenTrial, reason: str) -> None:
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
  if len(frozen.params) == len(space.parameters(sweep)):
    enqueue(study, sweep, frozen.params, frozen.user_attrs.get("replicate", 0), retry_of=frozen.number)
  logging.warning("trial %d (%s) was interrupted (%s): enqueued again", frozen.number,
                  frozen.user_attrs.get("trial_id", "no point yet"), reason)


def _counts_as_done(t: optuna.trial.FrozenTrial, retried: set[int]) -> bool:
  """A trial that ended for good: completed, failed (not interrupted, not retried since) or pruned by the pruner
  (not a duplicate of a point another process claimed)."""
  state = optuna.trial.TrialState
  if "trial_id" not in t.user_attrs:
    return False
  if t.state == state.COMPLETE:
    return True
  if t.state == state.FAIL:
    return "interrupted" not in t.user_attrs and t.number not in retried
  return t.state == state.PRUNED and "duplicate_of" not in t.user_attrs


def _progress(study: optuna.Study) -> dict[str, Any]:
  """What the study's trials say: ids done, running and queued; points started; leaders (replicate 0) by point."""
  state = optuna.trial.TrialState
  trials = study.get_trials(deepcopy=False)
  retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
  done, running, waiting, points, leaders = set(), set(), set(), set(), {}
  waiting_count = 0
  for t in trials:
    point = t.user_attrs.get("point", t.user_attrs.get("trial_id"))
    if t.state == state.WAITING:
      waiting_count += 1
      waiting.add(t.user_attrs.get("planned"))
      continue
    if t.state == state.RUNNING:
      # Between `ask` and its claim a trial has no trial_id yet, but a queued one knows what it will be: without
      # it another worker would find that trial missing and queue it again.
      running.add(t.user_attrs.get("trial_id", t.user_attrs.get("planned", f"unclaimed {t.number}")))
    elif _counts_as_done(t, retried):
      done.add(t.user_attrs["trial_id"])
    else:
      continue
    if "trial_id" in t.user_attrs:
      points.add(point)
      if t.user_attrs.get("replicate", 0) == 0:
        leaders[point] = t
  return {"done": done, "running": running, "waiting": waiting,
          "waiting_count": waiting_count, "points": points, "leaders": leaders}


def retry_failed(study: optuna.Study, sweep: ConfigDict) -> int:
  """Enqueues again the failed trials (not those already retried), each as the same replicate; returns how many."""
  trials = study.get_trials(deepcopy=False)
  retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
  count = 0
  for t in trials:
    if (t.state == optuna.trial.TrialState.FAIL and "interrupted" not in t.user_attrs and t.number not in retried
        and len(t.params) == len(space.parameters(sweep))):
      enqueue(study, sweep, t.params, t.user_attrs.get("replicate", 0), retry_of=t.number)
      count += 1
  return count


def planned_trials(sweep: ConfigDict) -> int:
  """Trials the sweep runs in all: points (the grid's, or num_trials) times replicates."""
  points = len(space.grid_points(sweep)) if sweep.sampler == "grid" else sweep.num_trials
  if sweep.sampler == "grid" and sweep.num_trials:
    points = min(points, sweep.num_trials)
  return points * space.replicates(sweep)


def _missing(sweep: ConfigDict, progress: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
  """(Optuna params, replicate) of the trials to queue now: neither done, running nor queued.

  A grid: every replicate of every point (of the first num_trials points, if set), point after point, so that
  the first points have all their seeds early. A random or TPE search: the other replicates of each point whose
  first replicate the sampler chose, at once, or with a pruner only once that replicate ended unpruned, so that a
  point is pruned whole or not at all.
  """
  taken = progress["done"] | progress["running"] | progress["waiting"]
  count = space.replicates(sweep)

  def untaken(params: dict[str, Any], replicates: range) -> list[tuple[dict[str, Any], int]]:
    overrides = space.overrides_of(sweep, params)
    return [(params, r) for r in replicates
            if space.trial_id(sweep, space.replicate_overrides(sweep, overrides, r)) not in taken]

  if sweep.sampler == "grid":
    points = space.grid_points(sweep)[:sweep.num_trials or None]
    return [pair for params in points for pair in untaken(params, range(count))]
  state = optuna.trial.TrialState
  wait_for_leader = space.pruner_name(sweep) != "none"
  missing = []
  for leader in progress["leaders"].values():
    ended_unpruned = leader.state in (state.COMPLETE, state.FAIL)
    if count > 1 and len(leader.params) == len(space.parameters(sweep)) and (ended_unpruned or (
        not wait_for_leader and leader.state == state.RUNNING)):
      missing.extend(untaken(dict(leader.params), range(1, count)))
  return missing


def finished(study: optuna.Study, sweep: ConfigDict) -> bool:
  """Queues the trials the sweep needs and no process runs or waits for (see _missing); then True when nothing is
  left for this worker: nothing queued, and the grid or num_trials points covered.

  Call it under `queue_lock`: two local workers would queue the same trials twice.
  """
  progress = _progress(study)
  missing = _missing(sweep, progress)
  for params, replicate in missing:
    enqueue(study, sweep, params, replicate)
  if missing or progress["waiting_count"]:
    return False
  return sweep.sampler == "grid" or len(progress["points"]) >= sweep.num_trials


def sweep_progress(study: optuna.Study, sweep: ConfigDict) -> dict[str, Any]:
  """For the sweep's progress line: trials planned, done, failed, running (and the runs they are in: a population
  is one), and the mean wall time of those done (a population member's: its share of the population's)."""
  state = optuna.trial.TrialState
  trials = study.get_trials(deepcopy=False)
  retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
  ended = [t for t in trials if _counts_as_done(t, retried)]
  # A population's members end together after its wall time: each counts for its share of it.
  walls = [(t.datetime_complete - t.datetime_start).total_seconds() / t.user_attrs.get("population_size", 1)
           for t in ended if t.datetime_complete and t.datetime_start and not t.user_attrs.get("reused")]
  running = [t for t in trials if t.state == state.RUNNING]
  return {"planned": planned_trials(sweep), "done": len(ended),
          "failed": sum(t.state == state.FAIL for t in ended),
          "running": len(running),
          "running_groups": len({t.user_attrs.get("population", t.number) for t in running}),
          "mean_wall_sec": sum(walls) / len(walls) if walls else None}


def state_counts(study: optuna.Study) -> dict[str, int]:
  """Counts of the study's trials by state (COMPLETE, FAIL, ...)."""
  counts: dict[str, int] = {}
  for t in study.get_trials(deepcopy=False):
    counts[t.state.name] = counts.get(t.state.name, 0) + 1
  return counts

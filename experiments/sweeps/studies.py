"""The sweep's Optuna study: its storage and sampler, and what its trials say about the sweep's progress.

The study lives in an RDB storage (default: SQLite in SWEEPDIR/study.db); processes on several machines that
share a storage and a SWEEPDIR share the study.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import optuna
from ml_collections import ConfigDict

from experiments.sweeps import space


def default_storage(sweepdir: str) -> str:
  return f"sqlite:///{os.path.abspath(os.path.join(sweepdir, 'study.db'))}"


def make_storage(url: str) -> optuna.storages.RDBStorage:
  """An RDB storage; SQLite waits for a busy database (several local workers) instead of failing."""
  engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
  return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


class _GridSampler(optuna.samplers.GridSampler):
  """Optuna's grid sampler without its `study.stop()` once the grid is covered.

  That call only works inside `study.optimize`; this engine uses ask and tell and decides itself when a
  sweep is done (`finished`), because an interrupted trial must not count as a covered point.
  """

  def after_trial(self, study, trial, state, values):
    del study, trial, state, values


def make_sampler(sweep: ConfigDict, worker_index: int) -> optuna.samplers.BaseSampler:
  """The sweep's sampler. Grid: the same seed in every worker (it fixes the grid's order, shared by all)."""
  if sweep.sampler == "grid":
    return _GridSampler(space.grid_space(sweep), seed=sweep.seed)
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
    study.enqueue_trial(dict(frozen.params), user_attrs={"retry_of": frozen.number})
  logging.warning("trial %d (%s) was interrupted (%s): enqueued again", frozen.number,
                  frozen.user_attrs.get("trial_id", "no point yet"), reason)


def _progress(study: optuna.Study) -> dict[str, Any]:
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
        and len(t.params) == len(space.parameters(sweep))):
      study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
      count += 1
  return count


def _remaining_grid(sweep: ConfigDict, progress: dict[str, Any]) -> list[dict[str, Any]]:
  """Grid points neither done nor running, as Optuna params."""
  busy = progress["done"] | progress["running"]
  return [p for p in space.grid_points(sweep) if space.trial_id(sweep, space.overrides_of(sweep, p)) not in busy]


def finished(study: optuna.Study, sweep: ConfigDict) -> bool:
  """True when nothing is left for this worker: no queued trial, and the grid or num_trials is covered."""
  progress = _progress(study)
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


def state_counts(study: optuna.Study) -> dict[str, int]:
  """Counts of the study's trials by state (COMPLETE, FAIL, ...)."""
  counts: dict[str, int] = {}
  for t in study.get_trials(deepcopy=False):
    counts[t.state.name] = counts.get(t.state.name, 0) + 1
  return counts

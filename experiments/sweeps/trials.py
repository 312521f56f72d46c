"""One trial of a sweep: claim its point, train it as a normal run in SWEEPDIR/trials/<id>, tell the study.

A trial holds an exclusive lock on SWEEPDIR/trials/<id>/.claim while it runs, so no point trains in two
processes at once, and a RUNNING trial whose lock is free belongs to a process that died (`recover_stale`).
Each trial's directory also holds trial.json, its record for the report (status, parameters, error, and the start
and wall time of each attempt at training it, so that the report's wall time covers a resumed trial's every part).
A vectorised sweep trains several trials at once as the members of one population (`run_population`), each
still claimed, recorded and told as a trial of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import time
from typing import Any

import optuna
from ml_collections import ConfigDict

from experiments.files import (CLAIM_FILE, SUMMARY_FILE, TRIAL_FILE, exclusive_lock, last_write_time, read_json,
                               read_metrics, write_json)
from experiments.sweeps import space, studies

STALE_UNCLAIMED_SEC = 120  # a RUNNING trial that never claimed a point after this long is dead
FINISHED = ("completed", "reached_target")  # a run's summary statuses that end a trial with its final metric
PRUNED = "pruned"  # the run's status when the sweep's pruner stopped it (runner's on_evaluation said stop)


class Interrupted(Exception):
  """A signal stopped the trial in progress; its checkpoint is saved and the worker stops."""


@contextlib.contextmanager
def claim(trial_dir: str):
  """Yields True while this process holds the point's lock, False if a live process holds it."""
  os.makedirs(trial_dir, exist_ok=True)
  with exclusive_lock(os.path.join(trial_dir, CLAIM_FILE), wait=False) as handle:
    yield handle is not None


def _record(trial_dir: str, **fields: Any) -> None:
  """Updates trial.json, the trial's record that the report reads without the database."""
  path = os.path.join(trial_dir, TRIAL_FILE)
  write_json(path, {**(read_json(path) or {}), **fields, "updated": time.time()})


def _end_attempt(trial_dir: str, end_time: float, **fields: Any) -> None:
  """Records the wall time of the trial's attempt in progress (ended at `end_time`) along with `fields`."""
  attempts = (read_json(os.path.join(trial_dir, TRIAL_FILE)) or {}).get("attempts") or []
  if attempts and "wall_sec" not in attempts[-1]:
    attempts[-1]["wall_sec"] = max(end_time - attempts[-1]["start"], 0.0)
  _record(trial_dir, attempts=attempts, **fields)


def _stored(study: optuna.Study, trial: optuna.Trial | optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
  """The trial as the storage holds it now, whichever process changed it last."""
  return study._storage.get_trial(trial._trial_id)  # pylint: disable=protected-access


def recover_stale(study: optuna.Study, sweep: ConfigDict, sweepdir: str) -> None:
  """Requeues RUNNING trials whose process died: their point's lock is free (or never taken, long ago)."""
  for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    point = frozen.user_attrs.get("trial_id")
    if point is None:
      started = frozen.datetime_start.timestamp() if frozen.datetime_start else time.time()
      if time.time() - started > STALE_UNCLAIMED_SEC:
        with studies.queue_lock(sweepdir):
          studies.requeue(study, sweep, frozen, "its process died before it claimed a point")
      continue
    trial_dir = os.path.join(sweepdir, "trials", point)
    with claim(trial_dir) as owned:
      if owned:  # held by no live process; re-read under the lock so that a trial just finished is left alone
        current = _stored(study, frozen)
        if current.state == optuna.trial.TrialState.RUNNING:
          died = last_write_time(trial_dir)  # read before trial.json is written again
          with studies.queue_lock(sweepdir):
            studies.requeue(study, sweep, current, "its process died")
          _end_attempt(trial_dir, died, status="interrupted")


def unfinished(study: optuna.Study, sweepdir: str) -> str | None:
  """What keeps the sweep from being finished once this command's workers ended, in one line (None: nothing).

  Call it after `recover_stale`: a RUNNING trial whose point's lock is held is trained by a live process that is
  none of this command's workers (another machine's, or one left by an earlier command); any other RUNNING or
  WAITING trial is run by no process.
  """
  state = optuna.trial.TrialState
  elsewhere, left = [], 0
  for frozen in study.get_trials(deepcopy=False, states=(state.RUNNING, state.WAITING)):
    point = frozen.user_attrs.get("trial_id")
    trial_dir = os.path.join(sweepdir, "trials", point or "")
    if frozen.state == state.RUNNING and point is not None:
      with claim(trial_dir) as owned:
        if not owned:
          worker = (read_json(os.path.join(trial_dir, TRIAL_FILE)) or {}).get("worker", "unknown")
          elsewhere.append(f"{point} (process {worker})")
          continue
    left += 1
  parts = []
  if elsewhere:
    parts.append(f"{len(elsewhere)} trials still train in processes that are not this command's: "
                 f"{', '.join(elsewhere)}; the report shows them, rerun this command once they end")
  if left:
    parts.append(f"{left} trials are unfinished and no process runs them: rerun the same command to run them")
  return "; ".join(parts) or None


def run_trial(study: optuna.Study, trial: optuna.Trial, sweep: ConfigDict, sweepdir: str) -> str | None:
  """Runs one asked trial to its end and tells the study; returns its directory if it trained, else None.

  The trial is replicate `replicate` (a user attribute set when it was queued; 0 for a point the sampler chose) of
  its point. At each evaluation it reports the sweep's metric to the study as an intermediate value; the first
  replicate of a point also asks the study's pruner whether to stop (the others are queued only once it ended).

  Raises:
    Interrupted: a signal stopped the training (checkpoint saved, trial requeued).
  """
  member = _Member(trial, sweep, sweepdir)
  trial_name, trial_dir, replicate = member.name, member.dir, member.replicate
  with claim(trial_dir) as owned:
    if not member.take(study, owned, sweep):
      return None
    def on_evaluation(step: int, metrics: dict[str, float]) -> bool:
      """Reports the metric to the study; True (stop, pruned) when the pruner says so to a point's first replicate."""
      if not member.report(step, metrics, sweep.metric):
        return False
      return replicate == 0 and space.pruner_name(sweep) != "none" and trial.should_prune()

    try:
      # The run (JAX, flax, orbax) is imported here, where a worker trains: the sweep command and its
      # bookkeeping do without it. Inside the try: a SIGTERM during the seconds it takes requeues the trial too.
      from experiments import runner  # pylint: disable=g-import-not-at-top
      config = space.trial_config(sweep, member.params, replicate)
      _record(trial_dir, seed=config.train.seed)
      summary = runner.train_and_evaluate(config, trial_dir, on_evaluation=on_evaluation)
    except KeyboardInterrupt:
      with studies.queue_lock(sweepdir):
        studies.requeue(study, sweep, _stored(study, trial), "KeyboardInterrupt")
      _end_attempt(trial_dir, time.time(), status="interrupted")
      raise Interrupted(f"trial {trial_name} interrupted") from None
    except Exception as error:  # pylint: disable=broad-except  (any failure of one trial is recorded, not fatal)
      message = f"{type(error).__name__}: {error}".strip()
      logging.error("trial %d (%s) failed: %s", trial.number, trial_name, message)
      trial.set_user_attr("error", message[:4000])
      study.tell(trial, state=optuna.trial.TrialState.FAIL)
      _end_attempt(trial_dir, time.time(), status="failed", error=message)
      return trial_dir
    _end_attempt(trial_dir, time.time())
    if summary["status"] == PRUNED:
      trial.set_user_attr("pruned_at", summary["step"])
      study.tell(trial, state=optuna.trial.TrialState.PRUNED)
      _record(trial_dir, status=PRUNED, value=summary.get("final", {}).get(sweep.metric))
      return trial_dir
    if summary["status"] not in FINISHED:  # stopped by SIGINT/SIGTERM: the runner saved a checkpoint
      with studies.queue_lock(sweepdir):
        studies.requeue(study, sweep, _stored(study, trial), summary["status"])
      _record(trial_dir, status="interrupted")
      raise Interrupted(f"trial {trial_name}: {summary['status']}")
    _tell(study, trial, summary, sweep.metric, trial_dir)
    return trial_dir


class _Member:
  """One asked trial of a sweep: its parameters, replicate, id and directory, and what its claim found."""

  def __init__(self, trial: optuna.Trial, sweep: ConfigDict, sweepdir: str):
    self.trial = trial
    self.params = studies.suggest(trial, sweep)
    self.replicate = int(trial.user_attrs.get("replicate", 0))
    point_overrides = space.overrides_of(sweep, self.params)
    self.overrides = space.replicate_overrides(sweep, point_overrides, self.replicate)
    self.point, self.name = space.trial_id(sweep, point_overrides), space.trial_id(sweep, self.overrides)
    self.dir = os.path.join(sweepdir, "trials", self.name)
    self.reported: set[int] = set()

  def take(self, study: optuna.Study, owned: bool, sweep: ConfigDict) -> bool:
    """With the point's lock held (`owned`): records the trial as running and returns True; False when it is
    not to be trained here (another live process holds it, or it was trained before: the study is told)."""
    trial = self.trial
    if not owned:  # another live process trains this trial (a race of two workers on one grid point)
      if _stored(study, trial).user_attrs.get("trial_id") == self.name:
        return False  # this very trial, popped twice: its owner tells the study
      trial.set_user_attr("duplicate_of", self.name)
      study.tell(trial, state=optuna.trial.TrialState.PRUNED)
      return False
    # trial_id only under the lock: recover_stale relies on this order
    for key, value in (("replicate", self.replicate), ("point", self.point), ("trial_id", self.name),
                       ("overrides", json.loads(json.dumps(self.overrides, default=str)))):
      trial.set_user_attr(key, value)
    self.reported = _report_logged(trial, self.dir, sweep.metric)
    summary = read_json(os.path.join(self.dir, SUMMARY_FILE))
    if summary and summary.get("status") in FINISHED:  # trained before (e.g. a study database was lost)
      trial.set_user_attr("reused", True)
      _tell(study, trial, summary, sweep.metric, self.dir)
      return False
    attempts = (read_json(os.path.join(self.dir, TRIAL_FILE)) or {}).get("attempts") or []
    _record(self.dir, id=self.name, point=self.point, replicate=self.replicate, replicates=space.replicates(sweep),
            status="running", number=trial.number, params=self.params, overrides=self.overrides,
            metric=sweep.metric, worker=f"{socket.gethostname()}:{os.getpid()}", error=None,
            attempts=[*attempts, {"start": time.time()}])
    return True

  def join(self, population_dir: str, size: int) -> None:
    """Records that the trial trains as a member of the population in population_dir, of `size` members (the
    progress line counts a population as one run, and a member's wall time as its share of the population's)."""
    self.trial.set_user_attr("population", os.path.basename(population_dir))
    self.trial.set_user_attr("population_size", size)
    _record(self.dir, population=population_dir, population_size=size)

  def report(self, step: int, metrics: dict[str, float], metric: str) -> bool:
    """Reports the metric at an evaluation as the trial's intermediate value; False if there was nothing new."""
    value = metrics.get(metric)
    if value is None or not math.isfinite(value) or step in self.reported:
      return False
    self.trial.report(float(value), step)
    self.reported.add(step)
    return True


def run_population(study: optuna.Study, group: list[optuna.Trial], sweep: ConfigDict,
                   sweepdir: str) -> list[str]:
  """Trains asked trials that differ only in vectorisable paths (studies.ask_population) as one population and
  tells the study each member's result; returns the directories of the trials it trained.

  The population's own directory is SWEEPDIR/populations/<its members' ids, hashed>; each member writes what a
  trial writes in its trial's directory, and its trial.json names the population. Trials that another process
  holds or that were trained before are told (or left to their owner) and left out; a member that diverged fails
  alone, as a single run's NaN does.

  Raises:
    Interrupted: a signal stopped the training (checkpoint saved, every member requeued).
  """
  members = [_Member(trial, sweep, sweepdir) for trial in group]
  with contextlib.ExitStack() as claims:
    owned = [claims.enter_context(claim(m.dir)) for m in members]
    members = [m for m, held in zip(members, owned) if m.take(study, held, sweep)]
    if not members:
      return []
    # Named by the trials it trains, so that a rerun that forms it again (the same trials) resumes it.
    names = json.dumps(sorted(m.name for m in members))
    population_dir = os.path.join(sweepdir, "populations", hashlib.sha256(names.encode()).hexdigest()[:12])
    for m in members:
      m.join(population_dir, len(members))

    def on_member_evaluation(index: int, step: int, metrics: dict[str, float]) -> None:
      members[index].report(step, metrics, sweep.metric)

    try:
      from experiments import runner  # pylint: disable=g-import-not-at-top  (JAX where a worker trains)
      config = space.population_config(sweep, [(m.params, m.replicate) for m in members])
      for m, seed in zip(members, config.population.member_values.train.seed):
        _record(m.dir, seed=seed)
      result = runner.train_and_evaluate(config, population_dir, member_dirs=[m.dir for m in members],
                                         on_member_evaluation=on_member_evaluation)
    except KeyboardInterrupt:
      _requeue_all(study, sweep, sweepdir, members, "KeyboardInterrupt")
      raise Interrupted(f"population of {', '.join(m.name for m in members)} interrupted") from None
    except Exception as error:  # pylint: disable=broad-except  (a failed population fails its trials, not the sweep)
      message = f"{type(error).__name__}: {error}".strip()
      logging.error("population of %d trials (%s...) failed: %s", len(members), members[0].name, message)
      for m in members:
        m.trial.set_user_attr("error", message[:4000])
        study.tell(m.trial, state=optuna.trial.TrialState.FAIL)
        _end_attempt(m.dir, time.time(), status="failed", error=message)
      return [m.dir for m in members]
    end = time.time()
    if result["status"] not in ("completed", "all_stopped"):  # stopped by a signal: checkpoint saved
      _requeue_all(study, sweep, sweepdir, members, result["status"])
      raise Interrupted(f"population of {len(members)} trials: {result['status']}")
    for m, summary in zip(members, result["members"]):
      _end_attempt(m.dir, end)
      if summary["status"] == "diverged":
        message = (f"NonFiniteLoss: the training loss or gradient became NaN or infinite at step "
                   f"{summary['diverged_at']} (a member of a population; the others trained on)")
        m.trial.set_user_attr("error", message)
        study.tell(m.trial, state=optuna.trial.TrialState.FAIL)
        _record(m.dir, status="failed", error=message)
      else:
        _tell(study, m.trial, summary, sweep.metric, m.dir)
    return [m.dir for m in members]


def _requeue_all(study: optuna.Study, sweep: ConfigDict, sweepdir: str, members: list[_Member], reason: str) -> None:
  end = time.time()
  with studies.queue_lock(sweepdir):
    for m in members:
      studies.requeue(study, sweep, _stored(study, m.trial), reason)
  for m in members:
    _end_attempt(m.dir, end, status="interrupted")


def _report_logged(trial: optuna.Trial, trial_dir: str, metric: str) -> set[int]:
  """Reports the metric at the evaluations an earlier attempt at the trial logged; returns their steps.

  A resumed trial is a new Optuna trial: without these its intermediate values would start where it resumed.
  """
  steps = set()
  for row in read_metrics(trial_dir):
    value = row.get(metric)
    if value is not None and math.isfinite(value):
      trial.report(float(value), row["step"])
      steps.add(row["step"])
  return steps


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

"""Replicate seeds in sweeps: ids, the order trials run in, intermediate values, pruning, the terminal's lines.

The engine's bookkeeping is tested here with a stand-in for the run (it logs three evaluations at once, no
training); tests/test_report_points.py has the point tables, and one slow test below trains a real tiny sweep.
"""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np
import optuna
import pytest

from experiments import runner
from experiments.files import METRICS_FILE, SUMMARY_FILE, TRIAL_FILE, read_json, write_json
from experiments.sweeps import engine, report, space, studies
from tests.helpers.sweeps import tiny_sweep


def stand_in_runner(calls: list, loss_of):
  """A train_and_evaluate that logs eval/loss = loss_of(config, step) at steps 1, 2, 3 without training."""

  def train_and_evaluate(config, workdir, progress=False, on_evaluation=None):
    del progress
    calls.append(config)
    status, step, metrics = "completed", 0, {}
    with open(os.path.join(workdir, METRICS_FILE), "a", encoding="utf-8") as f:
      for step in (1, 2, 3):
        metrics = {"eval/loss": float(loss_of(config, step))}
        f.write(json.dumps({"step": step, **metrics}) + "\n")
        f.flush()
        if on_evaluation is not None and on_evaluation(step, metrics):
          status = "pruned"
          break
    summary = {"status": status, "step": step, "final": metrics}
    write_json(os.path.join(workdir, SUMMARY_FILE), summary)
    return summary

  return train_and_evaluate


def study_of(s, sweepdir) -> optuna.Study:
  return optuna.load_study(study_name=s.name, storage=studies.default_storage(str(sweepdir)))


def records(sweepdir) -> list[dict]:
  trials = os.path.join(sweepdir, "trials")
  return [read_json(os.path.join(trials, d, TRIAL_FILE)) for d in sorted(os.listdir(trials))]


def test_replicates_run_point_after_point_with_the_seed_in_their_ids(tmp_path, monkeypatch, capsys):
  calls = []
  monkeypatch.setattr(runner, "train_and_evaluate", stand_in_runner(calls, lambda c, step: c.model.num_heads / step))
  s = tiny_sweep(str(tmp_path / "data"), values=(1, 2))
  s.replicates = 3
  s.fixed.train.seed = 10
  assert engine.run(s, str(tmp_path)) == {"COMPLETE": 6}
  # The first point's three seeds, then the second's: a half-finished sweep already has its first intervals.
  assert [(c.model.num_heads, c.train.seed) for c in calls] == [(1, 10), (1, 11), (1, 12), (2, 10), (2, 11), (2, 12)]
  rows = records(tmp_path)
  for row in rows:
    point = space.trial_id(s, {"model.num_heads": row["overrides"]["model.num_heads"]})
    assert row["point"] == point and row["seed"] == 10 + row["replicate"] and row["replicates"] == 3
    # The id is the point's slug with the seed, and a hash of the seed too: replicates differ by their seed only.
    assert re.fullmatch(re.escape(re.sub(r"-[0-9a-f]{8}$", "", point)) + rf"_seed-{row['seed']}-[0-9a-f]{{8}}",
                        row["id"]), row["id"]
  assert len({row["id"] for row in rows}) == 6 and len({row["point"] for row in rows}) == 2
  for t in study_of(s, tmp_path).trials:  # every evaluation is an intermediate value of its trial
    heads = t.params["model.num_heads"]
    assert t.intermediate_values == {step: pytest.approx(heads / step) for step in (1, 2, 3)}
  assert study_of(s, tmp_path).metric_names == ["eval/loss"]
  lines = capsys.readouterr().err.splitlines()
  assert len([line for line in lines if line.startswith("trial ")]) == 6
  assert any(re.fullmatch(r"trial num_heads-1_seed-10-[0-9a-f]{8}: completed, eval/loss 0\.3333, step 3, \d+ s", line)
             for line in lines), lines
  assert any(line.startswith("sweep tiny: 6/6 trials ended, 0 running") for line in lines), lines

  assert engine.run(s, str(tmp_path)) == {"COMPLETE": 6} and len(calls) == 6  # a rerun trains nothing
  s.replicates = 4  # more seeds later: only the new replicates train
  assert engine.run(s, str(tmp_path)) == {"COMPLETE": 8}
  assert [(c.model.num_heads, c.train.seed) for c in calls[6:]] == [(1, 13), (2, 13)]


def test_one_replicate_keeps_the_ids_sweeps_had_before_replicates(tmp_path, monkeypatch):
  monkeypatch.setattr(runner, "train_and_evaluate", stand_in_runner([], lambda c, step: 1.0))
  s = tiny_sweep(str(tmp_path / "data"), values=(1, 2))
  assert engine.run(s, str(tmp_path)) == {"COMPLETE": 2}
  assert sorted(os.listdir(tmp_path / "trials")) == sorted(
      space.trial_id(s, {"model.num_heads": h}) for h in (1, 2))
  assert {row["seed"] for row in records(tmp_path)} == {0}  # the base config's, not in the id


def test_a_pruned_point_runs_none_of_its_other_replicates(tmp_path, monkeypatch):
  calls = []

  def loss(config, step):  # higher learning rates are worse from the first evaluation on
    return config.optimizer.learning_rate * 1e3 / step

  monkeypatch.setattr(runner, "train_and_evaluate", stand_in_runner(calls, loss))
  s = tiny_sweep(str(tmp_path / "data"))
  s.sampler, s.num_trials, s.replicates, s.pruner = "random", 8, 2, "median"
  s.parameters = [{"path": "optimizer.learning_rate", "low": 1e-4, "high": 1e-2, "log": True}]
  s.fixed.train.eval_every = 1
  counts = engine.run(s, str(tmp_path))
  trials = study_of(s, tmp_path).trials
  pruned = {t.user_attrs["point"] for t in trials if t.state == optuna.trial.TrialState.PRUNED}
  completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
  assert pruned, counts  # the median pruner stops some points once five trials completed
  assert len(pruned) + len(completed) // 2 == 8 and sum(counts.values()) == len(pruned) + len(completed)
  for t in trials:  # a pruned point is its first replicate alone; every other point has both
    same_point = [u for u in trials if u.user_attrs["point"] == t.user_attrs["point"]]
    assert len(same_point) == (1 if t.user_attrs["point"] in pruned else 2)
    if t.state == optuna.trial.TrialState.PRUNED:
      assert t.user_attrs["replicate"] == 0 and max(t.intermediate_values) == t.user_attrs["pruned_at"] < 3
      assert read_json(os.path.join(tmp_path, "trials", t.user_attrs["trial_id"], TRIAL_FILE))["status"] == "pruned"


@pytest.mark.parametrize("change, message", [
    ({"replicates": 0}, "replicates=0: give the number of seeds per point, an integer >= 1"),
    ({"pruner": "hyperband"}, "pruner='hyperband' is unknown: expected one of none, median, successive_halving"),
    ({"pruner": "median"}, "pruner='median' needs sampler 'random' or 'tpe'"),
])
def test_bad_replicates_and_pruners_are_one_line_each(tmp_path, change, message):
  s = tiny_sweep(str(tmp_path / "data"))
  for key, value in change.items():
    s[key] = value
  with pytest.raises(engine.SweepError) as error:
    engine.run(s, str(tmp_path / "sweep"))
  assert str(error.value).startswith(message) and len(str(error.value).splitlines()) == 1, str(error.value)
  assert not (tmp_path / "sweep").exists()


def test_a_pruner_without_evaluations_during_training_is_refused(tmp_path):
  s = tiny_sweep(str(tmp_path / "data"))
  s.sampler, s.num_trials, s.pruner = "random", 2, "median"
  with pytest.raises(engine.SweepError, match=r"train.eval_every=0: the pruner 'median' decides at evaluations"):
    engine.run(s, str(tmp_path / "sweep"))


@pytest.mark.parametrize("pruner, queued", [("none", 2), ("median", 0)])
def test_a_running_first_replicate_has_its_siblings_queued_at_once_only_without_a_pruner(tmp_path, pruner, queued):
  s = tiny_sweep(str(tmp_path / "data"))
  s.sampler, s.num_trials, s.replicates, s.pruner = "random", 1, 3, pruner
  s.parameters = [{"path": "optimizer.learning_rate", "low": 1e-4, "high": 1e-2, "log": True}]
  study = studies.open_study(s, studies.default_storage(str(tmp_path)))
  leader = study.ask()  # as trials.run_trial leaves the point the sampler chose, while it trains
  leader.suggest_float("optimizer.learning_rate", 1e-4, 1e-2, log=True)
  overrides = space.overrides_of(s, leader.params)
  leader.set_user_attr("point", space.trial_id(s, overrides))
  leader.set_user_attr("trial_id", space.trial_id(s, space.replicate_overrides(s, overrides, 0)))
  # Without a pruner the sweep waits for the point's other replicates; with one, this worker has nothing to do
  # until the first replicate ended (its own worker queues them then).
  assert studies.finished(study, s) == (queued == 0)
  waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
  assert sorted(t.user_attrs["replicate"] for t in waiting) == [1, 2][:queued]
  assert all(t.system_attrs["fixed_params"] == leader.params for t in waiting)
  assert studies.finished(study, s) == (queued == 0)  # queued once: a second look adds nothing
  assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == queued
  study.tell(leader, 0.5)  # the first replicate ended unpruned: now its siblings are queued in any case
  assert not studies.finished(study, s)
  waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
  assert sorted(t.user_attrs["replicate"] for t in waiting) == [1, 2]


@pytest.mark.slow
def test_a_trained_sweep_of_2_points_by_3_seeds_gives_points_with_intervals_vectorised_or_not(tfds_data_dir, tmp_path):
  s = tiny_sweep(tfds_data_dir, values=(1, 2))
  s.replicates = 3
  s.fixed.train.eval_every = 1
  s.fixed.train.stop_when = "eval/loss<=1e9"  # met at the first evaluation: every seed stops at step 1
  assert engine.run(s, str(tmp_path)) == {"COMPLETE": 6}
  for t in study_of(s, tmp_path).trials:
    assert list(t.intermediate_values) == [1] and t.value == pytest.approx(t.intermediate_values[1])
  written = report.report(str(tmp_path))
  with open(os.path.join(tmp_path, "results.csv"), encoding="utf-8") as f:
    trials = list(csv.DictReader(f))
  with open(os.path.join(tmp_path, "points.csv"), encoding="utf-8") as f:
    points = list(csv.DictReader(f))
  assert len(trials) == 6 and {row["seed"] for row in trials} == {"0", "1", "2"}
  assert [(row["model.num_heads"], row["n"], row["planned"]) for row in points] == [("1", "3", "3"), ("2", "3", "3")]
  for point in points:  # the interval, again from the trials' own rows
    losses = np.array([float(row["final eval/loss"]) for row in trials if row["point"] == point["point"]])
    half = 4.302652729911275 * losses.std(ddof=1) / np.sqrt(3)  # t(0.975, df=2)
    assert float(point["final eval/loss mean"]) == pytest.approx(losses.mean(), rel=1e-6)
    assert float(point["final eval/loss low"]) == pytest.approx(losses.mean() - half, rel=1e-6)
    assert float(point["final eval/loss high"]) == pytest.approx(losses.mean() + half, rel=1e-6)
    assert point["reached"] == "3" and point["median steps to target"] == "1"
  assert {"points.csv", "points.md", "eval_curves.png", "steps_to_target.png"} <= set(written["files"])
  # The same sweep vectorised: one population per point, each member its own trial, the same points.
  s.vectorize = True
  vectorised = tmp_path / "vectorised"
  assert engine.run(s, str(vectorised)) == {"COMPLETE": 6}
  assert len(os.listdir(vectorised / "populations")) == 2
  assert all(list(t.intermediate_values) == [1] for t in study_of(s, vectorised).trials)
  report.report(str(vectorised))
  with open(vectorised / "points.csv", encoding="utf-8") as f:
    vectorised_points = list(csv.DictReader(f))
  assert [p["point"] for p in vectorised_points] == [p["point"] for p in points]
  for single, member in zip(points, vectorised_points):
    assert (member["n"], member["reached"], member["median steps to target"]) == ("3", "3", "1")
    for column in ("final eval/loss mean", "final eval/loss low", "final eval/loss high"):
      assert float(member[column]) == pytest.approx(float(single[column]), rel=1e-5)


def test_the_progress_line_counts_trials_and_estimates_the_time_left():
  progress = {"planned": 12, "done": 4, "failed": 1, "running": 1, "mean_wall_sec": 100.0}
  # 8 trials left at 100 s each, two at a time (the one running and this worker's next): 400 s.
  assert engine.progress_line(progress, "s") == "sweep s: 4/12 trials ended (1 failed), 1 running, about 7 min left"
  progress.update(done=11, running=0, mean_wall_sec=60.0)  # the last one alone: 60 s
  assert engine.progress_line(progress, "s") == "sweep s: 11/12 trials ended (1 failed), 0 running, about 60 s left"


def test_a_queued_trial_taken_but_not_yet_claimed_is_not_queued_again(tmp_path):
  s = tiny_sweep(str(tmp_path / "data"), values=(1, 2))
  study = studies.open_study(s, studies.default_storage(str(tmp_path)))
  assert not studies.finished(study, s)  # queues both points
  study.ask()  # a worker took the first and has not claimed it yet (no trial_id): another worker looks now
  assert not studies.finished(study, s)
  waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
  assert len(waiting) == 1 and len(study.trials) == 2

"""End-to-end tests of experiments.sweep: trials, reruns, failures, interruptions, parallel workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from ml_collections import ConfigDict

from experiments import validation
from experiments.sweeps import engine, space, studies
from tests.helpers import config_files, postgres
from tests.helpers.metrics import train_losses
from tests.helpers.sweeps import tiny_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def study_of(s: ConfigDict, sweepdir: str, storage: str | None = None) -> optuna.Study:
  return optuna.load_study(study_name=s.name, storage=storage or studies.default_storage(sweepdir))


def trial_dirs(sweepdir) -> dict[str, str]:
  trials = os.path.join(sweepdir, "trials")
  return {d: os.path.join(trials, d) for d in sorted(os.listdir(trials))}


def logged_steps(trial_dir: str) -> list[int]:
  return [step for step, _ in train_losses(trial_dir)]


@pytest.mark.slow
def test_tiny_sweep_end_to_end_and_a_rerun_trains_nothing(tfds_data_dir, tmp_path):
  s = tiny_sweep(tfds_data_dir)
  counts = engine.run(s, str(tmp_path))
  assert counts == {"COMPLETE": 3}
  expected = {space.trial_id(s, {"model.num_heads": h}) for h in (1, 2, 4)}
  dirs = trial_dirs(tmp_path)
  assert set(dirs) == expected and len(expected) == 3
  study = study_of(s, str(tmp_path))
  for t in study.trials:
    trial_dir = dirs[t.user_attrs["trial_id"]]
    summary = json.loads(open(os.path.join(trial_dir, "summary.json")).read())
    saved = json.loads(open(os.path.join(trial_dir, "config.json")).read())
    assert summary["status"] == "completed" and logged_steps(trial_dir) == [1, 2, 3]
    assert t.value == pytest.approx(summary["final"]["eval/loss"])
    assert saved["model"]["num_heads"] == t.params["model.num_heads"]  # the trial trained its own point
    assert saved["model"]["d_model"] == 32  # and the fixed overrides
  before = {d: os.stat(os.path.join(p, "metrics.jsonl")).st_mtime_ns for d, p in dirs.items()}

  assert engine.run(s, str(tmp_path)) == {"COMPLETE": 3}  # no new trial, nothing retrained
  assert {d: os.stat(os.path.join(p, "metrics.jsonl")).st_mtime_ns for d, p in dirs.items()} == before


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_others_finish(tfds_data_dir, tmp_path):
  s = tiny_sweep(tfds_data_dir, values=(3e-3, 1e30), path="optimizer.learning_rate")
  s.fixed.optimizer.end_learning_rate = 1e-5
  assert engine.run(s, str(tmp_path)) == {"COMPLETE": 1, "FAIL": 1}
  failed = study_of(s, str(tmp_path)).get_trials(states=(optuna.trial.TrialState.FAIL,))[0]
  assert failed.params["optimizer.learning_rate"] == 1e30
  assert "NonFiniteLoss" in failed.user_attrs["error"] and "NaN" in failed.user_attrs["error"]
  record = json.loads(open(os.path.join(tmp_path, "trials", failed.user_attrs["trial_id"], "trial.json")).read())
  assert record["status"] == "failed" and "NaN" in record["error"]
  assert engine.run(s, str(tmp_path)) == {"COMPLETE": 1, "FAIL": 1}  # a failure is final, not retried
  assert engine.run(s, str(tmp_path), retry=True) == {"COMPLETE": 1, "FAIL": 2}  # unless asked: it fails again
  assert engine.run(s, str(tmp_path), retry=True) == {"COMPLETE": 1, "FAIL": 3}  # the latest failure is retried


def test_invalid_trials_are_reported_before_anything_runs(tmp_path):
  s = tiny_sweep(str(tmp_path / "data"), values=(2, 3))  # 3 heads do not divide d_model 32
  s.parameters.append({"path": "model.num_head", "values": [1]})
  with pytest.raises(engine.SweepError) as error:
    engine.run(s, str(tmp_path / "sweep"))
  lines = str(error.value).splitlines()
  assert any(line.startswith("model.num_head:") for line in lines), lines
  s.parameters.pop()
  with pytest.raises(engine.SweepError) as error:
    engine.run(s, str(tmp_path / "sweep"))
  assert str(error.value).startswith("trial num_heads-3: model.num_heads"), str(error.value)
  assert not (tmp_path / "sweep").exists() and not (tmp_path / "data").exists()


@pytest.mark.slow
def test_a_trial_interrupted_in_process_is_requeued_and_resumed(tfds_data_dir, tmp_path, monkeypatch):
  from experiments import runner

  s = tiny_sweep(tfds_data_dir, values=(1, 2))
  real = runner.train_and_evaluate
  calls = []

  def interrupt_the_second(config, workdir):
    calls.append(workdir)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(config, workdir)

  monkeypatch.setattr(runner, "train_and_evaluate", interrupt_the_second)
  with pytest.raises(KeyboardInterrupt):
    engine.run(s, str(tmp_path))
  states = [t.state.name for t in study_of(s, str(tmp_path)).trials]
  assert sorted(states) == ["COMPLETE", "FAIL", "WAITING"]
  monkeypatch.setattr(runner, "train_and_evaluate", real)
  assert engine.run(s, str(tmp_path)) == {"COMPLETE": 2, "FAIL": 1}
  interrupted = study_of(s, str(tmp_path)).get_trials(states=(optuna.trial.TrialState.FAIL,))[0]
  assert interrupted.user_attrs["interrupted"] == "KeyboardInterrupt"
  assert len(calls) == 2 and logged_steps(calls[0]) == [1, 2, 3]  # the finished trial ran once


SWEEP_FILE = """
from ml_collections import ConfigDict
from configs.sweeps import heads
def get_config():
  c = heads.get_config()
  c.name = "killed"
  c.fixed = ConfigDict({fixed!r})
  c.parameters = [{{"path": "model.num_heads", "values": [1, 2, 4]}}]
  return c
"""


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_rerunning_finished_trials(tfds_data_dir, tmp_path):
  """SIGKILL the whole sweep mid-trial (no chance to save or record), then rerun the same sweep."""
  steps = 80
  fixed = tiny_sweep(tfds_data_dir, steps=steps).fixed.to_dict()
  config_file = tmp_path / "killed_sweep.py"
  config_file.write_text(SWEEP_FILE.format(fixed=fixed))
  sweepdir = tmp_path / "sweep"
  log = open(tmp_path / "sweep.log", "w+", encoding="utf-8")  # a file, not a pipe nobody reads while it fills
  process = subprocess.Popen([sys.executable, "-m", "experiments.sweep", f"--config={config_file}",
                              f"--workdir={sweepdir}", "--workers=1"], cwd=REPO, stdout=log, stderr=log,
                             start_new_session=True)
  victim = None
  try:
    deadline = time.time() + 240
    while time.time() < deadline and victim is None and process.poll() is None:
      time.sleep(0.1)
      if not (sweepdir / "trials").exists():
        continue
      dirs = trial_dirs(sweepdir)
      done = [d for d, p in dirs.items() if os.path.exists(os.path.join(p, "summary.json"))]
      started = [d for d, p in dirs.items() if d not in done and len(logged_steps(p)) >= 12]
      if done and started:
        victim = started[0]
        os.killpg(process.pid, signal.SIGKILL)
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
    process.wait()
  assert victim is not None, f"no trial was caught mid-run: {(tmp_path / 'sweep.log').read_text()[-3000:]}"
  dirs = trial_dirs(sweepdir)
  finished = {d: open(os.path.join(p, "metrics.jsonl")).read() for d, p in dirs.items()
              if os.path.exists(os.path.join(p, "summary.json"))}
  killed_at = max(logged_steps(dirs[victim]))

  s = space.load_config_file(str(config_file))
  assert engine.run(s, str(sweepdir)) == {"COMPLETE": 3, "FAIL": 1}
  dirs = trial_dirs(sweepdir)
  assert len(dirs) == 3
  for d, text in finished.items():  # finished trials untouched
    assert open(os.path.join(dirs[d], "metrics.jsonl")).read() == text
  steps_logged = logged_steps(dirs[victim])
  assert steps_logged.count(1) == 1, "the interrupted trial restarted from scratch instead of resuming"
  assert max(steps_logged) == steps and killed_at < steps
  assert set(range(1, steps + 1)) <= set(steps_logged)
  stale = study_of(s, str(sweepdir)).get_trials(states=(optuna.trial.TrialState.FAIL,))[0]
  assert stale.user_attrs["trial_id"] == victim and stale.user_attrs["interrupted"] == "its process died"


def _two_workers(s: ConfigDict, sweepdir: str, storage: str | None) -> None:
  """Runs a 4-point grid with two worker processes on one study; asserts every point trained exactly once."""
  counts = engine.run(s, sweepdir, storage, workers=2)
  study = study_of(s, sweepdir, storage)
  complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
  trained = [t.user_attrs["trial_id"] for t in complete if not t.user_attrs.get("reused")]
  assert sorted(trained) == sorted(set(trained)) and len(trained) == 4, counts
  dirs = trial_dirs(sweepdir)
  assert set(dirs) == set(trained)
  for trial_dir in dirs.values():
    assert logged_steps(trial_dir) == [1, 2, 3]  # one run each: a second would append its steps again
  assert counts.get("FAIL", 0) == 0 and counts.get("RUNNING", 0) == 0


@pytest.mark.slow
def test_two_workers_share_a_sqlite_study(tfds_data_dir, tmp_path):
  _two_workers(tiny_sweep(tfds_data_dir, values=(1, 2, 4, 8)), str(tmp_path), None)


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(tfds_data_dir, tmp_path):
  with postgres.server() as url:  # skips without PostgreSQL, fails in CI
    _two_workers(tiny_sweep(tfds_data_dir, values=(1, 2, 4, 8)), str(tmp_path), url)


@pytest.mark.parametrize("name", config_files.names("configs.sweeps"))
def test_every_sweep_config_validates(name):
  s = config_files.load(name, None, "configs.sweeps")  # the CPU scale: every trial validates, with its own id
  assert space.validate_trials(s, device_count=1) == [], name
  ids = [space.trial_id(s, space.overrides_of(s, p)) for p in space.grid_points(s)]
  assert len(set(ids)) == len(ids)
  # Other scales: the sweep itself and its first trial (each point costs a model).
  for scale in config_files.variants(name, "configs.sweeps"):
    s = config_files.load(name, scale, "configs.sweeps")
    first = space.trial_config(s, space.grid_points(s)[0])
    assert space.check_sweep(s) + validation.validate(first, device_count=1, process_count=1) == [], scale

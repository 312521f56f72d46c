"""End-to-end tests of experiments.sweep: trials, reruns, failures, interruptions, parallel workers."""

from __future__ import annotations

import contextlib
import fcntl
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
from experiments.files import write_json
from experiments.sweeps import engine, results, space, studies, trials
from tests.helpers import config_files, postgres
from tests.helpers.metrics import train_losses, written_steps
from tests.helpers.sweeps import tiny_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def study_of(s: ConfigDict, sweepdir: str, storage: str | None = None) -> optuna.Study:
  return optuna.load_study(study_name=s.name, storage=storage or studies.default_storage(sweepdir))


def trial_dirs(sweepdir) -> dict[str, str]:
  trials = os.path.join(sweepdir, "trials")
  return {d: os.path.join(trials, d) for d in sorted(os.listdir(trials))}


def logged_steps(trial_dir: str) -> list[int]:
  """The steps with a train row, one each (read_metrics keeps a resumed step's last attempt)."""
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

  def interrupt_the_second(config, workdir, **kwargs):
    calls.append(workdir)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(config, workdir, **kwargs)

  monkeypatch.setattr(runner, "train_and_evaluate", interrupt_the_second)
  with pytest.raises(KeyboardInterrupt):
    engine.run(s, str(tmp_path))
  states = [t.state.name for t in study_of(s, str(tmp_path)).trials]
  assert sorted(states) == ["COMPLETE", "FAIL", "WAITING"]
  monkeypatch.setattr(runner, "train_and_evaluate", real)
  assert engine.run(s, str(tmp_path)) == {"COMPLETE": 2, "FAIL": 1}
  interrupted = study_of(s, str(tmp_path)).get_trials(states=(optuna.trial.TrialState.FAIL,))[0]
  assert interrupted.user_attrs["interrupted"] == "KeyboardInterrupt"
  assert len(calls) == 2 and written_steps(calls[0]) == [1, 2, 3]  # the finished trial ran once


SWEEP_FILE = """
from ml_collections import ConfigDict
from configs.sweeps import heads
def get_config():
  c = heads.get_config()
  c.name = {name!r}
  c.fixed = ConfigDict({fixed!r})
  c.parameters = [{{"path": "model.num_heads", "values": {values!r}}}]
  c.replicates, c.vectorize, c.workers = 1, False, 2  # one trial per point, each a process of its own
  return c
"""


def write_sweep_file(tmp_path, name: str, fixed: dict, values: list[int]) -> str:
  """A sweep config file over model.num_heads, for the tests that run the sweep command."""
  path = tmp_path / f"{name}_sweep.py"
  path.write_text(SWEEP_FILE.format(name=name, fixed=fixed, values=values))
  return str(path)


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_rerunning_finished_trials(tfds_data_dir, tmp_path):
  """SIGKILL the whole sweep mid-trial (no chance to save or record), then rerun the same sweep."""
  steps = 80
  fixed = tiny_sweep(tfds_data_dir, steps=steps).fixed.to_dict()
  config_file = write_sweep_file(tmp_path, "killed", fixed, [1, 2, 4])
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
  assert written_steps(dirs[victim]).count(1) == 1, "the interrupted trial restarted from scratch instead of resuming"
  assert logged_steps(dirs[victim]) == list(range(1, steps + 1)) and killed_at < steps
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
    assert written_steps(trial_dir) == [1, 2, 3]  # one run each: a second would append its steps again
  assert counts.get("FAIL", 0) == 0 and counts.get("RUNNING", 0) == 0


@pytest.mark.slow
def test_two_workers_share_a_sqlite_study(tfds_data_dir, tmp_path):
  _two_workers(tiny_sweep(tfds_data_dir, values=(1, 2, 4, 8)), str(tmp_path), None)


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(tfds_data_dir, tmp_path):
  with postgres.server() as url:  # skips without PostgreSQL, fails in CI
    _two_workers(tiny_sweep(tfds_data_dir, values=(1, 2, 4, 8)), str(tmp_path), url)


def _claimed_trial(s: ConfigDict, sweepdir: str, worker: str, started: float) -> tuple[optuna.Study, str]:
  """A RUNNING trial of the sweep's first grid point, claimed and recorded as run_trial leaves it mid-training."""
  os.makedirs(sweepdir, exist_ok=True)
  study = studies.open_study(s, studies.default_storage(sweepdir))
  trial = study.ask()
  studies.suggest(trial, s)  # the parameters as a worker asks for them
  point = space.trial_id(s, space.overrides_of(s, trial.params))
  trial.set_user_attr("trial_id", point)
  os.makedirs(os.path.join(sweepdir, "trials", point))
  write_json(os.path.join(sweepdir, "trials", point, "trial.json"),
             {"id": point, "status": "running", "worker": worker, "attempts": [{"start": started}]})
  return study, point


def test_recover_stale_requeues_a_dead_trial_and_closes_its_attempt(tmp_path):
  """The attempt of a process that died lasted until its last write (here 42 s after it started)."""
  s = tiny_sweep(str(tmp_path / "data"), values=(2,))
  study, point = _claimed_trial(s, str(tmp_path), "gone:1", started=1000.0)
  trial_dir = os.path.join(tmp_path, "trials", point)
  with open(os.path.join(trial_dir, "metrics.jsonl"), "w", encoding="utf-8") as f:
    f.write('{"step": 1, "train/loss": 3.0}\n')
  for name in ("trial.json", "metrics.jsonl"):
    os.utime(os.path.join(trial_dir, name), (1000.0, {"trial.json": 1000.0, "metrics.jsonl": 1042.0}[name]))
  trials.recover_stale(study, s, str(tmp_path))
  (dead,) = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
  (queued,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
  assert dead.user_attrs["interrupted"] == "its process died" and queued.system_attrs["fixed_params"] == dead.params
  record = json.loads(open(os.path.join(trial_dir, "trial.json")).read())
  assert record["status"] == "interrupted" and record["attempts"] == [{"start": 1000.0, "wall_sec": 42.0}]
  assert trials.unfinished(study, str(tmp_path)).startswith("1 trials are unfinished and no process runs them")


def test_a_sweep_whose_trial_trains_in_another_process_is_not_finished(tmp_path):
  """Its workers have nothing to do, but the sweep is not done: run() says which trial and where, not a count."""
  s = tiny_sweep(str(tmp_path / "data"), values=(2,))
  study, point = _claimed_trial(s, str(tmp_path), "elsewhere:123", started=time.time())
  with open(os.path.join(tmp_path, "trials", point, ".claim"), "a+") as claim:
    fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the live process that trains it holds it
    with pytest.raises(engine.Unfinished) as error:
      engine.run(s, str(tmp_path))
  assert error.value.counts == {"RUNNING": 1}
  message = str(error.value)
  assert len(message.splitlines()) == 1 and point in message and "elsewhere:123" in message, message
  assert studies.state_counts(study) == {"RUNNING": 1}  # a live trial is left alone


def test_a_trial_dead_when_the_workers_end_is_requeued_not_counted_running(tmp_path, monkeypatch):
  """Its process died after the workers last looked (here they do nothing): the counts say so, and the error."""
  s = tiny_sweep(str(tmp_path / "data"), values=(2,))
  _claimed_trial(s, str(tmp_path), "gone:1", started=time.time())
  monkeypatch.setattr(engine, "work", lambda *args, **kwargs: 0)
  with pytest.raises(engine.Unfinished) as error:
    engine.run(s, str(tmp_path))
  assert error.value.counts == {"FAIL": 1, "WAITING": 1}
  assert str(error.value) == "1 trials are unfinished and no process runs them: rerun the same command to run them"


def _children(pid: int) -> list[int]:
  """The pids of the processes whose parent is `pid` (Linux /proc)."""
  found = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        stat = open(f"/proc/{entry}/stat").read()
      except OSError:
        continue
      if int(stat.rpartition(")")[2].split()[1]) == pid:
        found.append(int(entry))
  return found


def _alive(pid: int) -> bool:
  """Whether `pid` runs (a zombie that nobody reaped is gone)."""
  try:
    return open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] != "Z"
  except OSError:
    return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with their parent through Linux prctl")
def test_workers_die_with_a_killed_parent_and_a_rerun_resumes_their_trials(tfds_data_dir, tmp_path):
  """SIGKILL only the sweep command of two workers mid-trial: its workers stop too, and the rerun resumes."""
  steps = 100
  fixed = tiny_sweep(tfds_data_dir, steps=steps).fixed.to_dict()
  config_file = write_sweep_file(tmp_path, "orphans", fixed, [1, 2])
  sweepdir = tmp_path / "sweep"
  log = open(tmp_path / "sweep.log", "w+", encoding="utf-8")
  process = subprocess.Popen([sys.executable, "-m", "experiments.sweep", f"--config={config_file}",
                              f"--workdir={sweepdir}", "--workers=2"], cwd=REPO, stdout=log, stderr=log,
                             start_new_session=True)
  workers, alive, victim = [], [], None
  try:
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
      time.sleep(0.05)
      dirs = trial_dirs(sweepdir) if (sweepdir / "trials").exists() else {}
      running = [d for d, p in dirs.items()
                 if len(logged_steps(p)) >= 2 and not os.path.exists(os.path.join(p, "summary.json"))]
      if running:
        victim, workers = running[0], _children(process.pid)
        os.kill(process.pid, signal.SIGKILL)  # the parent alone, as `kill -9 <pid>` does
        break
    process.wait()
    killed = time.time()
    alive = list(workers)
    while alive and time.time() < killed + 20:
      time.sleep(0.1)
      alive = [pid for pid in workers if _alive(pid)]
  finally:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(process.pid, signal.SIGKILL)  # whatever outlived the test's wait
  output = (tmp_path / "sweep.log").read_text()[-3000:]
  assert victim is not None and len(workers) >= 2, f"no trial was caught mid-run: {output}"
  assert not alive, f"workers {alive} outlived their killed parent: {output}"

  s = space.load_config_file(config_file)
  stopped = study_of(s, str(sweepdir)).get_trials(states=(optuna.trial.TrialState.FAIL,))
  # The victim's worker got SIGTERM in its training loop: it saved a checkpoint and requeued the trial itself.
  reasons = {t.user_attrs["trial_id"]: t.user_attrs["interrupted"] for t in stopped}
  assert reasons.get(victim, "").startswith("stopped by SIGTERM"), f"{victim} trained on as an orphan: {reasons}"
  # A worker that the signal caught before it could requeue (asking for its trial, under load) leaves it RUNNING:
  # the rerun finds its process gone and requeues it, so it ends as one more interrupted attempt, then completes.
  orphaned = [t.user_attrs["trial_id"] for t in study_of(s, str(sweepdir)).get_trials(
      states=(optuna.trial.TrialState.RUNNING,)) if "trial_id" in t.user_attrs]
  assert engine.run(s, str(sweepdir)) == {"COMPLETE": 2, "FAIL": len(stopped) + len(orphaned)}
  rows = {row["trial"]: row for row in results.collect(str(sweepdir))[0]}
  assert all(rows[point]["status"] == "completed" for point in orphaned), rows
  for t in stopped:
    trial_dir = trial_dirs(sweepdir)[t.user_attrs["trial_id"]]
    assert written_steps(trial_dir).count(1) == 1, "the stopped trial restarted instead of resuming"
    assert logged_steps(trial_dir) == list(range(1, steps + 1))
    attempts = json.loads(open(os.path.join(trial_dir, "trial.json")).read())["attempts"]
    summary = json.loads(open(os.path.join(trial_dir, "summary.json")).read())
    assert len(attempts) == 2 and rows[t.user_attrs["trial_id"]]["status"] == "completed"
    assert rows[t.user_attrs["trial_id"]]["wall s"] == pytest.approx(sum(a["wall_sec"] for a in attempts))
    assert attempts[0]["wall_sec"] > 0 and attempts[1]["wall_sec"] >= summary["wall_time_sec"]


@pytest.mark.slow
def test_the_command_exits_3_while_a_trial_trains_elsewhere_then_a_rerun_resumes_it(tfds_data_dir, tmp_path):
  """One line and status 3 while another process holds the trial; once that process is gone, the rerun trains it."""
  s = tiny_sweep(tfds_data_dir, values=(2,))
  config_file = write_sweep_file(tmp_path, s.name, s.fixed.to_dict(), [2])
  s = space.load_config_file(config_file)
  sweepdir = str(tmp_path / "sweep")
  _, point = _claimed_trial(s, sweepdir, "elsewhere:123", started=time.time())
  with open(os.path.join(sweepdir, "trials", point, ".claim"), "a+") as claim:
    fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
    result = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--config={config_file}",
                             f"--workdir={sweepdir}"], cwd=REPO, capture_output=True, text=True, timeout=300,
                            check=False)
  assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("not finished:")]
  assert len(lines) == 1 and point in lines[0] and "elsewhere:123" in lines[0], result.stderr[-3000:]
  assert json.loads(result.stdout.splitlines()[-1]) == {"RUNNING": 1}

  assert engine.run(s, sweepdir) == {"COMPLETE": 1, "FAIL": 1}  # its claim is free now: the process died
  trial_dir = os.path.join(sweepdir, "trials", point)
  attempts = json.loads(open(os.path.join(trial_dir, "trial.json")).read())["attempts"]
  assert len(attempts) == 2 and all("wall_sec" in a for a in attempts)
  assert written_steps(trial_dir) == [1, 2, 3]


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

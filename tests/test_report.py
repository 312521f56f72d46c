"""Tests of experiments.report on a finished sweep, a sweep still running, and a single run's workdir, and of the
files it reads (metrics.jsonl after a resume, the attempts of a resumed trial)."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil
import subprocess
import sys

import pytest

from experiments.files import read_metrics
from experiments.runner import train_and_evaluate
from experiments.sweeps import engine, report, results
from experiments.sweeps.space import load_config_file
from tests.helpers.sweeps import tiny_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def finished_sweep(tfds_data_dir, tmp_path_factory) -> str:
  """A two-trial sweep run to the end, shared by the tests of this file (they copy it before changing it)."""
  sweepdir = str(tmp_path_factory.mktemp("finished_sweep"))
  assert engine.run(tiny_sweep(tfds_data_dir, values=(1, 2), steps=4), sweepdir) == {"COMPLETE": 2}
  return sweepdir


def read_csv(path: str) -> list[dict[str, str]]:
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def assert_png(path: str) -> None:
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC, path
  assert os.path.getsize(path) > 2000, path  # a drawn figure, not an empty canvas


@pytest.mark.slow
def test_report_of_a_finished_sweep(finished_sweep, tmp_path):
  sweepdir = shutil.copytree(finished_sweep, tmp_path / "sweep")
  result = report.report(str(sweepdir))
  rows = read_csv(os.path.join(sweepdir, "results.csv"))
  assert sorted(r["model.num_heads"] for r in rows) == ["1", "2"]
  assert all(r["status"] == "completed" and r["step"] == "4" for r in rows)
  losses = [float(r["final eval/loss"]) for r in rows]
  assert losses == sorted(losses), "best (lowest eval/loss, the sweep's metric) first"
  for r in rows:
    summary = json.loads((sweepdir / "trials" / r["trial"] / "summary.json").read_text())
    assert float(r["final eval/loss"]) == pytest.approx(summary["final"]["eval/loss"])
    assert int(r["parameters"]) == summary["parameters"] and float(r["tokens/s"]) > 0
  table = (sweepdir / "results.md").read_text()
  assert table.startswith("2 trials (2 completed)") and table.count("| completed |") == 2
  assert "eval_loss_vs_model_num_heads.png" in result["files"]
  for name in result["files"]:
    if name.endswith(".png"):
      assert_png(os.path.join(sweepdir, name))


@pytest.mark.slow
def test_report_of_a_sweep_still_running(finished_sweep, tmp_path):
  """A trial in progress (its claim held, no summary yet) and one whose process died (claim free)."""
  sweepdir = shutil.copytree(finished_sweep, tmp_path / "sweep")
  source = sorted((sweepdir / "trials").iterdir())[0]
  lines = (source / "metrics.jsonl").read_text().splitlines()
  for name in ("num_heads-4-running", "num_heads-8-dead"):
    trial_dir = sweepdir / "trials" / name
    trial_dir.mkdir()
    shutil.copy(source / "config.json", trial_dir / "config.json")
    (trial_dir / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")  # two steps logged, no eval yet
    (trial_dir / "trial.json").write_text(json.dumps({"id": name, "status": "running",
                                                      "overrides": {"model.num_heads": int(name.split("-")[1])}}))
  with open(sweepdir / "trials" / "num_heads-4-running" / ".claim", "a+") as claim:
    fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live worker holds it
    report.report(str(sweepdir))
  rows = {r["trial"]: r for r in read_csv(os.path.join(sweepdir, "results.csv"))}
  assert len(rows) == 4
  assert rows["num_heads-4-running"]["status"] == "running"
  assert rows["num_heads-8-dead"]["status"] == "interrupted"
  assert rows["num_heads-4-running"]["final eval/loss"] == "" and rows["num_heads-4-running"]["step"] == "2"
  assert int(rows["num_heads-4-running"]["parameters"]) > 0  # counted from its config while it runs
  assert [r["status"] for r in rows.values()][:2] == ["completed", "completed"], "finished trials rank first"
  assert (sweepdir / "results.md").read_text().startswith("4 trials (2 completed, 1 interrupted, 1 running)")
  assert_png(os.path.join(sweepdir, "loss_curves.png"))


@pytest.mark.slow
def test_report_of_a_single_run_from_the_command_line(tfds_data_dir, tmp_path):
  s = tiny_sweep(tfds_data_dir, steps=3)
  config = load_config_file("configs/default.py")
  for section, values in s.fixed.items():
    config[section].update(values)
  train_and_evaluate(config, str(tmp_path))
  result = subprocess.run([sys.executable, "-m", "experiments.report", f"--workdir={tmp_path}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = read_csv(str(tmp_path / "results.csv"))
  assert len(rows) == 1 and rows[0]["status"] == "completed" and rows[0]["step"] == "3"
  assert "1 trials (1 completed)" in result.stdout
  assert_png(str(tmp_path / "loss_curves.png"))


def test_read_metrics_keeps_one_row_per_step_as_the_last_attempt_wrote_it(tmp_path):
  """A run logged steps 1-4 (an eval row at 2, killed mid-write of 5) and resumed from its checkpoint at 2; that
  attempt logged 3 and 4 (an eval at 4) and was resumed from 3, which logs 4 again: no new step, a repeated key."""
  first = [{"step": 1, "train/loss": 11.0}, {"step": 2, "train/loss": 12.0}, {"step": 2, "eval/loss": 9.0},
           {"step": 3, "train/loss": 13.0}, {"step": 4, "train/loss": 14.0}]
  second = [{"step": 3, "train/loss": 23.0}, {"step": 4, "train/loss": 24.0}, {"step": 4, "eval/loss": 7.0}]
  third = [{"step": 4, "train/loss": 34.0}, {"step": 5, "train/loss": 35.0}]
  with open(tmp_path / "metrics.jsonl", "w", encoding="utf-8") as f:
    f.write("".join(json.dumps(row) + "\n" for row in first) + '{"step": 5, "train/lo')  # the kill cut this line
    f.write("".join(json.dumps(row) + "\n" for row in second + third))
  assert read_metrics(str(tmp_path)) == [
      {"step": 1, "train/loss": 11.0}, {"step": 2, "train/loss": 12.0, "eval/loss": 9.0},
      {"step": 3, "train/loss": 23.0}, {"step": 4, "train/loss": 34.0}, {"step": 5, "train/loss": 35.0}]
  # Resumed from step 2 with another log_every: a step below the last one logged starts an attempt too.
  rows = [{"step": 2, "train/loss": 12.0}, {"step": 4, "train/loss": 14.0}, {"step": 3, "train/loss": 23.0}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
  assert read_metrics(str(tmp_path)) == [rows[0], rows[2]]
  assert read_metrics(str(tmp_path / "absent")) == []


def test_wall_time_sums_every_attempt_of_a_trial(tmp_path):
  """A resumed trial's summary covers only its last attempt; a single run (no trial.json) keeps its summary's."""
  summary = {"status": "completed", "wall_time_sec": 7.0, "parameters": 10}
  for name in ("resumed", "killed", "single"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "metrics.jsonl").write_text('{"step": 1, "train/loss": 3.0}\n')
  (tmp_path / "resumed" / "summary.json").write_text(json.dumps(summary))
  (tmp_path / "single" / "summary.json").write_text(json.dumps(summary))
  (tmp_path / "resumed" / "trial.json").write_text(json.dumps(
      {"status": "completed", "attempts": [{"start": 100.0, "wall_sec": 5.0}, {"start": 200.0, "wall_sec": 7.5}]}))
  # Killed, no rerun yet: its open attempt lasted until its last write, 30 s after it started.
  (tmp_path / "killed" / "trial.json").write_text(json.dumps(
      {"status": "running", "attempts": [{"start": 100.0, "wall_sec": 5.0}, {"start": 1000.0}]}))
  for name in ("trial.json", "metrics.jsonl"):
    os.utime(tmp_path / "killed" / name, (1000.0, 1030.0 if name == "metrics.jsonl" else 1000.0))
  assert results.trial_row(str(tmp_path / "resumed"), [])["wall s"] == 12.5
  killed = results.trial_row(str(tmp_path / "killed"), [])
  assert killed["wall s"] == 35.0 and killed["status"] == "interrupted"
  assert results.trial_row(str(tmp_path / "single"), [])["wall s"] == 7.0

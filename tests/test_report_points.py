"""Tests of the report's point tables and figures on sweep directories written by hand (no training): replicates
grouped into points with t-intervals, partial and unstarted points, steps to target with censored runs."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest

from experiments.files import write_json
from experiments.sweeps import figures, report, results

T_975_DF2 = 4.302652729911275  # the 0.975 quantile of Student's t with 2 degrees of freedom, from a table


def write_sweep(sweepdir, parameters: list[dict], replicates: int) -> None:
  os.makedirs(sweepdir / "trials")
  write_json(str(sweepdir / "sweep.json"), {"name": "points", "parameters": parameters, "replicates": replicates,
                                            "metric": "eval/accuracy", "direction": "maximize", "sampler": "grid",
                                            "num_trials": 0})


def write_trial(sweepdir, point: str, replicate: int, overrides: dict, accuracies: list[float], *,
                eval_every: int = 100, status: str = "completed", stop_when: str = "", steps: int | None = None,
                reached_at: int | None = None) -> str:
  """A trial's files as the sweep and the runner write them: an eval of accuracy (and loss) every eval_every steps."""
  trial = f"{point}-r{replicate}"
  trial_dir = sweepdir / "trials" / trial
  os.makedirs(trial_dir)
  last = eval_every * len(accuracies)
  config = {"model": {}, "data": {"task": "associative_recall", "num_pairs": 4},
            "train": {"seed": replicate, "steps": steps or last, "stop_when": stop_when}}
  for path, value in overrides.items():
    section, key = path.split(".")
    config.setdefault(section, {})[key] = value
  write_json(str(trial_dir / "config.json"), config)
  with open(trial_dir / "metrics.jsonl", "w", encoding="utf-8") as f:
    for index, accuracy in enumerate(accuracies):
      step = eval_every * (index + 1)
      f.write(json.dumps({"step": step, "train/loss": 2.0 - accuracy}) + "\n")
      f.write(json.dumps({"step": step, "eval/loss": 2.5 - accuracy, "eval/accuracy": accuracy}) + "\n")
  summary = {"status": "reached_target" if reached_at else "completed", "step": last, "parameters": 1000,
             "final": {"eval/accuracy": accuracies[-1]}, "wall_time_sec": 1.0}
  if stop_when:
    summary.update(stop_when=stop_when, steps_to_target=reached_at)
  write_json(str(trial_dir / "summary.json"), summary)
  write_json(str(trial_dir / "trial.json"), {"id": trial, "point": point, "replicate": replicate, "seed": replicate,
                                             "status": status, "overrides": overrides})
  return trial


def write_tables(sweepdir) -> list[dict]:
  """What report.report writes but the figures (a second or two of drawing): the trial and point tables."""
  rows, paths, metric = results.collect(str(sweepdir))
  point_rows = results.points(rows, results.read_sweep(str(sweepdir)), paths, metric)
  report.write_tables(rows, paths, metric, str(sweepdir))
  report.write_point_tables(point_rows, paths, metric, str(sweepdir))
  return point_rows


def read_csv(path) -> list[dict[str, str]]:
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
  """num_heads in [4, 1, 2, 8, 16] x 3 replicates: 4 distinct, 1 identical, 2 a single replicate, 8 two of three (the
  third never started), 16 not started; plus a failed replicate at 2. The tables are written once, here."""
  sweepdir = tmp_path_factory.mktemp("grid") / "sweep"
  write_sweep(sweepdir, [{"path": "model.num_heads", "values": [4, 1, 2, 8, 16]}], replicates=3)
  finals = {4: [0.5, 0.55, 0.62], 1: [0.1, 0.1, 0.1], 2: [0.4], 8: [0.6, 0.8]}  # 3 * 0.1 / 3 != 0.1 in floats
  for heads, values in finals.items():
    for replicate, final in enumerate(values):
      write_trial(sweepdir, f"num_heads-{heads}", replicate, {"model.num_heads": heads}, [0.25, final])
  write_trial(sweepdir, "num_heads-2", 1, {"model.num_heads": 2}, [0.25], status="failed")
  write_tables(sweepdir)
  return sweepdir


def test_points_group_the_replicates_with_a_t_interval_computed_from_the_trials(grid_sweep):
  sweepdir = grid_sweep
  points = {row["model.num_heads"]: row for row in read_csv(sweepdir / "points.csv")}
  assert [row["model.num_heads"] for row in read_csv(sweepdir / "points.csv")] == ["4", "1", "2", "8", "16"], \
      "in the grid's order, not by metric"
  assert points["4"]["n"] == "3" and points["4"]["planned"] == "3"
  trials = [row for row in read_csv(sweepdir / "results.csv") if row["point"] == "num_heads-4"]
  assert sorted(row["seed"] for row in trials) == ["0", "1", "2"]
  finals = np.array([float(row["final eval/accuracy"]) for row in trials])
  half = T_975_DF2 * finals.std(ddof=1) / math.sqrt(3)
  assert float(points["4"]["final eval/accuracy mean"]) == pytest.approx(finals.mean(), rel=1e-9)
  assert float(points["4"]["final eval/accuracy low"]) == pytest.approx(finals.mean() - half, rel=1e-9)
  assert float(points["4"]["final eval/accuracy high"]) == pytest.approx(finals.mean() + half, rel=1e-9)
  assert float(points["4"]["best eval/accuracy mean"]) == pytest.approx(finals.mean())
  caption = (sweepdir / "points.md").read_text()
  assert "95% t-interval over n seeds (column n)" in caption, "the counts differ between points"


def test_identical_single_partial_and_unstarted_points(grid_sweep):
  sweepdir = grid_sweep
  points = {row["model.num_heads"]: row for row in read_csv(sweepdir / "points.csv")}
  identical = points["1"]
  low, high = identical["final eval/accuracy low"], identical["final eval/accuracy high"]
  assert low == high == identical["final eval/accuracy mean"] and float(low) == pytest.approx(0.1), "zero width"
  single = points["2"]
  assert (single["n"], single["final eval/accuracy low"], single["final eval/accuracy high"]) == ("1", "", "")
  assert single["not counted"] == "1 failed"
  assert (points["8"]["n"], points["8"]["planned"]) == ("2", "3"), "the third replicate has no directory at all"
  # 0.7 +- t(0.975, 1) * 0.1414 / sqrt(2) = 0.7 +- 1.27: clipped to the accuracy's [0, 1].
  assert (points["8"]["final eval/accuracy low"], points["8"]["final eval/accuracy high"]) == ("0.0", "1.0")
  assert (points["16"]["n"], points["16"]["point"], points["16"]["final eval/accuracy mean"]) == ("0", "", "")
  table = (sweepdir / "points.md").read_text()
  assert "| 2 | 1 | 3 | 0.4 (n = 1, no interval) |" in table
  assert "| 1 | 3 | 3 | 0.1 [0.1, 0.1] |" in table
  assert "nan" not in table.lower()


@pytest.fixture(scope="module")
def target_sweep(tmp_path_factory):
  """Runs with the target eval/accuracy>=0.99 (300 steps, an eval every 50): the steps at which each seed of a
  point reached it, None for a seed that never did (censored)."""
  sweepdir = tmp_path_factory.mktemp("target") / "sweep"
  write_sweep(sweepdir, [{"path": "model.num_heads", "values": [1, 2, 4, 8]}], replicates=4)
  runs = {1: [100, 200, None], 2: [100, None, 200, None], 4: [None, None], 8: [100, 300]}
  for heads, reached in runs.items():
    for replicate, step in enumerate(reached):
      # Censored runs end at 300, the second 2-head one at 150 (stopped by a signal, say); a run at its target
      # stops there.
      last = step or (150 if (heads, replicate) == (2, 1) else 300)
      evals = [0.3] * (last // 50 - 1) + [1.0 if step else 0.5]
      write_trial(sweepdir, f"num_heads-{heads}", replicate, {"model.num_heads": heads}, evals, eval_every=50,
                  stop_when="eval/accuracy>=0.99", steps=300, reached_at=step)
  return sweepdir


def test_steps_to_target_treats_runs_that_never_reached_it_as_censored(target_sweep):
  """The medians against hand-computed Kaplan-Meier estimates; a run that never reached the target is censored at
  its last step, not counted as reaching it there."""
  write_tables(target_sweep)
  points = {row["model.num_heads"]: row for row in read_csv(target_sweep / "points.csv")}
  # 1 head: S(100) = 2/3, S(200) = 2/3 * 1/2 = 1/3 <= 0.5 -> 200 (the median of those that reached it is 150).
  assert (points["1"]["reached"], points["1"]["median steps to target"], points["1"]["median by"]) == \
      ("2", "200", "Kaplan-Meier")
  # 2 heads, censored at 150 and 300: S(100) = 3/4, S(200) = 3/4 * 1/2 (2 at risk) = 3/8 -> 200 (counting the
  # censored runs as reached at their last step would give 175).
  assert (points["2"]["reached"], points["2"]["median steps to target"]) == ("2", "200")
  assert (points["4"]["reached"], points["4"]["median steps to target"]) == ("0", results.NOT_REACHED)
  assert (points["8"]["median steps to target"], points["8"]["median by"]) == ("200.0", "median")
  trials = {(row["point"], row["replicate"]): row for row in read_csv(target_sweep / "results.csv")}
  censored = trials[("num_heads-1", "2")]
  assert (censored["steps to target"], censored["reached target"], censored["step"]) == ("", "False", "300")
  assert trials[("num_heads-1", "1")]["steps to target"] == "200"
  table = (target_sweep / "points.md").read_text()
  assert "Kaplan-Meier median" in table and "| 0 | not reached | Kaplan-Meier |" in table


@pytest.mark.slow  # about 3 s of drawing and importing matplotlib
def test_the_figures_are_pngs_of_a_readable_size(target_sweep):
  from matplotlib import image  # pylint: disable=g-import-not-at-top  (a second to import: only in this test)

  written = report.report(str(target_sweep))
  assert {"loss_curves.png", "eval_accuracy_by_trial.png", "eval_accuracy_vs_model_num_heads.png",
          "eval_curves.png", "steps_to_target.png"} <= set(written["files"])
  for name in written["files"]:
    if name.endswith(".png"):
      pixels = image.imread(str(target_sweep / name))  # raises on a file that is not a whole PNG
      height, width = pixels.shape[:2]
      assert 300 < width < 2000 and 300 < height < 2000, (name, pixels.shape)
      assert pixels[..., :3].std() > 0.05, f"{name} is blank"


def test_a_path_held_at_one_value_gets_no_figure_and_no_place_in_the_labels(tmp_path):
  """A zipped setting of one value (as capacity.py's cpu scale) beside a varied path: the figures are of the varied
  path only, labelled by it; the tables keep every path."""
  sweepdir = tmp_path / "sweep"
  write_sweep(sweepdir, [{"paths": ["data.num_pairs", "data.seq_len"], "values": [[8, 32]]},
                         {"path": "model.num_heads", "values": [1, 4]}], replicates=1)
  for heads in (1, 4):
    write_trial(sweepdir, f"num_heads-{heads}", 0, {"data.num_pairs": 8, "data.seq_len": 32, "model.num_heads": heads},
                [0.2, 0.5])
  rows, paths, metric = results.collect(str(sweepdir))
  point_rows = results.points(rows, results.read_sweep(str(sweepdir)), paths, metric)
  kept, labelled = figures.varied(point_rows, paths)
  assert set(paths) == {"data.num_pairs", "data.seq_len", "model.num_heads"} and kept == ["model.num_heads"]
  assert [p["_label"] for p in labelled] == ["num_heads=1", "num_heads=4"]
  (only,) = [p for p in labelled if p["model.num_heads"] == 1]
  assert figures.varied([only], paths)[1][0]["_label"] == only["point"]


def test_the_eval_band_carries_a_run_stopped_at_its_target_forward(tmp_path):
  sweepdir = tmp_path / "sweep"
  write_sweep(sweepdir, [{"path": "model.num_heads", "values": [1]}], replicates=3)
  target = "eval/accuracy>=0.99"
  write_trial(sweepdir, "num_heads-1", 0, {"model.num_heads": 1}, [0.3, 1.0], stop_when=target, steps=300,
              reached_at=200)
  write_trial(sweepdir, "num_heads-1", 1, {"model.num_heads": 1}, [0.2, 0.5, 0.6], stop_when=target)
  write_trial(sweepdir, "num_heads-1", 2, {"model.num_heads": 1}, [0.1, 0.4, 0.9], stop_when=target)
  rows, paths, metric = results.collect(str(sweepdir))
  (point,) = results.points(rows, results.read_sweep(str(sweepdir)), paths, metric)
  curve = results.point_curve(point["_members"], metric)
  assert [step for step, *_ in curve] == [100, 200, 300]
  assert curve[2][1] == pytest.approx((1.0 + 0.6 + 0.9) / 3), "the stopped run keeps its value at the target"
  values = np.array([1.0, 0.6, 0.9])
  half = T_975_DF2 * values.std(ddof=1) / math.sqrt(3)
  assert values.mean() + half > 1
  assert curve[2][2:] == pytest.approx((values.mean() - half, 1.0), rel=1e-9), "the band clipped to [0, 1]"
  assert point["n"] == 3 and point["final eval/accuracy mean"] == pytest.approx(values.mean())


def test_trials_of_a_sweep_without_replicates_are_their_own_points(tmp_path):
  """An older sweep: no `point`, `replicate` or `replicates` in its files; a range parameter (no grid to list)."""
  sweepdir = tmp_path / "sweep"
  write_sweep(sweepdir, [{"path": "optimizer.learning_rate", "low": 1e-4, "high": 1e-2}], replicates=1)
  sweep = json.loads((sweepdir / "sweep.json").read_text())
  del sweep["replicates"]
  sweep["sampler"] = "random"
  write_json(str(sweepdir / "sweep.json"), sweep)
  for rate, final in ((3e-3, 0.5), (1e-3, 0.7)):
    trial = write_trial(sweepdir, f"lr-{rate}", 0, {"optimizer.learning_rate": rate}, [final])
    record = json.loads((sweepdir / "trials" / trial / "trial.json").read_text())
    for key in ("point", "replicate", "seed"):
      del record[key]
    write_json(str(sweepdir / "trials" / trial / "trial.json"), record)
  write_tables(sweepdir)
  points = read_csv(sweepdir / "points.csv")
  assert [(p["point"], p["optimizer.learning_rate"], p["n"], p["planned"]) for p in points] == [
      ("lr-0.001-r0", "0.001", "1", "1"), ("lr-0.003-r0", "0.003", "1", "1")], "ordered by value"

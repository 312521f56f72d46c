r"""Tables and plots of a sweep (or of one run), from the files the runs write; works while a sweep runs.

  python -m experiments.report --workdir=runs/heads [--metric=eval/accuracy]

Writes into the workdir, and prints the two tables:
- results.csv, results.md: one row per trial (point, replicate, seed, status, swept values, steps to target,
  final and best eval metrics, parameters, tokens/s, wall time, error), best first by the metric;
- points.csv, points.md: one row per point, the replicates (seeds) of one setting of the swept values grouped, in
  the grid's order (unstarted grid points with n = 0): n completed of planned, the mean final metric with a 95%
  t-interval over the n seeds ("n = 1, no interval"), the mean best metric, and for runs with a train.stop_when
  target how many reached it and the median steps to target (Kaplan-Meier where some never did);
- loss_curves.png, <metric>_by_trial.png, <metric>_vs_<path>.png per swept path and <metric>_vs_parameters.png
  (point means with their intervals, the chance level of recall), eval_curves.png (each point's mean eval curve
  with a 95% band), steps_to_target.png (one dot per seed, censored ones hollow).
Reads only sweep.json and the trials' files (trial.json, summary.json, config.json, metrics.jsonl), never the
study's database, so it works on a copy of the directory too. The code is experiments/sweeps/results.py (rows,
points, their statistics), report.py (tables) and figures.py; JAX is imported only to count the parameters of a
trial that has no summary yet.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import cli
from experiments.files import CONFIG_FILE
from experiments.sweeps import report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  workdir = flags.FLAGS.workdir
  if workdir is None:
    raise app.UsageError("--workdir is required: a sweep's directory (with trials/) or a run's")
  if not os.path.isdir(workdir):
    raise app.UsageError(f"--workdir={workdir} is not a folder: give a sweep's directory (with trials/) or a run's")
  if not any(os.path.exists(os.path.join(workdir, name)) for name in ("sweep.json", "trials", CONFIG_FILE)):
    raise app.UsageError(f"--workdir={workdir}: neither a sweep's directory (no sweep.json, no trials/) nor a "
                         f"run's (no {CONFIG_FILE}); give the --workdir a sweep or a training run wrote")
  result = report.report(workdir, flags.FLAGS.metric)
  for table in ("results.md", "points.md"):
    with open(os.path.join(workdir, table), encoding="utf-8") as f:
      print(f.read())
  print("wrote " + ", ".join(result["files"]))


if __name__ == "__main__":
  # Defined here, not at import: tests import this module beside others that define --workdir.
  flags.DEFINE_string("workdir", None, "A sweep's workdir (with trials/) or a single run's workdir.")
  flags.DEFINE_string("metric", None, "Metric of the table and plots (default: the sweep's, or eval/loss).")
  cli.run(main)

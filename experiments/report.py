r"""Tables and plots of a sweep (or of one run), from the files the runs write; works while a sweep runs.

  python -m experiments.report --workdir=runs/heads [--metric=eval/accuracy]

Writes into the workdir: results.csv, results.md (one row per trial), loss_curves.png (the training loss of
every trial on one figure) and <metric>_vs_<parameter>.png (the final metric against each swept parameter).
Reads only the trials' files (trial.json, summary.json, config.json, metrics.jsonl), never the study's
database, so it works on a copy of the directory too. The code is experiments/sweeps/results.py (the rows)
and report.py (tables, plots); JAX is imported only to count the parameters of a trial that has no summary yet.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import cli
from experiments.sweeps import report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  workdir = flags.FLAGS.workdir
  if workdir is None:
    raise app.UsageError("--workdir is required: a sweep's directory (with trials/) or a run's")
  if not os.path.isdir(workdir):
    raise app.UsageError(f"--workdir={workdir} is not a folder: give a sweep's directory (with trials/) or a run's")
  result = report.report(workdir, flags.FLAGS.metric)
  with open(os.path.join(workdir, "results.md"), encoding="utf-8") as f:
    print(f.read())
  print("wrote " + ", ".join(result["files"]))


if __name__ == "__main__":
  # Defined here, not at import: tests import this module beside others that define --workdir.
  flags.DEFINE_string("workdir", None, "A sweep's workdir (with trials/) or a single run's workdir.")
  flags.DEFINE_string("metric", None, "Metric of the table and plots (default: the sweep's, or eval/loss).")
  cli.run(main)

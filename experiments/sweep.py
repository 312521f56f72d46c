r"""Runs a sweep: many training runs of one base config, recorded in an Optuna study.

  python -m experiments.sweep --config=configs/sweeps/heads.py --workdir=runs/heads [--workers=2]
      [--storage=postgresql://user@host/db]

Each trial is a normal training run (experiments.runner) in SWEEPDIR/trials/<id>, the id made from the
trial's overrides (experiments/sweeps/space.py). With `replicates` R > 1 every point runs R trials, replicate r
with train.seed = the point's seed + r and the seed in its id; a grid runs point after point, all seeds of one
before the next. Every evaluation of a trial is reported to the study as an intermediate value of the sweep's
metric (the study's objective carries the metric's name, for optuna-dashboard), and a random or TPE sweep may
name a pruner. The study lives in --storage (default: SQLite in SWEEPDIR/study.db); processes on several
machines that share a storage and a SWEEPDIR share the study. The command prints one line per trial that ended
(id, status, metric, step, wall time) and a line of progress after it. Libraries' INFO records (Optuna, orbax,
JAX) are hidden: --verbosity=0 shows them.

What makes a rerun of the same command safe:
  - A trial holds an exclusive lock on SWEEPDIR/trials/<id>/.claim while it runs, so no point trains in two
    processes at once, and a RUNNING trial whose lock is free belongs to a process that died.
  - Such a trial (and one stopped by SIGINT/SIGTERM) is marked FAIL with the user attribute `interrupted`
    and enqueued again with the same parameters: the rerun resumes it from its checkpoints.
  - A point whose workdir holds a completed summary.json is recorded from it without training again.
  - A trial that raises is recorded as FAIL with its error (user attribute `error`); the sweep goes on.
  - The workers are spawned processes that get SIGTERM when the command dies, even by SIGKILL (Linux), so
    they save their trials' checkpoints and stop instead of training on as orphans.
Interrupted trials do not count towards `num_trials`; failed ones are retried only with --retry_failed.
The command prints the study's counts by state and exits 0 once the sweep is finished; 3, with one line
saying which, when its workers ended with trials unfinished (training in another process, or in none); 130
when a signal stopped it; 2 for an invalid sweep.

The engine is experiments/sweeps/ (engine, studies, trials, space). Importing this command loads Optuna, not
JAX: JAX and flax come in when the trials' configs are validated and when a worker trains.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from experiments.sweeps import engine


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  args = flags.FLAGS
  if args.workdir is None or args.config is None:
    raise app.UsageError("--config and --workdir are required, e.g. --config=configs/sweeps/heads.py "
                         "--workdir=runs/heads")
  sweep = args.config
  workers = args.workers if args.workers is not None else sweep.workers
  try:
    counts = engine.run_command(sweep, args.workdir, args.storage, workers, args.retry_failed)
  except engine.SweepError as error:
    cli.fail(str(error))
  except engine.Unfinished as error:
    print(json.dumps(error.counts))
    print(f"not finished: {error}", file=sys.stderr)  # not a mistake of the command: no "error:"
    sys.exit(3)
  except KeyboardInterrupt:
    print("interrupted: rerun the same command to resume", file=sys.stderr)
    sys.exit(130)
  print(json.dumps(counts))


def define_flags() -> None:
  """The command's flags, defined only when it runs as a command (tests import this module beside others)."""
  config_flags.DEFINE_config_file("config", None, "Sweep config file (configs/sweeps/<name>.py[:scale]).")
  flags.DEFINE_string("workdir", None, "Directory of the sweep: trials/, study.db, results.")
  flags.DEFINE_integer("workers", None, "Trials run in parallel processes (default: the config's).")
  flags.DEFINE_string("storage", None, "Optuna storage URL (default: sqlite:///WORKDIR/study.db).")
  flags.DEFINE_bool("retry_failed", False, "Run the points of failed trials again (failures are final otherwise).")


if __name__ == "__main__":
  define_flags()
  cli.run(main)

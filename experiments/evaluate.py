r"""Evaluates a training run's checkpoint on its validation split.

  python -m experiments.evaluate --workdir=DIR [--member=I] [--step=N] [--max_batches=10]

DIR is a run's workdir, a population member's directory, or a population's workdir with --member. The run's own
config (DIR/config.json) defines the model and data, so the command takes no config overrides; `--max_batches`
stands in for the config's eval.max_batches. It prints one JSON object: the step and each eval metric, a metric
that is not a finite number (a diverged checkpoint's NaN loss) as null, so that the output is valid JSON.
Libraries' INFO records (orbax, JAX, TFDS) are hidden: --verbosity=0 shows them.
"""

from __future__ import annotations

import json
import math

import jax
from absl import flags

from experiments import build, checkpoint, cli, population, validation

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory (or a population member's).",
                               required=True)
_MEMBER = flags.DEFINE_integer("member", None, "In a population's workdir: the member to evaluate (0 to S-1).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
_MAX_BATCHES = flags.DEFINE_integer("max_batches", None, "Evaluate only this many batches (default: the config's).")


def evaluate(workdir: str, step: int | None = None, max_batches: int | None = None,
             member: int | None = None) -> dict[str, float]:
  """Returns the eval metrics of a run's checkpoint (`step`, or the newest that restores), with its step.

  Args:
    workdir: a run's workdir, or a population member's directory, or with `member` a population's workdir.
    step: the checkpoint (default: the newest that restores).
    max_batches: evaluate only this many batches (default: the config's eval.max_batches).
    member: the member of the population in workdir.

  Raises:
    FileNotFoundError: the workdir has no config.json or no checkpoint (at that step), or holds a population
      and no member was named.
    CheckpointError: the checkpoint at `step`, or with None every checkpoint, does not read.
    ConfigError: the data cannot be prepared as configured (one line naming the field).
  """
  workdir = population.member_workdir(workdir, member)
  config = checkpoint.single_run_config(workdir)
  if max_batches is not None:
    config.eval.max_batches = max_batches
  sharded = build.ShardedModel(config)
  # The checkpoint first: a workdir without one is told before any data are prepared.
  params, step = checkpoint.restore_params(workdir, sharded.abstract_params, step)
  evaluation = build.Evaluation(config, sharded, build.load_data(config))
  return {"step": step, **evaluation.evaluate(params)}


def main(argv):
  del argv
  try:
    metrics = evaluate(_WORKDIR.value, _STEP.value, _MAX_BATCHES.value, _MEMBER.value)
  except FileNotFoundError as error:  # not a run, or no checkpoint (at --step), or a population without --member
    cli.fail(cli.run_error_line(error, _WORKDIR.value, _STEP.value))
  except checkpoint.CheckpointError as error:  # no readable checkpoint (at --step): one line
    cli.fail(str(error), at_once=True)
  except validation.ConfigError as error:  # data that cannot be prepared (offline, say): one line
    cli.fail(str(error))
  if jax.process_index() == 0:
    print(metrics_json(metrics))


def metrics_json(metrics: dict[str, float]) -> str:
  """The metrics as strict JSON (which has no NaN or infinity): a value that is not finite becomes null."""
  finite = {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in metrics.items()}
  return json.dumps(finite, indent=1, allow_nan=False)


if __name__ == "__main__":
  cli.run(main)

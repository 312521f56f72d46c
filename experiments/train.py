r"""Trains a model described by a config file; resumes from the workdir's latest checkpoint.

  python -m experiments.train --config=configs/default.py --workdir=runs/default [--config.train.steps=500]

It prints one line per evaluation (step, eval loss and accuracy, or bits per character on text, tokens per second,
elapsed time) and a short summary at the end; every number is in the workdir's summary.json and metrics.jsonl.
Libraries' INFO records (orbax, JAX, TFDS) are hidden: --verbosity=0 shows them.

Multi-host: pass --coordinator_address, --num_processes and --process_id (or set JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID); every process runs the same command.
"""

from __future__ import annotations

import os

import jax
from absl import app, flags
from ml_collections import config_flags

from experiments import cli, terminal
from experiments.checkpoint import CHECKPOINTS, CheckpointError
from experiments.host import keep_freed_memory, one_heap_pays
from experiments.metrics import NonFiniteLoss
from experiments.runner import train_and_evaluate
from experiments.validation import ConfigError
from experiments.workdir import WorkdirLocked

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (with :arg for variants).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run: checkpoints, metrics, config.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar (process 0 only).")


def initialize_distributed() -> None:
  """Starts jax.distributed when a multi-host run is asked for by flags or the environment."""
  address = _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS")
  count = _NUM_PROCESSES.value or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
  if not address and not count:
    return
  process_id = _PROCESS_ID.value if _PROCESS_ID.value is not None else int(os.environ.get("JAX_PROCESS_ID", "0"))
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=process_id)


def surviving_checkpoints(workdir: str) -> str:
  """What a run stopped by a fault leaves: its complete checkpoints, said in words for the error line."""
  folder = os.path.join(workdir, CHECKPOINTS)
  try:
    # orbax writes a checkpoint under a temporary name and renames it to its bare step only once it is whole.
    steps = sorted(int(name) for name in os.listdir(folder) if name.isdigit())
  except OSError:
    steps = []
  if not steps:
    return f"no checkpoint of this run is in {folder}"
  return f"the checkpoints up to step {steps[-1]} in {folder} are complete (a rerun resumes from step {steps[-1]})"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])} (flags take the form --name=value)")
  if _WORKDIR.value is None or _CONFIG.value is None:
    raise app.UsageError("--config and --workdir are required, e.g. --config=configs/default.py --workdir=runs/default")
  keep_freed_memory(one_heap=one_heap_pays(_CONFIG.value))
  initialize_distributed()
  try:
    summary = train_and_evaluate(_CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value, eval_lines=True)
  except ConfigError as error:
    cli.fail(str(error))
  except CheckpointError as error:
    cli.fail(str(error), at_once=True)
  except (WorkdirLocked, NonFiniteLoss) as error:
    cli.fail(str(error), status=1)
  except Exception as error:  # pylint: disable=broad-except
    # A fault of the file system under the workdir (read-only, not a folder, full...) is told in one line with
    # what survives; anything else is a bug, with its traceback.
    line = cli.os_error_line(error, _WORKDIR.value)
    if line is None:
      raise
    # A full disk stops a run the same command resumes once there is space; the others need another workdir.
    cli.fail(f"{line}; {surviving_checkpoints(_WORKDIR.value)}", status=1 if cli.is_disk_full(error) else 2,
             at_once=True)
  if jax.process_index() == 0:
    print("\n".join(terminal.summary_lines(summary, _WORKDIR.value)))


if __name__ == "__main__":
  cli.run(main)

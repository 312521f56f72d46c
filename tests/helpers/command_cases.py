"""Runs one command on several command lines in one process, as `python -m` runs it, and reports each outcome.

  python -m tests.helpers.command_cases experiments.inspect < cases.json > outcomes.json

cases.json is a list of argument lists; outcomes.json a list of {"status", "stdout", "stderr"}, one per case.
Each case executes the module as __main__ (runpy), so the command's own flag definitions and cli.run are what
runs; the flags are reset between cases. Importing JAX once for every case is the point: a command started
alone spends ~2 s of CPU on it before it reads its flags.
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys

from absl import flags


def run_case(module: str, args: list[str]) -> dict[str, object]:
  """Runs `python -m module *args` in this process; returns its exit status and what it printed."""
  flags.FLAGS.unparse_flags()
  stdout, stderr = io.StringIO(), io.StringIO()
  status = 0
  saved_argv = sys.argv
  sys.argv = [module, *args]
  try:
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      runpy.run_module(module, run_name="__main__", alter_sys=True)
  except SystemExit as exit_:
    status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
  finally:
    sys.argv = saved_argv
  return {"status": status, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def main() -> None:
  module = sys.argv[1]
  cases = json.load(sys.stdin)
  outcomes = [run_case(module, args) for args in cases]
  sys.stdout.write(json.dumps(outcomes))


if __name__ == "__main__":
  main()

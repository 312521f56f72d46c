"""Starts tests/helpers/train_driver.py in subprocesses, with a deadline, and collects its RESULT lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(REPO, "tests", "helpers", "train_driver.py")


# Compiling dominates these tests on a small CPU machine, and LLVM's optimizations take most of it: without
# them the 8-device layouts compile 2-4x faster. The properties tested here (the same losses on every
# mesh, checkpoints that move between meshes) are decided before LLVM, by the SPMD partitioner and the
# collectives; the reference runs get the same flag, so all compare like with like.
XLA_TEST_FLAGS = ("--xla_backend_optimization_level=0",)


def env(devices: int) -> dict[str, str]:
  """The test's environment with exactly `devices` CPU devices; XLA_FLAGS must be set before JAX starts."""
  result = dict(os.environ, JAX_PLATFORMS="cpu")
  ours = ("xla_force_host_platform_device_count", "xla_backend_optimization_level")
  others = [f for f in result.get("XLA_FLAGS", "").split() if not any(name in f for name in ours)]
  result["XLA_FLAGS"] = " ".join(others + [*XLA_TEST_FLAGS, f"--xla_force_host_platform_device_count={devices}"])
  return result


def start(runs: list[dict], log_path: str, *, devices: int = 1, flags: tuple[str, ...] = ()) -> subprocess.Popen:
  """Starts the driver on `runs`; output goes to a file (a full pipe would block the child)."""
  with open(log_path, "w", encoding="utf-8") as log:
    process = subprocess.Popen([sys.executable, DRIVER, json.dumps(runs), *flags], cwd=REPO, env=env(devices),
                               stdout=log, stderr=subprocess.STDOUT, text=True)
  process.log_path = log_path
  return process


def tail(process: subprocess.Popen, chars: int = 3000) -> str:
  with open(process.log_path, encoding="utf-8", errors="replace") as f:
    return f.read()[-chars:]


def kill(processes: list[subprocess.Popen]) -> None:
  for process in processes:
    if process.poll() is None:
      process.kill()
      process.wait()


def finish(processes: list[subprocess.Popen], timeout: float = 240) -> list[list[dict]]:
  """Waits for all processes (killing every one on a failure or past the deadline) and returns their results.

  Raises:
    AssertionError: a process failed or ran out of time; the message has the end of its output.
  """
  deadline = time.monotonic() + timeout
  try:
    for process in processes:
      try:
        process.wait(timeout=max(deadline - time.monotonic(), 0.1))
      except subprocess.TimeoutExpired:
        raise AssertionError(f"driver still running after {timeout} s:\n{tail(process)}") from None
      if process.returncode != 0:
        raise AssertionError(f"driver exited with {process.returncode}:\n{tail(process)}")
  finally:
    kill(processes)
  results = []
  for process in processes:
    with open(process.log_path, encoding="utf-8") as f:
      results.append([json.loads(line[len("RESULT "):]) for line in f if line.startswith("RESULT ")])
  return results

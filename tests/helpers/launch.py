"""Starts tests/helpers/train_driver.py in subprocesses, with a deadline, and collects its RESULT lines.

Also runs tests/helpers/distributed_probe.py, telling a machine that cannot run two joined JAX processes (a skip,
outside CI) from code that fails (a failure).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import portpicker

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(REPO, "tests", "helpers", "train_driver.py")
PROBE = os.path.join(REPO, "tests", "helpers", "distributed_probe.py")
UNSUPPORTED = 3  # distributed_probe.py's exit status, after an "UNSUPPORTED: <reason>" line, on such a machine
# What gRPC logs, before the coordinator dies of SIGSEGV, when it cannot listen on its port ([::]:PORT): the port
# was taken since portpicker chose it (then a second port works), or the machine has no such address.
PORT_REFUSED = "Failed to add port to server"


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
  return _spawn([DRIVER, json.dumps(runs), *flags], log_path, devices)


def _spawn(args: list[str], log_path: str, devices: int) -> subprocess.Popen:
  with open(log_path, "w", encoding="utf-8") as log:
    process = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env(devices), stdout=log,
                               stderr=subprocess.STDOUT, text=True)
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
  try:
    failed = _wait(processes, timeout)
  except TimeoutError:
    running = next(p for p in processes if p.poll() is None)
    raise AssertionError(f"driver still running after {timeout} s:\n{tail(running)}") from None
  finally:
    kill(processes)
  if failed is not None:
    raise AssertionError(f"driver exited with {failed.returncode}:\n{tail(failed)}")
  results = []
  for process in processes:
    with open(process.log_path, encoding="utf-8") as f:
      results.append([json.loads(line[len("RESULT "):]) for line in f if line.startswith("RESULT ")])
  return results


def _wait(processes: list[subprocess.Popen], timeout: float) -> subprocess.Popen | None:
  """Waits until all processes exit 0 (returns None) or one fails (returns it, the others may still run).

  The first failure ends the wait: the other processes of a job would otherwise wait for it until the deadline.

  Raises:
    TimeoutError: some process still runs after `timeout` seconds.
  """
  deadline = time.monotonic() + timeout
  while True:
    failed = next((p for p in processes if p.poll() not in (None, 0)), None)
    if failed is not None or all(p.returncode == 0 for p in processes):
      return failed
    if time.monotonic() > deadline:
      raise TimeoutError
    time.sleep(0.1)


class Unsupported(Exception):
  """This machine cannot run two joined JAX processes: a recognised condition of the machine, not of the code."""


def _loopback_error() -> str | None:
  """Why a process here cannot listen on 127.0.0.1 and another connect to it, or None when they can."""
  try:
    with socket.socket() as listening, socket.socket() as connecting:
      listening.bind(("127.0.0.1", 0))
      listening.listen(1)
      connecting.settimeout(5)
      connecting.connect(listening.getsockname())
  except OSError as error:
    return f"no loopback networking: cannot listen on and connect to 127.0.0.1 ({error})"
  return None


def probe_distributed(log_dir: str, *, script: str = PROBE, timeout: float = 120) -> None:
  """Runs `script` as processes 0 and 1 of a jax.distributed job on 127.0.0.1; returns when both exit 0.

  Args:
    log_dir: where the processes' output goes (probe_0.log, probe_1.log).
    script: the probe, called as `script COORDINATOR_ADDRESS PROCESS_ID`.
    timeout: seconds for the two processes together.

  Raises:
    Unsupported: no loopback networking; the coordinator could not listen on two ports in a row; or the probe
      exited with UNSUPPORTED (this jax has no gloo CPU collectives).
    AssertionError: any other failure, the deadline included, with the output of the process that failed.
  """
  if (error := _loopback_error()) is not None:
    raise Unsupported(error)
  for attempt in range(2):
    address = f"127.0.0.1:{portpicker.pick_unused_port()}"
    processes = [_spawn([script, address, str(i)], os.path.join(log_dir, f"probe_{i}.log"), 1) for i in range(2)]
    try:
      failed = _wait(processes, timeout)
    except TimeoutError:
      raise AssertionError(f"the probe was still running after {timeout} s:\n" +
                           "\n".join(f"process {i}: {tail(p)}" for i, p in enumerate(processes))) from None
    finally:
      kill(processes)
    if failed is None:
      return
    output = tail(failed)
    if failed.returncode == UNSUPPORTED and "UNSUPPORTED: " in output:
      raise Unsupported(output.split("UNSUPPORTED: ", 1)[1].splitlines()[0])
    if PORT_REFUSED not in output:
      raise AssertionError(f"probe process {processes.index(failed)} exited with {failed.returncode}:\n{output}")
    if attempt == 1:
      raise Unsupported(f"the coordinator could not listen on two ports in a row (the last {address}): {PORT_REFUSED}")

"""Two local processes joined by jax.distributed (gloo CPU collectives) train like one, and stop together.

Each process runs tests/helpers/train_driver.py, which joins the job through experiments.train's
initialize_distributed (127.0.0.1, a free port) and runs the real trainer. Each has 2 fake CPU devices and the
mesh is fsdp=2 x tensor=2, so the fsdp axis (parameters and batch) spans the two processes and the tensor axis
stays inside each. Losses are compared with rtol=1e-5, as in test_multidevice.py: the layouts differ only in
the order float32 sums are taken. The fast tests check what the comparison rests on: the processes' batches
make up the one-process batch, and meshes whose processes would need the same rows are refused. The
training tests skip, with the reason, where this machine cannot run two joined processes (no loopback networking,
no port for the coordinator, no gloo: see launch.probe_distributed), and fail in CI; a probe that fails otherwise
fails them, with its output.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import numpy as np
import portpicker
import pytest

from configs import base
from experiments import checkpoint, validation
from experiments.data import pipeline
from helpers import components, launch  # tests/ is on sys.path under pytest's default (prepend) import mode
from helpers.metrics import written_steps

STEPS = 6
# With dropout, whose masks each process draws its part of (see test_multidevice.py).
COMMON = {"train.steps": STEPS, "optimizer.decay_steps": STEPS, "model.dropout_rate": 0.1,
          "model.attention_dropout_rate": 0.1}
ACROSS_PROCESSES = {"mesh.data": 1, "mesh.fsdp": 2, "mesh.tensor": 2}


def _indexed_source(n: int) -> list[dict[str, np.ndarray]]:
  return [{"inputs": np.full(2, i, np.int32)} for i in range(n)]


@pytest.mark.parametrize("num_examples, global_batch, processes", [(64, 16, 2), (25, 2, 2), (51, 6, 3), (49, 8, 4)])
def test_processes_read_the_rows_of_the_single_process_batch(num_examples, global_batch, processes):
  """What the loss comparison below rests on: at every step, the processes' batches stacked in process order
  are the one-process batch, row for row, also across epochs and when the split does not divide evenly."""
  source = _indexed_source(num_examples)
  single = pipeline.train_iterator(source, batch_size=global_batch, seed=3)
  shards = [pipeline.train_iterator(source, batch_size=global_batch // processes, seed=3, process_index=p,
                                    process_count=processes) for p in range(processes)]
  for step in range(3 * (num_examples // global_batch) + 1):  # three epochs and a bit
    stacked = np.concatenate([next(shard)["inputs"] for shard in shards])
    np.testing.assert_array_equal(stacked, next(single)["inputs"], err_msg=f"step {step}")


@pytest.mark.parametrize("tensor, refused", [(2, True), (1, False)])
def test_a_tensor_group_across_processes_is_refused(tensor, refused):
  """Processes read different batch rows, so devices that must see the same rows (a tensor group) cannot span
  processes: with 1 device per process and mesh.tensor=2, training ran but on the wrong batches."""
  config = base.get_config()
  config.mesh.data, config.mesh.tensor = -1, tensor
  errors = validation.validate(config, device_count=2, process_count=2)
  assert any(e.startswith("mesh.tensor=2 spans processes") for e in errors) == refused, errors


def _logged_steps(workdir: str) -> int:
  """Complete lines of metrics.jsonl so far (process 0 may be writing the next one)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    return sum(line.endswith("\n") for line in f)


def _start_job(runs: list[dict], log_prefix: str) -> list[subprocess.Popen]:
  """The two processes of one job, 2 CPU devices each."""
  address = f"127.0.0.1:{portpicker.pick_unused_port()}"
  return [launch.start(runs, f"{log_prefix}_{i}.log", devices=2,
                       flags=(f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"))
          for i in range(2)]


@pytest.fixture(scope="module")
def distributed(tmp_path_factory) -> None:
  """Skips the module's training tests (fails them in CI), with the reason, where this machine cannot run two
  joined processes; fails them, with the probe's output, where the probe fails otherwise."""
  try:
    launch.probe_distributed(str(tmp_path_factory.mktemp("probe")))
  except launch.Unsupported as why:
    components.unavailable(f"two JAX processes cannot join on this machine: {why}")
  except AssertionError as error:
    pytest.fail(f"the jax.distributed probe failed: {error}", pytrace=False)


# Stand-ins for the probe, run as `script ADDRESS PROCESS_ID`: they tell the outcomes apart without JAX's cost.
STAND_INS = {
    "unsupported": 'print("UNSUPPORTED: no gloo in this stand-in"); raise SystemExit(3)',
    # Process 1 fails at once; process 0 would wait for it (as jax.distributed.initialize does) for a minute.
    "fails": 'import sys, time\nif sys.argv[2] == "1": raise RuntimeError("boom in the code")\ntime.sleep(60)',
    "hangs": "import time; time.sleep(60)",
    # What the real coordinator does when it cannot bind its port: gRPC's line, then SIGSEGV. Counts its attempts.
    "port_refused": f"""import os, signal, sys, time
if sys.argv[2] == "0":
  open(os.path.join(os.path.dirname(sys.argv[0]), "tries"), "a").write("x")
  print("E1201 add_port.cc:83] {launch.PORT_REFUSED}: No address added out of total 1 resolved", flush=True)
  os.kill(os.getpid(), signal.SIGSEGV)
time.sleep(60)
""",
    "joins": "pass",
}


def _probe(tmp_path, stand_in: str, timeout: float = 60) -> None:
  script = tmp_path / f"{stand_in}.py"
  script.write_text(STAND_INS[stand_in], encoding="utf-8")
  launch.probe_distributed(str(tmp_path), script=str(script), timeout=timeout)


def test_the_probe_passes_when_both_processes_join(tmp_path):
  _probe(tmp_path, "joins")


def test_the_probe_says_unsupported_when_the_probe_recognises_the_machine(tmp_path):
  with pytest.raises(launch.Unsupported, match="^no gloo in this stand-in$"):
    _probe(tmp_path, "unsupported")


def test_a_failing_probe_is_a_failure_with_its_output_and_ends_the_other_process_at_once(tmp_path):
  start = time.monotonic()
  with pytest.raises(AssertionError, match="(?s)probe process 1 exited with 1:.*RuntimeError: boom in the code"):
    _probe(tmp_path, "fails")
  assert time.monotonic() - start < 30  # not the 60 s process 0 would wait


def test_a_probe_past_its_deadline_is_a_failure_not_a_skip(tmp_path):
  with pytest.raises(AssertionError, match="the probe was still running after 2 s"):
    _probe(tmp_path, "hangs", timeout=2)


def test_a_refused_port_is_tried_again_then_unsupported(tmp_path):
  with pytest.raises(launch.Unsupported, match="could not listen on two ports in a row"):
    _probe(tmp_path, "port_refused")
  assert (tmp_path / "tries").read_text() == "xx"  # a second port, then no third


def test_no_loopback_networking_is_unsupported(tmp_path, monkeypatch):
  class NoNetwork(socket.socket):
    def bind(self, address):
      raise OSError(99, "Cannot assign requested address")

  monkeypatch.setattr(launch.socket, "socket", NoNetwork)
  with pytest.raises(launch.Unsupported, match=r"^no loopback networking: .*Cannot assign requested address"):
    _probe(tmp_path, "joins")


@pytest.mark.slow
def test_two_processes_train_like_one(distributed, tmp_path, tfds_data_dir):
  del distributed
  one = {"workdir": str(tmp_path / "one"), "data_dir": tfds_data_dir, "overrides": COMMON}
  two = {"workdir": str(tmp_path / "two"), "data_dir": tfds_data_dir, "overrides": {**COMMON, **ACROSS_PROCESSES}}
  # Three processes side by side: the job's two, and the one-process reference.
  processes = _start_job([two], str(tmp_path / "two")) + [launch.start([one], str(tmp_path / "one.log"))]
  (lead,), (other,), (reference,) = launch.finish(processes)

  assert [r["processes"] for r in (lead, other, reference)] == [2, 2, 1]
  assert lead["devices"] == 4 and lead["process_index"] == 0 and other["process_index"] == 1
  for result in (lead, other):
    assert result["status"] == "completed" and result["step"] == STEPS
    # D=32 is split over fsdp (across the processes), H=8 over tensor (within each).
    assert result["layouts"]["block_0/attention/query"]["shard_shape"] == [16, 4, 4]
  # Only process 0 writes metrics: each step once.
  assert written_steps(two["workdir"]) == list(range(1, STEPS + 1))
  assert [step for step, _ in lead["losses"]] == [step for step, _ in reference["losses"]] == list(
      range(1, STEPS + 1))
  losses = [loss for _, loss in reference["losses"]]
  assert losses[-1] < losses[0] - 0.05, losses  # the loss moves far more than the tolerance
  np.testing.assert_allclose([loss for _, loss in lead["losses"]], losses, rtol=1e-5, atol=0)
  summary = json.loads((tmp_path / "two" / "summary.json").read_text())
  assert summary["processes"] == 2 and summary["devices"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("signalled", [(0, 1), (1,)], ids=["both", "process_1_only"])
def test_sigterm_stops_both_processes_at_one_step_with_a_checkpoint(distributed, tmp_path, tfds_data_dir, signalled):
  """Processes may get SIGTERM at different steps, or only one of them gets it: jax's preemption sync point
  (which the runner polls every step on several processes) makes all stop at one step and save there."""
  del distributed
  workdir = str(tmp_path / "run")
  run = {"workdir": workdir, "data_dir": tfds_data_dir,
         "overrides": {**COMMON, **ACROSS_PROCESSES, "train.steps": 100_000}}
  processes = _start_job([run], str(tmp_path / "run"))
  try:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and all(p.poll() is None for p in processes):
      if _logged_steps(workdir) >= 3:
        break
      time.sleep(0.5)
    assert all(p.poll() is None for p in processes), "a process ended early:\n" + "\n".join(
        launch.tail(p) for p in processes)
    assert _logged_steps(workdir) >= 3, "training did not start in time"
    for index in signalled:
      processes[index].send_signal(signal.SIGTERM)
  except BaseException:
    launch.kill(processes)
    raise
  (lead,), (other,) = launch.finish(processes, timeout=120)  # both exit 0

  stopped = lead["step"]
  assert lead["status"] == other["status"] == f"stopped by SIGTERM at step {stopped}"
  assert other["step"] == stopped < 100_000
  assert checkpoint.make_manager(workdir, read_only=True).latest_step() == stopped
  assert written_steps(workdir) == list(range(1, stopped + 1))
  # The driver restored the saved parameters on both processes after the run: the checkpoint is complete.
  assert lead["layouts"]["block_0/attention/query"]["shard_shape"] == [16, 4, 4]

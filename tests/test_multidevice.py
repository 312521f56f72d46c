"""Meshes of 8 fake CPU devices train like one device, and checkpoints move between meshes.

Each layout runs the real trainer (experiments/runner.py) in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8, which must be set before JAX starts; one 8-device
process runs every layout in turn, so JAX starts and compiles as few times as possible.

Losses are compared with rtol=1e-5: layouts sum the loss and the gradients in different orders (per device,
then across devices), so float32 rounding differs by a few ulps per reduction, relative to the size of the
values (the loss here is about 3.4, and the differences seen are at most 2.1e-7 relative). A layout bug, such as
a missing gradient reduction or a wrong batch row, moves the loss by far more than 1e-5 within a step or two.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from helpers import launch  # tests/ is on sys.path under pytest's default (prepend) import mode

pytestmark = pytest.mark.slow

STEPS, HALF = 6, 3
# The schedule ends at STEPS whatever train.steps is, so a run stopped at HALF and resumed matches a straight one.
# Dropout everywhere: each device draws its part of the same masks, so every layout still matches one device
# (and a generator that could not be sharded, as philox4x32 could not, fails every layout).
COMMON = {"train.steps": STEPS, "optimizer.decay_steps": STEPS, "model.dropout_rate": 0.1,
          "model.attention_dropout_rate": 0.1}
MIXED = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
# mesh layout -> (overrides, shard shape on one device of block_0/attention/query [D=32, H=8, K=4] and
# block_0/mlp/up [D=32, F=64]); the rules put embed (D) on fsdp, heads (H) and mlp (F) on tensor.
LAYOUTS = {
    "data": ({"mesh.data": 8}, [32, 8, 4], [32, 64]),
    "fsdp": ({"mesh.data": 1, "mesh.fsdp": 8}, [4, 8, 4], [4, 64]),
    "tensor": ({"mesh.data": 2, "mesh.tensor": 4}, [32, 2, 4], [32, 16]),
    "mixed": (MIXED, [16, 4, 4], [16, 32]),
}


def _run(root: str, name: str, data_dir: str, **overrides) -> dict:
  return {"workdir": os.path.join(root, name), "data_dir": data_dir, "overrides": {**COMMON, **overrides}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tfds_data_dir) -> dict[str, dict]:
  """Results by name: `one` (1 device, STEPS steps), every layout of LAYOUTS (8 devices, STEPS steps), and the
  first halves of the cross-mesh runs, `one_to_eight` (1 device) and `eight_to_one` (8 devices, mixed)."""
  root = str(tmp_path_factory.mktemp("multidevice"))
  one_device = [_run(root, "one", tfds_data_dir), _run(root, "one_to_eight", tfds_data_dir, **{"train.steps": HALF})]
  eight_devices = [_run(root, name, tfds_data_dir, **overrides) for name, (overrides, _, _) in LAYOUTS.items()]
  eight_devices.append(_run(root, "eight_to_one", tfds_data_dir, **MIXED, **{"train.steps": HALF}))
  # The two processes are independent: run them side by side (compiling is mostly single-threaded).
  processes = [launch.start(one_device, os.path.join(root, "one_device.log"), devices=1),
               launch.start(eight_devices, os.path.join(root, "eight_devices.log"), devices=8)]
  results = launch.finish(processes)
  by_name = {os.path.basename(r["workdir"]): r for r in sum(results, [])}
  by_name["root"] = root
  return by_name


def test_one_device_reference_learns(runs):
  """The comparisons below mean something only if the loss moves by much more than their tolerance."""
  one = runs["one"]
  assert one["devices"] == 1 and one["status"] == "completed"
  losses = [loss for _, loss in one["losses"]]
  assert [step for step, _ in one["losses"]] == list(range(1, STEPS + 1))
  assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_gives_the_losses_of_one_device(runs, layout):
  _, query_shard, up_shard = LAYOUTS[layout]
  result = runs[layout]
  assert result["devices"] == 8
  # The parameters really are split as the layout says (so the test cannot pass by replicating them).
  assert result["layouts"]["block_0/attention/query"]["shard_shape"] == query_shard
  assert result["layouts"]["block_0/mlp/up"]["shard_shape"] == up_shard
  assert [step for step, _ in result["losses"]] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([loss for _, loss in result["losses"]], [loss for _, loss in runs["one"]["losses"]],
                             rtol=1e-5, atol=0, err_msg=f"mesh layout {layout}")


def test_checkpoint_restores_on_another_mesh(runs, tfds_data_dir):
  """HALF steps on one mesh, then resume to STEPS on the other: the last steps match one device throughout."""
  root = runs["root"]
  processes = [
      launch.start([_run(root, "eight_to_one", tfds_data_dir)], os.path.join(root, "resume_one.log"), devices=1),
      launch.start([_run(root, "one_to_eight", tfds_data_dir, **MIXED)], os.path.join(root, "resume_eight.log"),
                   devices=8),
  ]
  (eight_to_one,), (one_to_eight,) = launch.finish(processes)
  assert eight_to_one["devices"] == 1 and one_to_eight["devices"] == 8
  assert one_to_eight["layouts"]["block_0/attention/query"]["shard_shape"] == LAYOUTS["mixed"][1]
  reference = dict(runs["one"]["losses"])
  for name, result in (("8 -> 1 device", eight_to_one), ("1 -> 8 devices", one_to_eight)):
    # Only the steps after HALF ran: the run resumed from the checkpoint instead of starting over.
    assert [step for step, _ in result["losses"]] == list(range(HALF + 1, STEPS + 1)), name
    assert result["status"] == "completed" and result["step"] == STEPS, name
    np.testing.assert_allclose([loss for _, loss in result["losses"]],
                               [reference[step] for step, _ in result["losses"]], rtol=1e-5, atol=0, err_msg=name)

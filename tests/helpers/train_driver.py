r"""Runs the trainer on a list of tiny configs in one process and prints what the tests compare.

  python tests/helpers/train_driver.py RUNS_JSON [--coordinator_address=... --num_processes=... --process_id=...]

RUNS_JSON is a list of {"workdir", "data_dir", "overrides": {"section.key": value}}. The runs share one JAX
start-up; each prints one line `RESULT {...}` with the train losses this run logged, its summary's status and
step, and how two parameters of its final checkpoint lie on the mesh (a population's: each member's losses, and
its stacked parameters, the member axis first). The multi-host flags go through
experiments.train.initialize_distributed, as in the real entry point.

tests/test_multidevice.py and tests/test_multihost.py start this script in subprocesses, because fake CPU
devices (XLA_FLAGS) and jax.distributed must be set up before JAX starts.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
from absl import flags  # noqa: E402

from experiments import build, checkpoint, population, runner, sharding, validation  # noqa: E402
from experiments import train as train_cli  # noqa: E402  (defines the multi-host flags)
from tests.helpers.metrics import train_losses  # noqa: E402
from tests.helpers.tiny_config import MESH, tiny_config  # noqa: E402

# Parameters whose layout the tests check: `embed` goes to the fsdp axis, `heads` and `mlp` to tensor.
LAYOUT_PATHS = ("block_0/attention/query", "block_0/mlp/up")


def param_layouts(config, workdir: str) -> dict[str, dict]:
  """PartitionSpec, global shape and one device's shard shape of some parameters of the final checkpoint."""
  config = validation.resolve(config)
  sharded = build.ShardedModel(config)
  abstract, size = sharded.abstract_params, population.size_of(config)
  if size > 1:
    axes = sharding.member_axes(sharding.parse_rules(config.mesh.rules))
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct((size, *a.shape), a.dtype,
                                                           sharding=sharding.with_members(a.sharding, axes)), abstract)
  params, _ = checkpoint.restore_params(workdir, abstract)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): x
          for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  return {p: {"spec": str(flat[p].sharding.spec), "shape": list(flat[p].shape),
              "shard_shape": list(flat[p].addressable_shards[0].data.shape)} for p in LAYOUT_PATHS}


def main(runs: list[dict]) -> None:
  train_cli.initialize_distributed()
  for run in runs:
    config = tiny_config(run["data_dir"], {**MESH, **run.get("overrides", {})})
    before = len(train_losses(run["workdir"])) if os.path.exists(run["workdir"]) else 0
    summary = runner.train_and_evaluate(config, run["workdir"])
    print("RESULT " + json.dumps({
        "workdir": run["workdir"],
        # Only process 0 writes metrics.jsonl; the others' view of the shared file could be incomplete.
        "losses": train_losses(run["workdir"])[before:] if jax.process_index() == 0 else [],
        "member_losses": [train_losses(member) for member in summary.get("member_dirs", [])],
        "status": summary["status"], "step": summary["step"],
        "devices": jax.device_count(), "processes": jax.process_count(), "process_index": jax.process_index(),
        "layouts": param_layouts(config, run["workdir"]),
    }), flush=True)


if __name__ == "__main__":
  flags.FLAGS(sys.argv[:1] + sys.argv[2:])
  main(json.loads(sys.argv[1]))

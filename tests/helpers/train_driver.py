r"""Runs the trainer for several configs in one process and prints what the tests compare, as JSON.

  python tests/helpers/train_driver.py '[{"workdir": "/tmp/a", "overrides": {"mesh.fsdp": 8, ...}}, ...]'

Used by tests/test_multidevice.py and tests/test_multihost.py, which start it in subprocesses because
XLA_FLAGS (fake CPU devices) and jax.distributed must be set up before JAX starts. Each run prints one line
`RESULT {"workdir", "losses" {step: train/loss}, "specs" {param path: PartitionSpec}, "devices", ...}`.
With --coordinator_address, --num_processes and --process_id, the process first joins a multi-host job
through experiments.train.initialize_distributed (the path the real entry point takes).
"""

from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import jax  # noqa: E402
from absl import flags  # noqa: E402

from configs import base  # noqa: E402
from experiments import checkpoint, runner, validation  # noqa: E402
from experiments import train as train_cli  # noqa: E402  (defines the multi-host flags)
from experiments.metrics import read_metrics  # noqa: E402

# Parameters whose layout the tests check: the fsdp axis splits `embed`, the tensor axis `heads` and `mlp`.
SPEC_PATHS = ("block_0/attention/query", "block_0/mlp/up")


def tiny_config(data_dir: str, overrides: dict):
  """A model small enough to compile in seconds, with heads, MLP and vocabulary divisible by 8."""
  c = base.get_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.mlp_dim = 2, 32, 8, 64
  c.data.task, c.data.vocab_size, c.data.seq_len = "associative_recall", 32, 32
  c.data.num_pairs, c.data.num_queries = 4, 4
  c.data.num_train, c.data.num_validation, c.data.data_dir = 512, 64, data_dir
  c.train.steps, c.train.batch_size, c.train.log_every = 5, 16, 1
  c.train.eval_every, c.train.checkpoint_every = 0, 0
  c.eval.max_batches = 1
  c.optimizer.warmup_steps, c.optimizer.learning_rate = 2, 3e-3
  c.checkpoint.async_save = False
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


def param_layouts(config, workdir: str) -> dict[str, dict]:
  """How the final checkpoint's parameters lie on the mesh: PartitionSpec, global and per-device shapes."""
  trainer = runner.Trainer(validation.resolve(config), workdir)
  params, _ = checkpoint.restore_params(workdir, trainer.abstract_state.params)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): x
          for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  return {p: {"spec": str(flat[p].sharding.spec), "shape": list(flat[p].shape),
              "shard_shape": list(flat[p].addressable_shards[0].data.shape)} for p in SPEC_PATHS}


def main(argv):
  runs = json.loads(argv[1])
  train_cli.initialize_distributed()
  for run in runs:
    config = tiny_config(run["data_dir"], run.get("overrides", {}))
    summary = runner.train_and_evaluate(config, run["workdir"])
    losses = {m["step"]: m["train/loss"] for m in read_metrics(run["workdir"]) if "train/loss" in m} \
        if jax.process_index() == 0 else {}
    print("RESULT " + json.dumps({"workdir": run["workdir"], "losses": losses, "layouts": param_layouts(config, run["workdir"]),
                                  "devices": jax.device_count(), "processes": jax.process_count(),
                                  "status": summary["status"], "step": summary["step"]}), flush=True)


if __name__ == "__main__":
  flags.FLAGS(sys.argv[:1] + [a for a in sys.argv[2:]])
  main(sys.argv[:2])

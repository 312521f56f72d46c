"""The one tiny run config of the tests that train, validate or lower a run; each test passes what it changes.

It lives apart from train_driver.py because that script imports experiments.train, whose absl flags would
clash with experiments.evaluate's in the pytest process.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from configs import base

# What the multi-device, multi-host and lowering runs change: heads (8) and MLP (64) that every mesh axis they
# use divides, as it divides the width (32) and the vocabulary (32); sequences of 32; one evaluation batch.
MESH = {"model.num_heads": 8, "model.mlp_dim": 64, "data.seq_len": 32, "eval.max_batches": 1}


def tiny_config(data_dir: str, overrides: dict | None = None) -> ConfigDict:
  """Two layers of width 32 with two heads, associative recall of 24 tokens: a step compiles and runs in seconds.

  Args:
    data_dir: where the task's data is prepared (and found again by later runs).
    overrides: {"section.field": value}, applied last. The run's length is the test's to say (`train.steps`;
      base.py's otherwise).

  Returns:
    The run config.
  """
  c = base.get_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads = 2, 32, 2
  c.data.task, c.data.vocab_size, c.data.seq_len = "associative_recall", 32, 24
  c.data.num_pairs, c.data.num_queries = 4, 4
  c.data.num_train, c.data.num_validation, c.data.data_dir = 512, 64, data_dir
  c.train.batch_size, c.train.log_every = 16, 1
  c.train.eval_every, c.train.checkpoint_every = 0, 0
  c.optimizer.warmup_steps, c.optimizer.learning_rate = 2, 3e-3
  c.checkpoint.async_save = False
  c.inspect.default_probe = False  # drawing costs seconds a run; the tests of the probes turn it on
  for key, value in (overrides or {}).items():
    section, field = key.split(".")
    c[section][field] = value
  return c

"""The tiny run that the multi-device, multi-host and lowering tests share.

It lives apart from train_driver.py because that script imports experiments.train, whose absl flags would
clash with experiments.evaluate's in the pytest process.
"""

from __future__ import annotations

from configs import base


def tiny_config(data_dir: str, overrides: dict):
  """Two layers of width 32, with heads (8), MLP (64) and vocabulary (32) divisible by every mesh axis used."""
  c = base.get_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.mlp_dim = 2, 32, 8, 64
  c.data.task, c.data.vocab_size, c.data.seq_len = "associative_recall", 32, 32
  c.data.num_pairs, c.data.num_queries = 4, 4
  c.data.num_train, c.data.num_validation, c.data.data_dir = 512, 64, data_dir
  c.train.batch_size, c.train.log_every = 16, 1
  c.train.eval_every, c.train.checkpoint_every = 0, 0
  c.eval.max_batches = 1
  c.optimizer.warmup_steps, c.optimizer.learning_rate = 2, 3e-3
  c.checkpoint.async_save = False
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c

"""A tiny sweep config shared by the sweep and report tests."""

from __future__ import annotations

from ml_collections import ConfigDict

from configs.sweeps import common


def tiny_sweep(data_dir: str, values=(1, 2, 4), steps: int = 3, path: str = "model.num_heads") -> ConfigDict:
  """A grid over `path` of a 1-layer, width-32 model trained a few steps: each trial takes seconds."""
  c = common.sweep_config("tiny")  # metric eval/loss, minimized; grid sampler
  c.fixed = ConfigDict({
      "model": {"num_layers": 1, "d_model": 32, "num_heads": 2},
      "data": {"seq_len": 16, "vocab_size": 32, "num_pairs": 2, "num_queries": 2, "num_train": 256,
               "num_validation": 32, "data_dir": data_dir},
      "train": {"steps": steps, "batch_size": 8, "log_every": 1, "eval_every": 0, "checkpoint_every": 5},
      "optimizer": {"warmup_steps": 0},
      "checkpoint": {"async_save": False, "keep_best": 0},
      "inspect": {"default_probe": False},  # drawing costs seconds a trial
  })
  c.parameters = [{"path": path, "values": list(values)}]
  c.workers = 1
  return c

"""The main job: a small causal transformer learns multi-query associative recall on a CPU.

  python -m experiments.train --config=configs/default.py --workdir=runs/default
"""

from configs import base


def get_config():
  """Two layers, four heads, width 128, on 64-token recall sequences of 8 key-value pairs."""
  c = base.get_config()
  c.train.steps = 1_500
  c.train.batch_size = 64
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.checkpoint_every = 500
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.end_learning_rate = 3e-5
  return c

"""Capacity: recall accuracy against model width D, with 1 or 4 heads, on harder recall (as Zoology's MQAR figure).

  python -m experiments.sweep --config=configs/sweeps/capacity.py --workdir=runs/capacity

On configs/default.py (2 layers, RoPE, K = D / H) with more pairs per sequence than its 4 in 32 tokens: here the
differences are what a model of width D can hold, not how fast it gets there. As in Zoology, each point
trains at a small grid of learning rates and the docs read the best of them per point; the learning rates
and the replicate seeds of a point train as one population (`vectorize`, at both scales). The grid is
large, so a point has 3 replicates, not 5.

Scales: 'cpu' trains 8 pairs in 32 tokens (twice the default's pairs in its length) at D in {16, 32, 64, 128},
2 learning rates, 3 replicates, for at most CPU_STEPS steps with the learning rate decayed over them; 'accel' adds
D = 256, 8 pairs in 64 tokens and 16 in 128, 4 learning rates and 5 replicates, with 4x the steps and data per
step. Each run stops at the protocol's 0.99 (configs/sweeps/common.py). The widest point comes first in the grid,
so that its steps to target (which the budget must be twice of) are measured first.
"""

from configs.sweeps import common

VARIANTS = common.SCALES
CPU_STEPS = 3_000


def get_config(scale: str | None = None):
  """The capacity sweep at `scale` ('cpu' or 'accel')."""
  scale = common.check_scale(scale)
  if scale == "cpu":
    widths, settings, learning_rates, replicates = [128, 64, 32, 16], [[8, 8, 32]], [5e-4, 1e-3], 3
  else:
    widths, settings = [256, 128, 64, 32], [[8, 8, 64], [16, 16, 64], [16, 16, 128]]
    learning_rates, replicates = [3e-4, 1e-3, 3e-3, 1e-2], 5
  parameters = [
      # (data.num_pairs, data.num_queries, data.seq_len): every key of a sequence is queried.
      {"paths": ["data.num_pairs", "data.num_queries", "data.seq_len"], "values": settings},
      {"path": "model.d_model", "values": widths},
      {"path": "model.num_heads", "values": [1, 4]},
      {"path": "optimizer.learning_rate", "values": learning_rates},
  ]
  c = common.recall_study("capacity", scale, parameters, steps=CPU_STEPS, replicates=replicates)
  # At every scale a point's learning rates and seeds are one population, so the best learning rate of a point
  # is chosen among runs that shared one compiled step and one data order per seed.
  c.vectorize, c.workers = True, 1
  # Decayed over the whole budget: with a learning-rate grid there is no default schedule to keep.
  c.fixed.optimizer.decay_steps = 0
  return c

"""Positions: learned, sinusoidal, RoPE and none, on associative recall.

  python -m experiments.sweep --config=configs/sweeps/positions.py --workdir=runs/positions --workers=2

On configs/default.py (RoPE there), shortened to STEPS steps. Recall needs a previous-token head; without
positions a causal model can only infer order from the mask itself.
"""

from configs.sweeps import common

VARIANTS = common.SCALES
STEPS = 400  # the default config leaves its plateau at chance after 300-500 steps


def get_config(scale: str | None = None):
  """The positions sweep at `scale` ('cpu' or 'accel')."""
  parameters = [{"path": "model.positions", "values": ["learned", "sinusoidal", "rope", "none"]}]
  return common.recall_study("positions", scale, STEPS, parameters)

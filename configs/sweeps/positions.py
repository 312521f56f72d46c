"""Positions: learned, sinusoidal, RoPE and none, on associative recall.

  python -m experiments.sweep --config=configs/sweeps/positions.py --workdir=runs/positions

On configs/default.py (RoPE there) under the recall protocol of configs/sweeps/common.py (5 seeds per point,
stopped at 0.99 accuracy or after 2,600 steps). Recall needs a previous-token head; without positions a causal
model can only infer order from the mask itself. The 'cpu' scale runs learned and none, to fit a 2-core CPU
(docs/ablations.md, "The protocol"): RoPE is configs/default.py itself, the heads study's H = 4 point (the same
trials), which docs/ablations.md shows beside them. 'accel' runs all four.
"""

from configs.sweeps import common

VARIANTS = common.SCALES


def get_config(scale: str | None = None):
  """The positions sweep at `scale` ('cpu' or 'accel')."""
  kinds = ["learned", "sinusoidal", "rope", "none"]
  if common.check_scale(scale) == "cpu":
    kinds = ["learned", "none"]
  parameters = [{"path": "model.positions", "values": kinds}]
  return common.recall_study("positions", scale, parameters)

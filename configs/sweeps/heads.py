"""Heads: H in {1, 2, 4, 8, 16} at fixed width (K = D / H) and at fixed K, plus grouped- and multi-query.

  python -m experiments.sweep --config=configs/sweeps/heads.py --workdir=runs/heads

On configs/default.py (D = 128, 2 layers, RoPE, recall of 4 pairs in 32 tokens) under the recall protocol of
configs/sweeps/common.py (5 seeds per point, stopped at 0.99 accuracy or after 2,600 steps). At fixed width the
parameter count is the same for every H; at fixed K = 32 it grows with H. The grouped and multi-query variants
share G key/value heads among 8 query heads (K = 16).

The 'cpu' scale runs CPU_GRID, the ends of the fixed-width series and the default between them: the whole grid
does not fit a 2-core CPU's budget (docs/ablations.md, "The protocol"). 'accel' runs the whole grid.
"""

from configs.sweeps import common

VARIANTS = common.SCALES

# (num_heads H, head_dim K, num_kv_heads G); None = the default (K = D / H, G = H).
FIXED_WIDTH = [[1, 128, None], [2, 64, None], [4, 32, None], [8, 16, None], [16, 8, None]]
FIXED_K = [[1, 32, None], [2, 32, None], [8, 32, None], [16, 32, None]]  # H = 4, K = 32 is in FIXED_WIDTH
GROUPED = [[8, 16, 2], [8, 16, 1]]  # grouped-query (G = 2) and multi-query (G = 1)
CPU_GRID = [[1, 128, None], [4, 32, None], [16, 8, None]]


def get_config(scale: str | None = None):
  """The heads sweep at `scale` ('cpu' or 'accel')."""
  parameters = [{"paths": ["model.num_heads", "model.head_dim", "model.num_kv_heads"],
                 "values": CPU_GRID if common.check_scale(scale) == "cpu" else FIXED_WIDTH + FIXED_K + GROUPED}]
  return common.recall_study("heads", scale, parameters)

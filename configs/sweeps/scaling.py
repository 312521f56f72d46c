"""Score scaling: q.k / sqrt(K) against unscaled q.k, at K = 32 (4 heads) and K = 128 (1 head).

  python -m experiments.sweep --config=configs/sweeps/scaling.py --workdir=runs/scaling --workers=2

On configs/default.py (D = 128), shortened to STEPS steps. Without the factor, score variance grows with K
at initialization, so the larger K is where a difference should show first.
"""

from configs.sweeps import common

VARIANTS = common.SCALES
STEPS = 400  # the default config leaves its plateau at chance after 300-500 steps


def get_config(scale: str | None = None):
  """The scaling sweep at `scale` ('cpu' or 'accel')."""
  parameters = [{"path": "model.score_scale", "values": ["rsqrt", "none"]},
                {"path": "model.num_heads", "values": [1, 4]}]
  return common.recall_study("scaling", scale, STEPS, parameters)

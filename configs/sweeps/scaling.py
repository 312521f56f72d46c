"""Score scaling: q.k / sqrt(K) against unscaled q.k, at K = 32 (4 heads) and K = 128 (1 head).

  python -m experiments.sweep --config=configs/sweeps/scaling.py --workdir=runs/scaling

On configs/default.py (D = 128) under the recall protocol of configs/sweeps/common.py (5 seeds per point,
stopped at 0.99 accuracy or after 2,600 steps). Without the factor, score variance grows with K at
initialization, so the larger K is where a difference should show first: the 'cpu' scale runs unscaled scores at
K = 128 only, to fit a 2-core CPU (docs/ablations.md, "The protocol"); scaled scores at K = 128 are the heads
study's H = 1 point (the same model and seeds), which docs/ablations.md shows beside it. 'accel' runs both at both.
"""

from configs.sweeps import common

VARIANTS = common.SCALES


def get_config(scale: str | None = None):
  """The scaling sweep at `scale` ('cpu' or 'accel')."""
  cpu = common.check_scale(scale) == "cpu"
  parameters = [{"path": "model.score_scale", "values": ["none"] if cpu else ["rsqrt", "none"]},
                {"path": "model.num_heads", "values": [1] if cpu else [1, 4]}]
  return common.recall_study("scaling", scale, parameters)

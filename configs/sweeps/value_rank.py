"""Value rank: a full D x D value map per head against value-down/value-up of rank R in {1, 2, 4, K, 2K}.

  python -m experiments.sweep --config=configs/sweeps/value_rank.py --workdir=runs/value_rank

On configs/default.py (D = 128, H = 4, so K = 32) under the recall protocol of configs/sweeps/common.py (5 seeds
per point, stopped at 0.99 accuracy or after 2,600 steps); the report's eval_accuracy_vs_parameters.png plots
accuracy against parameter count. The 'cpu' scale runs the full map and rank 1, to fit a 2-core CPU
(docs/ablations.md, "The protocol"); rank K is configs/default.py itself, the heads study's H = 4 point (the same
trials: same config, same seeds), which docs/ablations.md shows beside them. 'accel' runs every rank.
"""

from configs.sweeps import common

VARIANTS = common.SCALES
K = 32  # head_dim of the default config: d_model 128 / 4 heads


def get_config(scale: str | None = None):
  """The value-rank sweep at `scale` ('cpu' or 'accel')."""
  ranks = (1,) if common.check_scale(scale) == "cpu" else (1, 2, 4, K, 2 * K)
  parameters = [{"paths": ["model.value_mode", "model.value_rank"],
                 "values": [["full", None]] + [["factored", r] for r in ranks]}]
  return common.recall_study("value_rank", scale, parameters)

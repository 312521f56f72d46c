"""Value rank: a full D x D value map per head against value-down/value-up of rank R in {1, 2, 4, K, 2K}.

  python -m experiments.sweep --config=configs/sweeps/value_rank.py --workdir=runs/value_rank --workers=2

On configs/default.py (D = 128, H = 4, so K = 32), shortened to STEPS steps; the report's
eval_accuracy_vs_parameters.png plots accuracy against parameter count.
"""

from configs.sweeps import common

VARIANTS = common.SCALES
STEPS = 400  # the default config leaves its plateau at chance after 300-500 steps
K = 32  # head_dim of the default config: d_model 128 / 4 heads


def get_config(scale: str | None = None):
  """The value-rank sweep at `scale` ('cpu' or 'accel')."""
  parameters = [{"paths": ["model.value_mode", "model.value_rank"],
                 "values": [["full", None]] + [["factored", r] for r in (1, 2, 4, K, 2 * K)]}]
  return common.recall_study("value_rank", scale, STEPS, parameters)

"""Masking: causal, none, sliding windows of several sizes, and a bidirectional prefix, on associative recall.

  python -m experiments.sweep --config=configs/sweeps/masking.py --workdir=runs/masking

On configs/default.py (recall of 4 pairs in 32 tokens: the 8 context tokens, then queries) under the recall
protocol of configs/sweeps/common.py (5 seeds per point, stopped at 0.99 accuracy or after 2,600 steps). A
query sits up to 31 tokens after the pair it asks for, so a window narrower than that can only answer the
queries that happen to sit close to their pair. The prefix covers the 8 context tokens.
Two induction-task trials (causal and none) show the future leaking when nothing is masked: there each
target is the next input, which an unmasked model can read (see docs/ablations.md for what sampling gives).
"""

from configs.sweeps import common

VARIANTS = common.SCALES

# (data.task, model.mask, model.window, model.prefix_length)
RECALL = [["associative_recall", "causal", 0, 0], ["associative_recall", "none", 0, 0]]
RECALL += [["associative_recall", "sliding_window", w, 0] for w in (2, 4, 8, 16)]
RECALL += [["associative_recall", "prefix", 0, 8]]
INDUCTION = [["induction", "causal", 0, 0], ["induction", "none", 0, 0]]
# What fits a 2-core CPU (docs/ablations.md, "The protocol"): 'cpu' runs one window and the prefix; causal recall is
# configs/default.py itself, the heads study's H = 4 point (the same trials), which docs/ablations.md shows with them.
CPU_GRID = [["associative_recall", "sliding_window", 8, 0], RECALL[-1]]


def get_config(scale: str | None = None):
  """The masking sweep at `scale` ('cpu' or 'accel')."""
  values = CPU_GRID if common.check_scale(scale) == "cpu" else RECALL + INDUCTION
  parameters = [{"paths": ["data.task", "model.mask", "model.window", "model.prefix_length"], "values": values}]
  return common.recall_study("masking", scale, parameters)

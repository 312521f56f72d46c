"""Text tables of what inspection measures, as the `experiments.inspect` commands print them."""

from __future__ import annotations

import numpy as np


def score_table(scores: dict[str, np.ndarray], induction_heads_NH: np.ndarray) -> str:
  """A text table with one row per layer and head, one column per score and a last one saying induction head or not.

  Args:
    scores: {score name: scores_NH}.
    induction_heads_NH: head_scores.induction_heads of the scores.
  """
  names = list(scores)
  n, h = scores[names[0]].shape
  width = max(14, *(len(name) for name in names))
  lines = ["layer  head  " + "  ".join(f"{name:>{width}}" for name in names) + "  induction_head"]
  for layer in range(n):
    for head in range(h):
      values = "  ".join(f"{scores[name][layer, head]:>{width}.4f}" for name in names)
      lines.append(f"{layer:>5}  {head:>4}  {values}  {'yes' if induction_heads_NH[layer, head] else 'no':>14}")
  return "\n".join(lines)


def context_table(similarity_NXX: np.ndarray, drift_NX: np.ndarray) -> str:
  """A text table, one row per layer: cosine between every two contexts, then each one's to the embedding."""
  n, x = drift_NX.shape
  pairs = [(i, j) for i in range(x) for j in range(i + 1, x)]
  header = ["layer   "] + [f"cos({i},{j})" for i, j in pairs] + [f"to_emb({i})" for i in range(x)]
  lines = ["  ".join(f"{cell:>10}" for cell in header)]
  for layer in range(n):
    name = "embed" if layer == 0 else f"block {layer - 1}"
    values = [similarity_NXX[layer, i, j] for i, j in pairs] + list(drift_NX[layer])
    lines.append("  ".join([f"{name:>10}"] + [f"{v:>10.4f}" for v in values]))
  return "\n".join(lines)

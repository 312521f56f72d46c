"""Text tables of what inspection measures, as the `experiments.inspect` commands print them."""

from __future__ import annotations

import numpy as np


def score_table(scores: dict[str, np.ndarray]) -> str:
  """A text table with one row per layer and head and one column per score."""
  names = list(scores)
  n, h = scores[names[0]].shape
  lines = ["layer  head  " + "  ".join(f"{name:>14}" for name in names)]
  for layer in range(n):
    for head in range(h):
      lines.append(f"{layer:>5}  {head:>4}  " + "  ".join(f"{scores[name][layer, head]:>14.4f}" for name in names))
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

"""The training losses a run logged, read back from its metrics.jsonl (experiments.files.read_metrics)."""

from __future__ import annotations

from experiments.files import read_metrics


def train_losses(workdir: str) -> list[tuple[int, float]]:
  """(step, train/loss) of each logged line that has a training loss, in the file's order.

  Args:
    workdir: the run's directory (no metrics.jsonl yet: an empty list).

  Returns:
    One pair per line: a step logged twice (a second run appending) appears twice.
  """
  return [(m["step"], m["train/loss"]) for m in read_metrics(workdir) if "train/loss" in m]

"""What a run logged, read back from its metrics.jsonl: through experiments.files.read_metrics (one row per step,
the resumed attempt's) or, to see repeats, as the file holds it."""

from __future__ import annotations

import json
import os

from experiments.files import METRICS_FILE, read_metrics


def train_losses(workdir: str) -> list[tuple[int, float]]:
  """(step, train/loss) of each logged step that has a training loss, in step order.

  Args:
    workdir: the run's directory (no metrics.jsonl yet: an empty list).

  Returns:
    One pair per step: a step logged again by a resumed run appears once, with the resumed run's loss.
  """
  return [(m["step"], m["train/loss"]) for m in read_metrics(workdir) if "train/loss" in m]


def written_steps(workdir: str) -> list[int]:
  """The step of every train row as metrics.jsonl holds it, repeats included: what tells a resume from a
  restart, or one writer from two."""
  with open(os.path.join(workdir, METRICS_FILE), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [row["step"] for row in rows if "train/loss" in row]


def losses_by_step(workdir: str) -> dict[int, float]:
  """{step: train/loss} of a run (train_losses as a dict)."""
  return dict(train_losses(workdir))

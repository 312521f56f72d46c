"""Tables and plots of a sweep (or of one run) from the rows of results.py; works while a sweep runs.

Writes into the workdir: results.csv, results.md (one row per trial), loss_curves.png (the training loss of
every trial on one figure) and <metric>_vs_<parameter>.png (the final metric against each swept parameter).
matplotlib is imported where a figure is drawn.
"""

from __future__ import annotations

import csv
import os
import re
from typing import Any

from experiments.sweeps import results


def _text(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
  if isinstance(value, int) and not isinstance(value, bool):
    return f"{value:,}"
  return str(value)


def write_tables(rows: list[dict[str, Any]], paths: list[str], metric: str, workdir: str) -> list[str]:
  """Writes results.csv and results.md, best first by the metric; returns the column names."""
  columns = ["trial", "status", *paths, "step"]
  for name in results.EVAL_COLUMNS:
    columns += [f"final {name}", f"best {name}"]
  columns += ["parameters", "tokens/s", "wall s", "error"]
  rows = sorted(rows, key=lambda r: results.sort_key(r, metric))
  with open(os.path.join(workdir, "results.csv"), "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for row in rows:
      writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
  lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
  for row in rows:
    lines.append("| " + " | ".join(_text(row.get(c)).replace("|", "/") for c in columns) + " |")
  counts: dict[str, int] = {}
  for row in rows:
    counts[row["status"]] = counts.get(row["status"], 0) + 1
  tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
  header = f"{len(rows)} trials ({tally}), best first by final {metric}."
  with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write(header + "\n\n" + "\n".join(lines) + "\n")
  return columns


def slug_label(trial: str) -> str:
  """A trial's id without its hash, for labels."""
  return re.sub(r"-[0-9a-f]{8}$", "", trial)


def _file_part(name: str) -> str:
  """A metric or config path as part of a file name: eval/loss -> eval_loss."""
  return re.sub(r"[^A-Za-z0-9]+", "_", name)


def _save(fig, workdir: str, name: str) -> str:
  """Lays out, writes and closes a figure; returns its file name."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig.tight_layout()
  fig.savefig(os.path.join(workdir, name), dpi=110)
  plt.close(fig)
  return name


def write_plots(rows: list[dict[str, Any]], paths: list[str], metric: str, workdir: str) -> list[str]:
  """Writes loss_curves.png, <metric>_by_trial.png, <metric>_vs_parameters.png and <metric>_vs_<path>.png.

  Returns:
    The names of the files written.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")  # files only, no display
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  written = []
  fig, ax = plt.subplots(figsize=(9, 5.5))
  for row in rows:
    if row["_curve"]:
      steps, losses = zip(*row["_curve"])
      ax.plot(steps, losses, label=f"{slug_label(row['trial'])} ({row['status']})", linewidth=1)
  ax.set_xlabel("step")
  ax.set_ylabel("train/loss")
  ax.set_title(f"training loss of {len(rows)} trials")
  if len(rows) <= 20:
    ax.legend(fontsize=6, loc="upper right")
  written.append(_save(fig, workdir, "loss_curves.png"))

  key = f"final {metric}"
  ranked = sorted((row for row in rows if row.get(key) is not None), key=lambda r: results.sort_key(r, metric))
  if ranked:  # every trial by name: the one figure that shows zipped parameters (several paths) as they were set
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.32 * len(ranked)))
    ax.barh(range(len(ranked)), [row[key] for row in ranked])
    ax.set_yticks(range(len(ranked)), [row["trial"] for row in ranked], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(key)
    ax.set_title(f"{key} of each trial", fontsize=9)
    written.append(_save(fig, workdir, f"{_file_part(metric)}_by_trial.png"))
  sizes = [row for row in ranked if row.get("parameters")]
  if len({row["parameters"] for row in sizes}) > 1:  # the metric against model size (value rank, heads at fixed K)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([row["parameters"] for row in sizes], [row[key] for row in sizes])
    for row in sizes:
      ax.annotate(slug_label(row["trial"]), (row["parameters"], row[key]), fontsize=6)
    ax.set_xlabel("parameters")
    ax.set_ylabel(key)
    ax.set_title(f"{key} against parameter count", fontsize=9)
    written.append(_save(fig, workdir, f"{_file_part(metric)}_vs_parameters.png"))
  for path in paths:
    points = [(row.get(path), row[key]) for row in rows if row.get(key) is not None]
    if not points:
      continue
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in points)
    fig, ax = plt.subplots(figsize=(6, 4))
    if numeric:
      ax.scatter([x for x, _ in points], [y for _, y in points])
      if all(x > 0 for x, _ in points) and max(x for x, _ in points) / min(x for x, _ in points) > 8:
        ax.set_xscale("log", base=2)
    else:
      labels = sorted({str(x) for x, _ in points})
      ax.scatter([labels.index(str(x)) for x, _ in points], [y for _, y in points])
      ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel(path)
    ax.set_ylabel(key)
    ax.set_title(f"{key} against {path} ({len(points)} trials)", fontsize=9)
    written.append(_save(fig, workdir, f"{_file_part(metric)}_vs_{_file_part(path)}.png"))
  return written


def report(workdir: str, metric: str | None = None) -> dict[str, Any]:
  """Writes the tables and plots of a sweep's or a run's workdir.

  Args:
    workdir: a sweep's workdir (with trials/) or a single run's workdir.
    metric: the metric to rank and plot (default: the sweep's, or eval/loss).

  Returns:
    {"rows": the rows (without curves), "files": the files written}.
  """
  rows, paths, sweep_metric = results.collect(workdir)
  metric = metric or sweep_metric
  write_tables(rows, paths, metric, workdir)
  files = ["results.csv", "results.md", *write_plots(rows, paths, metric, workdir)]
  return {"rows": [{k: v for k, v in r.items() if k != "_curve"} for r in rows], "files": files}


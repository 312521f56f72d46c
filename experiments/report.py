r"""Tables and plots of a sweep (or of one run), from the files the runs write; works while a sweep runs.

  python -m experiments.report --workdir=runs/heads [--metric=eval/accuracy]

Writes into the workdir: results.csv, results.md (one row per trial), loss_curves.png (the training loss of
every trial on one figure) and <metric>_vs_<parameter>.png (the final metric against each swept parameter).
Reads only the trials' files (trial.json, summary.json, config.json, metrics.jsonl), never the study's
database, so it works on a copy of the directory too.
"""

from __future__ import annotations

import csv
import math
import os
import re
from typing import Any

from absl import app, flags

from experiments.files import CLAIM_FILE, METRICS_FILE, SUMMARY_FILE, TRIAL_FILE, is_locked, read_json, read_metrics

EVAL_COLUMNS = ("eval/loss", "eval/accuracy")
MAXIMIZED = ("eval/accuracy", "eval/sequence_accuracy")


def _held(trial_dir: str) -> bool:
  """True while a live process holds the trial's claim (see experiments/sweep.py)."""
  return is_locked(os.path.join(trial_dir, CLAIM_FILE))


def _status(record: dict, summary: dict | None, trial_dir: str) -> str:
  """completed | failed | running | interrupted (a run stopped by a signal or whose process died)."""
  status = record.get("status")
  if status == "running" and not _held(trial_dir):
    return "interrupted"
  if status:
    return status
  if summary is not None:
    return "completed" if summary.get("status") == "completed" else "interrupted"
  return "running" if _held(trial_dir) else "interrupted"


def trial_row(trial_dir: str, paths: list[str]) -> dict[str, Any]:
  """One row of the table: the trial's status, swept values, final and best eval metrics, size, speed."""
  record = read_json(os.path.join(trial_dir, TRIAL_FILE)) or {}
  summary = read_json(os.path.join(trial_dir, SUMMARY_FILE))
  config = read_json(os.path.join(trial_dir, "config.json")) or {}
  metrics = read_metrics(trial_dir)
  row: dict[str, Any] = {"trial": record.get("id", os.path.basename(os.path.normpath(trial_dir))),
                         "status": _status(record, summary, trial_dir)}
  for path in paths:  # the swept values as the run saw them (config.json), else as the sweep set them
    section, _, key = path.partition(".")
    row[path] = config.get(section, {}).get(key, (record.get("overrides") or {}).get(path))
  evals = [m for m in metrics if "eval/loss" in m]
  row["step"] = max((m["step"] for m in metrics), default=0)
  for name in EVAL_COLUMNS:
    values = [m[name] for m in evals if name in m]
    row[f"final {name}"] = values[-1] if values else None
    row[f"best {name}"] = (max(values) if name in MAXIMIZED else min(values)) if values else None
  speeds = [m["perf/tokens_per_sec"] for m in metrics if "perf/tokens_per_sec" in m]
  row["tokens/s"] = sorted(speeds)[len(speeds) // 2] if speeds else None  # median: compile time is in the first
  row["parameters"] = summary.get("parameters") if summary else _count_parameters(config)
  row["wall s"] = summary.get("wall_time_sec") if summary else None
  row["error"] = (record.get("error") or "").splitlines()[0][:200] if record.get("error") else ""
  row["_curve"] = [(m["step"], m["train/loss"]) for m in metrics if "train/loss" in m]
  return row


def _count_parameters(config: dict) -> int | None:
  """Parameters of a run that has no summary yet, from its saved config (shapes only, nothing allocated)."""
  if "model" not in config:
    return None
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top  (JAX only when needed)

  from experiments import validation  # pylint: disable=g-import-not-at-top
  from transformer.accounting import parameter_counts  # pylint: disable=g-import-not-at-top

  return parameter_counts(validation.model_config(ConfigDict(config)))["total"]


def collect(workdir: str) -> tuple[list[dict[str, Any]], list[str], str]:
  """The rows of a sweep's trials (or of one run), the swept paths, and the metric to rank by."""
  sweep = read_json(os.path.join(workdir, "sweep.json")) or {}
  paths: list[str] = []
  for entry in sweep.get("parameters", ()):
    paths.extend([entry["path"]] if "path" in entry else entry["paths"])
  metric = sweep.get("metric", "eval/loss")
  trials = os.path.join(workdir, "trials")
  if os.path.isdir(trials):
    dirs = [os.path.join(trials, d) for d in sorted(os.listdir(trials)) if os.path.isdir(os.path.join(trials, d))]
  else:
    dirs = [workdir]
  rows = [trial_row(d, paths) for d in dirs if os.path.exists(os.path.join(d, TRIAL_FILE))
          or os.path.exists(os.path.join(d, METRICS_FILE))]
  return rows, paths, metric


def _sort_key(row: dict[str, Any], metric: str):
  value = row.get(f"final {metric}")
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return (1, 0.0)
  return (0, -value if metric in MAXIMIZED else value)


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
  for name in EVAL_COLUMNS:
    columns += [f"final {name}", f"best {name}"]
  columns += ["parameters", "tokens/s", "wall s", "error"]
  rows = sorted(rows, key=lambda r: _sort_key(r, metric))
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
  header = f"{len(rows)} trials ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}), best first by final {metric}."
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
  ranked = sorted((row for row in rows if row.get(key) is not None), key=lambda r: _sort_key(r, metric))
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
  rows, paths, sweep_metric = collect(workdir)
  metric = metric or sweep_metric
  write_tables(rows, paths, metric, workdir)
  files = ["results.csv", "results.md", *write_plots(rows, paths, metric, workdir)]
  return {"rows": [{k: v for k, v in r.items() if k != "_curve"} for r in rows], "files": files}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  workdir = flags.FLAGS.workdir
  if workdir is None:
    raise app.UsageError("--workdir is required")
  result = report(workdir, flags.FLAGS.metric)
  with open(os.path.join(workdir, "results.md"), encoding="utf-8") as f:
    print(f.read())
  print("wrote " + ", ".join(result["files"]))


if __name__ == "__main__":
  # Defined here, not at import: tests import this module beside others that define --workdir.
  flags.DEFINE_string("workdir", None, "A sweep's workdir (with trials/) or a single run's workdir.")
  flags.DEFINE_string("metric", None, "Metric of the table and plots (default: the sweep's, or eval/loss).")
  app.run(main)

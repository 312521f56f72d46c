"""The rows of a sweep's (or a run's) results, read from the files its trials write; works while a sweep runs.

Reads only the trials' files (trial.json, summary.json, config.json, metrics.jsonl), never the study's
database, so it works on a copy of the directory too. JAX is imported only for a trial without a summary
yet, whose parameters are counted from its config by the model library.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from experiments.files import (CLAIM_FILE, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, TRIAL_FILE, is_locked,
                               last_write_time, read_json, read_metrics)

EVAL_COLUMNS = ("eval/loss", "eval/accuracy")
MAXIMIZED = ("eval/accuracy", "eval/sequence_accuracy")


def _held(trial_dir: str) -> bool:
  """True while a live process holds the trial's claim (see experiments/sweeps/trials.py)."""
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


def _wall_sec(record: dict, summary: dict | None, trial_dir: str) -> float | None:
  """The wall time of every attempt at the trial (trial.json) together; without attempts recorded, the summary's.

  The summary's covers only the last attempt of a resumed trial. An attempt still open is running (until now) or
  died before a rerun closed it (until its last write, as trials.recover_stale counts it).
  """
  attempts = record.get("attempts")
  if not attempts:
    return summary.get("wall_time_sec") if summary else None
  total = 0.0
  for attempt in attempts:
    if "wall_sec" in attempt:
      total += attempt["wall_sec"]
    else:
      end = time.time() if _held(trial_dir) else last_write_time(trial_dir)
      total += max(end - attempt["start"], 0.0)
  return total


def trial_row(trial_dir: str, paths: list[str]) -> dict[str, Any]:
  """One row of the table: the trial's status, swept values, final and best eval metrics, size, speed."""
  record = read_json(os.path.join(trial_dir, TRIAL_FILE)) or {}
  summary = read_json(os.path.join(trial_dir, SUMMARY_FILE))
  config = read_json(os.path.join(trial_dir, CONFIG_FILE)) or {}
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
  row["wall s"] = _wall_sec(record, summary, trial_dir)
  row["error"] = (record.get("error") or "").splitlines()[0][:200] if record.get("error") else ""
  row["_curve"] = [(m["step"], m["train/loss"]) for m in metrics if "train/loss" in m]
  return row


def _count_parameters(config: dict) -> int | None:
  """Parameters of a run that has no summary yet, from its saved config (shapes only, nothing allocated)."""
  if "model" not in config:
    return None
  # The run's validation and the model library import JAX and flax: only for a trial that has no summary yet.
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top

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


def sort_key(row: dict[str, Any], metric: str):
  """Orders rows best first by `metric`; rows without a value (or NaN) come last."""
  value = row.get(f"final {metric}")
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return (1, 0.0)
  return (0, -value if metric in MAXIMIZED else value)

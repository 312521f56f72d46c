"""The rows of a sweep's (or a run's) results, read from the files its trials write, and their points; works while
a sweep runs.

Reads only the trials' files (trial.json, summary.json, config.json, metrics.jsonl) and sweep.json, never the
study's database, so it works on a copy of the directory too. JAX is imported only for a trial without a summary
yet, whose parameters are counted from its config by the model library.

A point is one setting of the swept values; its replicates are its trials with seeds base + 0, 1, ... (trial.json's
`point`, `replicate`, `seed`; a trial of an older sweep is its own point). A point's statistics count its replicates
that finished (COMPLETED), a run stopped at its target (`train.stop_when`) included, with the metric at its stop:

- the mean of the final metric with a 95% t-interval, mean +- t(0.975, n - 1) * s / sqrt(n) (`scipy.stats.t`),
  clipped to the metric's range (an accuracy's [0, 1]), and the mean of the best. One replicate gives no interval,
  identical ones a zero-width interval. With n = 3..5 seeds a bootstrap is not the better choice: resampling 3
  values gives at most 10 distinct means and takes their spread for the population's. Simulated on normal values
  (4,000 samples each), a nominal 95% percentile bootstrap covered the mean 76% of the time at n = 3, 81% at 4
  and 85% at 5 (scipy.stats.bootstrap's default BCa, 400
  samples: 69%, 79%, 84%); the t-interval 95% at each. rliable's
  stratified bootstrap pools many tasks, and a point is one.
- the median steps to target: the sample median when every replicate reached it, else the Kaplan-Meier estimate
  (`scipy.stats.ecdf` on `scipy.stats.CensoredData`) with the others censored at their last step: the first
  step at which the estimated fraction of seeds not yet at the target is <= 0.5, "not reached" when it never drops
  that far. Counting a run that never reached the target as if it had at its last step would shorten the median.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from typing import Any

from experiments.files import (CLAIM_FILE, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, TRIAL_FILE, is_locked,
                               last_write_time, read_json, read_metrics)

EVAL_COLUMNS = ("eval/loss", "eval/accuracy")
MAXIMIZED = ("eval/accuracy", "eval/sequence_accuracy")
COMPLETED = ("completed", "reached_target")  # the statuses a point's statistics count
NOT_REACHED = "not reached"
T_LEVEL = 0.95


def _held(trial_dir: str) -> bool:
  """True while a live process holds the trial's claim (see experiments/sweeps/trials.py)."""
  return is_locked(os.path.join(trial_dir, CLAIM_FILE))


def _status(record: dict, summary: dict | None, trial_dir: str) -> str:
  """completed | reached_target | pruned | failed | running | interrupted (stopped by a signal or a dead process)."""
  status = record.get("status")
  if status == "running" and not _held(trial_dir):
    return "interrupted"
  if status:
    return status
  if summary is not None:
    return summary["status"] if summary.get("status") in (*COMPLETED, "pruned") else "interrupted"
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


def eval_columns(metric: str) -> tuple[str, ...]:
  """The eval metrics of the tables: loss, accuracy and the sweep's metric."""
  return EVAL_COLUMNS if metric in EVAL_COLUMNS else (*EVAL_COLUMNS, metric)


def _chance(config: dict) -> float | None:
  """The accuracy of a uniform guess where the task has one: 1 / num_pairs for associative recall."""
  data = config.get("data", {})
  return 1.0 / data["num_pairs"] if data.get("task") == "associative_recall" and data.get("num_pairs") else None


def trial_row(trial_dir: str, paths: list[str], metric: str = "eval/loss") -> dict[str, Any]:
  """One row of the table: the trial's point, seed, status, swept values, eval metrics, steps to target, size, speed.

  Keys starting with '_' are for the point tables and plots, not columns: the swept values as the sweep set them
  (`_overrides`), the train-loss and eval-metric curves, the step a run without its target is censored at, and
  the task's chance accuracy.
  """
  record = read_json(os.path.join(trial_dir, TRIAL_FILE)) or {}
  summary = read_json(os.path.join(trial_dir, SUMMARY_FILE))
  config = read_json(os.path.join(trial_dir, CONFIG_FILE)) or {}
  metrics = read_metrics(trial_dir)
  trial = record.get("id", os.path.basename(os.path.normpath(trial_dir)))
  train = config.get("train", {})
  row: dict[str, Any] = {"trial": trial, "point": record.get("point", trial), "replicate": record.get("replicate", 0),
                         "seed": record.get("seed", train.get("seed")), "status": _status(record, summary, trial_dir)}
  overrides = record.get("overrides") or {}
  for path in paths:  # the swept values as the run saw them (config.json), else as the sweep set them
    section, _, key = path.partition(".")
    row[path] = config.get(section, {}).get(key, overrides.get(path))
  evals = [m for m in metrics if "eval/loss" in m]
  row["step"] = max((m["step"] for m in metrics), default=0)
  row["target"] = (summary or {}).get("stop_when") or train.get("stop_when") or ""
  row["steps to target"] = (summary or {}).get("steps_to_target")
  row["reached target"] = row["steps to target"] is not None if row["target"] and summary else None
  for name in eval_columns(metric):
    values = [m[name] for m in evals if name in m]
    row[f"final {name}"] = values[-1] if values else None  # a run stopped at its target: the value at its stop
    row[f"best {name}"] = (max(values) if name in MAXIMIZED else min(values)) if values else None
  speeds = [m["perf/tokens_per_sec"] for m in metrics if "perf/tokens_per_sec" in m]
  row["tokens/s"] = sorted(speeds)[len(speeds) // 2] if speeds else None  # median: compile time is in the first
  row["parameters"] = summary.get("parameters") if summary else _count_parameters(config)
  row["wall s"] = _wall_sec(record, summary, trial_dir)
  row["error"] = (record.get("error") or "").splitlines()[0][:200] if record.get("error") else ""
  row["_overrides"] = {path: overrides.get(path, row[path]) for path in paths}
  row["_curve"] = [(m["step"], m["train/loss"]) for m in metrics if "train/loss" in m]
  row["_eval_curve"] = [(m["step"], m[metric]) for m in evals if metric in m]
  row["_last_step"] = (summary or {}).get("step", row["step"])
  row["_chance"] = _chance(config)
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


def swept_paths(sweep: dict) -> list[str]:
  """The config paths a sweep varies, in the order of its parameters (zipped paths one after another)."""
  paths: list[str] = []
  for entry in sweep.get("parameters", ()):
    paths.extend([entry["path"]] if "path" in entry else entry["paths"])
  return paths


def read_sweep(workdir: str) -> dict:
  """The sweep's config as the sweep command saved it (sweep.json), or {} for a single run's workdir."""
  return read_json(os.path.join(workdir, "sweep.json")) or {}


def collect(workdir: str, metric: str | None = None) -> tuple[list[dict[str, Any]], list[str], str]:
  """The rows of a sweep's trials (or of one run), the swept paths, and the metric (default: the sweep's)."""
  sweep = read_sweep(workdir)
  paths = swept_paths(sweep)
  metric = metric or sweep.get("metric", "eval/loss")
  trials = os.path.join(workdir, "trials")
  if os.path.isdir(trials):
    dirs = [os.path.join(trials, d) for d in sorted(os.listdir(trials)) if os.path.isdir(os.path.join(trials, d))]
  else:
    dirs = [workdir]
  rows = [trial_row(d, paths, metric) for d in dirs if os.path.exists(os.path.join(d, TRIAL_FILE))
          or os.path.exists(os.path.join(d, METRICS_FILE))]
  return rows, paths, metric


def sort_key(row: dict[str, Any], metric: str):
  """Orders rows best first by `metric`; rows without a value (or NaN) come last."""
  value = row.get(f"final {metric}")
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return (1, 0.0)
  return (0, -value if metric in MAXIMIZED else value)


def bounds(metric: str) -> tuple[float, float] | None:
  """The range a metric lives in, where it has one: [0, 1] for an accuracy."""
  return (0.0, 1.0) if metric.endswith("accuracy") else None


def t_interval(values: list[float], limits: tuple[float, float] | None = None
               ) -> tuple[float | None, float | None, float | None]:
  """(mean, low, high) of a 95% t-interval for the mean of `values`; low and high are None below two values.

  Args:
    values: one value per seed.
    limits: the metric's range (bounds): the interval is clipped to it, as the mean cannot leave it (t-intervals
      of 3 accuracies near 1 reach past 1).
  """
  if not values:
    return None, None, None
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, None, None
  from scipy import stats  # pylint: disable=g-import-not-at-top  (a second to import: only where a point has n >= 2)

  # Identical values: exactly zero width (a sum of squares in floating point can leave a spread of 1e-17).
  spread = 0.0 if min(values) == max(values) else math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
  half = float(stats.t.ppf((1 + T_LEVEL) / 2, len(values) - 1)) * spread / math.sqrt(len(values))
  low, high = limits or (-math.inf, math.inf)
  return mean, max(mean - half, low), min(mean + half, high)


def median_steps_to_target(reached: list[int], censored: list[int]) -> tuple[float | str, str]:
  """The median steps to target of a point's replicates and how it was estimated (see the module docstring).

  Args:
    reached: the steps to target of the replicates that reached it.
    censored: the last steps of those that never did.

  Returns:
    (the median or NOT_REACHED, "median" | "Kaplan-Meier").
  """
  if not censored:
    ordered = sorted(reached)
    middle = len(ordered) // 2
    return (ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2), "median"
  from scipy import stats  # pylint: disable=g-import-not-at-top

  survival = stats.ecdf(stats.CensoredData(uncensored=reached, right=censored)).sf
  # The survival function is a product of fractions: 3/4 * 2/3 may land a rounding error above 0.5.
  below = [q for q, p in zip(survival.quantiles, survival.probabilities) if p <= 0.5 + 1e-12]
  return (int(below[0]) if below else NOT_REACHED), "Kaplan-Meier"  # an event time: a step the runs logged


def _key(value: Any) -> str:
  """A swept value as comparable text: the same for a value read from sweep.json and from a trial.json."""
  return json.dumps(value, sort_keys=True)


def grid_order(sweep: dict) -> list[dict[str, Any]]:
  """Every point of a grid sweep as {path: value}, entries varied in the order listed, the last one fastest.

  Empty for a random or TPE sweep and for a grid capped by num_trials (its points are drawn, not all planned).
  """
  entries = sweep.get("parameters", ())
  if sweep.get("sampler", "grid") != "grid" or sweep.get("num_trials") or not entries:
    return []
  choices = []
  for entry in entries:
    paths = [entry["path"]] if "path" in entry else entry["paths"]
    choices.append([dict(zip(paths, [value] if "path" in entry else value)) for value in entry["values"]])
  return [{path: value for part in combination for path, value in part.items()}
          for combination in itertools.product(*choices)]


def _order(value: Any) -> tuple:
  """Numbers by size before other values by their text (None, strings), never comparing the two kinds."""
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return (0, value, "")
  return (1, 0, str(value))


def points(rows: list[dict[str, Any]], sweep: dict, paths: list[str], metric: str) -> list[dict[str, Any]]:
  """One row per point of the sweep: its swept values, replicates counted and planned, and their statistics.

  Points come in the grid's order (a grid's unstarted points too, with n = 0), then any others by their values.

  Args:
    rows: the trials' rows (collect).
    sweep: the sweep's config (read_sweep; {} for a single run).
    paths: the swept paths.
    metric: the metric of the statistics.

  Returns:
    Rows with the columns of points.csv, plus `_members` (the replicates counted) and `_label` (the swept values
    as text).
  """
  by_point: dict[str, list[dict[str, Any]]] = {}
  for row in rows:
    by_point.setdefault(row["point"], []).append(row)
  found = [(members[0]["_overrides"], point, members) for point, members in by_point.items()]
  started = {_key(values) for values, _, _ in found}
  grid = grid_order(sweep)
  found += [(values, "", []) for values in grid if _key(values) not in started]
  grid_keys = {_key(values): index for index, values in enumerate(grid)}
  found.sort(key=lambda item: (grid_keys.get(_key(item[0]), len(grid)), [_order(item[0].get(p)) for p in paths]))
  return [_point_row(values, point, members, sweep.get("replicates", 1), metric) for values, point, members in found]


def point_label(values: dict[str, Any]) -> str:
  """A point's values as its figures label it: the last part of each path, e.g. 'num_heads=4, learning_rate=0.001'."""
  return ", ".join(f"{path.rsplit('.', 1)[-1]}={value}" for path, value in values.items())


def _point_row(values: dict[str, Any], point: str, members: list[dict[str, Any]], planned: int,
               metric: str) -> dict[str, Any]:
  """The statistics of one point's replicates (see the module docstring)."""
  counted = [r for r in members if r["status"] in COMPLETED and r.get(f"final {metric}") is not None]
  mean, low, high = t_interval([r[f"final {metric}"] for r in counted], bounds(metric))
  best = [r[f"best {metric}"] for r in counted if r.get(f"best {metric}") is not None]
  sizes = [r["parameters"] for r in (counted or members) if r.get("parameters")]
  others: dict[str, int] = {}
  for r in members:
    if r not in counted:
      others[r["status"]] = others.get(r["status"], 0) + 1
  row: dict[str, Any] = {"point": point, **values, "n": len(counted), "planned": planned,
                         f"final {metric} mean": mean, f"final {metric} low": low, f"final {metric} high": high,
                         f"best {metric} mean": sum(best) / len(best) if best else None,
                         "parameters": round(sum(sizes) / len(sizes)) if sizes else None,
                         "not counted": ", ".join(f"{n} {status}" for status, n in sorted(others.items())),
                         "_members": counted,
                         "_label": point_label(values) or point}
  target = next((r["target"] for r in counted if r["target"]), "")
  if target:
    reached = [r["steps to target"] for r in counted if r["reached target"]]
    censored = [r["_last_step"] for r in counted if not r["reached target"]]
    row["target"] = target
    row["reached"] = len(reached)
    row["median steps to target"], row["median by"] = median_steps_to_target(reached, censored)
  return row


def point_curve(members: list[dict[str, Any]], metric: str) -> list[tuple[int, float, float | None, float | None]]:
  """The mean eval curve of a point's replicates with its 95% t-band: [(step, mean, low, high)].

  A replicate that stopped at its target evaluates no further: its last value is carried forward (it had met
  the target; leaving it out would leave only the slower seeds in the mean, which would then fall). Every other
  replicate counts only where it evaluated, and a step enters the curve only where every replicate has a value.
  """
  curves = []
  for r in members:
    values = dict(r["_eval_curve"])
    curves.append((values, max(values) if r["reached target"] and values else None))
  steps = sorted(set().union(*(values for values, _ in curves))) if curves else []
  curve = []
  for step in steps:
    at = [values[step] if step in values else values[last] for values, last in curves
          if step in values or (last is not None and step > last)]
    if len(at) == len(curves):
      curve.append((step, *t_interval(at, bounds(metric))))
  return curve

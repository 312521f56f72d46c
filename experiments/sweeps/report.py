"""Tables and figures of a sweep (or of one run) from the rows of results.py; works while a sweep runs.

Writes into the workdir:
- results.csv, results.md: one row per trial, best first by the metric (point, replicate, seed, status, swept
  values, steps to target where the runs have one, final and best eval metrics, size, speed, wall time, error);
- points.csv, points.md: one row per point (its swept values; its seeds grouped), in the grid's order: n completed
  of the planned replicates, the mean final metric with its 95% t-interval, the mean best metric, and where the
  runs have a target how many reached it and the median steps to target (results.py says how each is estimated);
- the figures of experiments/sweeps/figures.py.
scipy is imported where an interval or a censored median is computed, matplotlib where a figure is drawn.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from experiments.sweeps import figures, results


def _text(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
  if isinstance(value, int) and not isinstance(value, bool):
    return f"{value:,}"
  return str(value)


def _write(workdir: str, name: str, columns: list[str], rows: list[dict[str, Any]], header: str,
           shown: list[str] | None = None) -> None:
  """Writes name.csv (the columns, raw values) and name.md (the header, then the `shown` columns as text)."""
  with open(os.path.join(workdir, f"{name}.csv"), "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for row in rows:
      writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
  shown = shown or columns
  lines = ["| " + " | ".join(shown) + " |", "|" + " --- |" * len(shown)]
  for row in rows:
    lines.append("| " + " | ".join(_text(row.get(c)).replace("|", "/") for c in shown) + " |")
  with open(os.path.join(workdir, f"{name}.md"), "w", encoding="utf-8") as f:
    f.write(header + "\n\n" + "\n".join(lines) + "\n")


def write_tables(rows: list[dict[str, Any]], paths: list[str], metric: str, workdir: str) -> list[str]:
  """Writes results.csv and results.md, best first by the metric; returns the column names."""
  columns = ["trial", "point", "replicate", "seed", "status", *paths, "step"]
  if any(row["target"] for row in rows):
    columns += ["target", "steps to target", "reached target"]
  for name in results.eval_columns(metric):
    columns += [f"final {name}", f"best {name}"]
  columns += ["parameters", "tokens/s", "wall s", "error"]
  rows = sorted(rows, key=lambda r: results.sort_key(r, metric))
  counts: dict[str, int] = {}
  for row in rows:
    counts[row["status"]] = counts.get(row["status"], 0) + 1
  tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
  _write(workdir, "results", columns, rows, f"{len(rows)} trials ({tally}), best first by final {metric}.")
  return columns


def point_caption(point_rows: list[dict[str, Any]], metric: str) -> str:
  """What points.md shows and how its statistics were computed, with the number of seeds."""
  counts = sorted({p["n"] for p in point_rows if p["n"]})
  clipped = ", clipped to [0, 1]" if results.bounds(metric) else ""
  lines = [f"{len(point_rows)} point{'' if len(point_rows) == 1 else 's'}, in the sweep's order. n: replicates "
           "completed of those planned (a run stopped at its target counts, with the metric at its stop)."]
  if counts == [1]:
    lines.append(f"final {metric}: each point's one seed (n = 1, no interval). best {metric} mean: its best.")
  else:
    seeds = f"{counts[0]} seeds" if len(counts) == 1 else "n seeds (column n)"
    lines.append(f"final {metric}: mean [low, high], a 95% t-interval over {seeds}: mean +- t(0.975, n - 1) s / "
                 f"sqrt(n){clipped}; n = 1, no interval. best {metric} mean: the mean of each seed's best.")
  target = next((p["target"] for p in point_rows if p.get("target")), "")
  if target:
    lines.append(f"Steps to {target}: reached counts the seeds that did. The median steps to target is the seeds' "
                 "median when all reached it (median by: median), else the Kaplan-Meier median with the others "
                 "censored at their last step (median by: Kaplan-Meier): the first step where the estimated "
                 "fraction of seeds not yet at the target is <= 0.5, \"not reached\" when it never falls that far.")
  return "\n".join(lines)


def write_point_tables(point_rows: list[dict[str, Any]], paths: list[str], metric: str, workdir: str) -> list[str]:
  """Writes points.csv and points.md (one row per point, in the sweep's order); returns the csv's columns."""
  final = f"final {metric}"
  statistics = ["n", "planned", f"{final} mean", f"{final} low", f"{final} high", f"best {metric} mean"]
  targets = ["target", "reached", "median steps to target", "median by"]
  has_target = any(p.get("target") for p in point_rows)
  columns = ["point", *paths, *statistics, *(targets if has_target else []), "parameters", "not counted"]
  for point in point_rows:
    if point["n"] == 1:
      point[final] = f"{_text(point[f'{final} mean'])} (n = 1, no interval)"
    elif point["n"]:
      point[final] = (f"{_text(point[f'{final} mean'])} [{_text(point[f'{final} low'])}, "
                      f"{_text(point[f'{final} high'])}]")
  shown = [*(paths or ["point"]), "n", "planned", final, f"best {metric} mean",
           *(targets if has_target else []), "parameters", "not counted"]
  _write(workdir, "points", columns, point_rows, point_caption(point_rows, metric), shown)
  return columns


def report(workdir: str, metric: str | None = None) -> dict[str, Any]:
  """Writes the tables and figures of a sweep's or a run's workdir.

  Args:
    workdir: a sweep's workdir (with trials/) or a single run's workdir.
    metric: the metric to rank and plot (default: the sweep's, or eval/loss).

  Returns:
    {"rows": the trials' rows, "points": the points' rows (both without curves and the private '_' keys),
     "files": the files written}.
  """
  rows, paths, metric = results.collect(workdir, metric)
  point_rows = results.points(rows, results.read_sweep(workdir), paths, metric)
  write_tables(rows, paths, metric, workdir)
  write_point_tables(point_rows, paths, metric, workdir)
  files = ["results.csv", "results.md", "points.csv", "points.md",
           *figures.write(rows, point_rows, paths, metric, workdir)]

  def public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}

  return {"rows": [public(r) for r in rows], "points": [public(p) for p in point_rows], "files": files}

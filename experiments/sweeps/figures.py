"""The figures of a sweep's report, from the trial rows and point rows of results.py (matplotlib, files only).

Every figure is titled, its axes labelled, its text at least 8 pt at the size written (FONTS), 6.4 x 4.2 inches
unless a list of trials needs the height:

- loss_curves.png: the training loss of every trial, a colour per point.
- <metric>_by_trial.png: the final metric of every trial by name (shows zipped parameters as they were set).
- <metric>_vs_<path>.png, for each swept path with more than one value among the points (`varied`): each
  point's mean final metric with its 95% t-interval as an error bar, its seeds as faint dots beside it; one
  labelled series per combination of the other swept values; a dashed chance line for the accuracy of a task that
  has one (associative recall: 1 / num_pairs). The y axis shows at least every interval and the chance line with a
  margin (all of [0, 1] for an accuracy), never zoomed into them.
- <metric>_vs_parameters.png, where the points differ in size: the same means against the parameter count, one
  labelled series per point.
- eval_curves.png: per point, the mean eval metric over its seeds against the step, shaded with its 95% t-band
  where it has two or more seeds (results.point_curve: a seed stopped at its target carries its last value
  forward), the target and the chance level as dashed lines; one axes for up to 3 points, a panel each for more.
- steps_to_target.png, where the runs have a target: one dot per seed at its steps to target, hollow at its last
  step for a seed that never reached it (censored), the point's median as a bar.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from typing import Any

from experiments.sweeps import results

FONTS = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
         "legend.fontsize": 8}
SIZE = (6.4, 4.2)
DPI = 120
PANELS_FROM = 4  # eval curves of this many points or more get a panel each
TARGET = re.compile(r"^\s*(\S+?)\s*(>=|<=|>|<)\s*(\S+)\s*$")  # train.stop_when, e.g. eval/accuracy>=0.99


def slug_label(trial: str) -> str:
  """A trial's id without its hash, for labels."""
  return re.sub(r"-[0-9a-f]{8}$", "", trial)


def file_part(name: str) -> str:
  """A metric or config path as part of a file name: eval/loss -> eval_loss."""
  return re.sub(r"[^A-Za-z0-9]+", "_", name)


def _save(fig, workdir: str, name: str) -> str:
  """Writes and closes a figure (a legend outside the axes included); returns its file name."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig.savefig(os.path.join(workdir, name), dpi=DPI, bbox_inches="tight")
  plt.close(fig)
  return name


def _legend(ax, entries: int) -> None:
  """A legend inside the axes for a few entries, beside them (right) for more, so it hides no data."""
  if entries > 5:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
  elif entries:
    ax.legend(loc="best")


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _y_limits(ax, metric: str, shown: list[float]) -> None:
  """[0, 1] for an accuracy; else every value shown with a 10% margin and at least 5% of their size in range."""
  if results.bounds(metric):
    ax.set_ylim(-0.02, 1.02)
    return
  low, high = min(shown), max(shown)
  span = max(high - low, 0.05 * max(abs(low), abs(high)), 1e-3)
  middle = (low + high) / 2
  ax.set_ylim(middle - 0.6 * span, middle + 0.6 * span)


def _chance(rows: list[dict[str, Any]], metric: str) -> float | None:
  """The chance accuracy of the sweep's task, for the accuracy only."""
  if metric != "eval/accuracy":
    return None
  return next((row["_chance"] for row in rows if row["_chance"]), None)


def _target_line(ax, target: str, metric: str) -> None:
  """The run's stop_when threshold as a dashed line, when it is on the plotted metric."""
  parsed = TARGET.match(target)
  if parsed and parsed.group(1) == metric:
    ax.axhline(float(parsed.group(3)), linestyle="--", color="black", linewidth=1, label=f"target {target}")


def _seeds_text(plotted: list[dict[str, Any]]) -> str:
  """The subtitle of a figure of means: how many seeds each has ("mean of 3 seeds", "mean of 1-3 seeds", ...)."""
  counts = sorted({p["n"] for p in plotted})
  if counts == [1]:
    return "one seed per point, no interval"
  n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
  return f"mean of {n} seeds, 95% t-interval; dots: single seeds"


def _loss_curves(plt, rows: list[dict[str, Any]], workdir: str) -> str:
  """Every trial's training loss, the replicates of a point in one colour under one legend entry."""
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  points = list(dict.fromkeys(row["point"] for row in rows))
  colors = plt.get_cmap("tab10" if len(points) <= 10 else "tab20")
  labelled = set()
  for row in rows:
    if row["_curve"]:
      steps, losses = zip(*row["_curve"])
      index = points.index(row["point"])
      seeds = sum(r["point"] == row["point"] for r in rows)
      label = f"{slug_label(row['point'])} ({seeds} seeds)" if seeds > 1 else slug_label(row["trial"])
      ax.plot(steps, losses, color=colors(index % colors.N), linewidth=1,
              label=None if row["point"] in labelled else label)
      labelled.add(row["point"])
  ax.set_xlabel("step")
  ax.set_ylabel("train/loss")
  ax.set_title(f"training loss of {len(rows)} trials ({len(points)} points)")
  _legend(ax, len(labelled) if len(labelled) <= 20 else 0)
  return _save(fig, workdir, "loss_curves.png")


def _by_trial(plt, rows: list[dict[str, Any]], metric: str, workdir: str) -> str | None:
  key = f"final {metric}"
  ranked = sorted((row for row in rows if row.get(key) is not None), key=lambda r: results.sort_key(r, metric))
  if not ranked:
    return None
  fig, ax = plt.subplots(figsize=(7.5, 1.3 + 0.3 * len(ranked)))
  ax.barh(range(len(ranked)), [row[key] for row in ranked])
  ax.set_yticks(range(len(ranked)), [row["trial"] for row in ranked])
  ax.invert_yaxis()
  ax.set_xlabel(key)
  ax.set_title(f"{key} of each trial")
  return _save(fig, workdir, f"{file_part(metric)}_by_trial.png")


def _means(ax, xs: list[float], seed_xs: list[float], plotted: list[dict[str, Any]], metric: str, color, label,
           line: bool) -> list[float]:
  """Each point's mean with its interval at xs, its seeds as faint dots at seed_xs; returns the values drawn."""
  means = [p[f"final {metric} mean"] for p in plotted]
  lows = [p[f"final {metric} low"] for p in plotted]
  highs = [p[f"final {metric} high"] for p in plotted]
  below = [m - low if low is not None else 0.0 for m, low in zip(means, lows)]
  above = [high - m if high is not None else 0.0 for m, high in zip(means, highs)]
  ax.errorbar(xs, means, yerr=[below, above], fmt="o-" if line else "o", color=color, capsize=3, linewidth=1,
              markersize=5, label=label)
  seeds = [(x, r[f"final {metric}"]) for x, p in zip(seed_xs, plotted) for r in p["_members"]]
  ax.scatter([x for x, _ in seeds], [y for _, y in seeds], s=14, color=color, alpha=0.5, linewidths=0)
  return [*means, *(v for v in lows + highs if v is not None), *(y for _, y in seeds)]


def _vs_path(plt, plotted: list[dict[str, Any]], path: str, paths: list[str], metric: str, chance: float | None,
             workdir: str) -> str:
  others = [p for p in paths if p != path]
  series: dict[str, list[dict[str, Any]]] = {}
  for point in plotted:
    series.setdefault(", ".join(f"{o.rsplit('.', 1)[-1]}={point[o]}" for o in others), []).append(point)
  values = [p[path] for p in plotted]
  numeric = all(_is_number(v) for v in values)
  log = numeric and min(values) > 0 and max(values) / min(values) > 8
  categories = list(dict.fromkeys(str(v) for v in values))  # in the points' (the grid's) order
  distinct = sorted(set(values)) if numeric else []
  gap = min((b - a for a, b in zip(distinct, distinct[1:])), default=1.0)
  at_value: dict[str, list[str]] = {}  # the series with a point at each value, which part there side by side
  for label, members in series.items():
    for point in members:
      at_value.setdefault(str(point[path]), []).append(label)

  def place(value, label: str, aside: float = 0.0) -> float:
    """x of a series' point: beside the other series' points at that value (a tenth of a step apart)."""
    beside = at_value[str(value)]
    shift = (beside.index(label) - (len(beside) - 1) / 2) * 0.14 + aside
    if not numeric:
      return categories.index(str(value)) + shift
    return value * 2 ** shift if log else value + shift * gap

  fig, ax = plt.subplots(figsize=SIZE)
  shown = []
  colors = plt.get_cmap("tab10" if len(series) <= 10 else "tab20")
  for index, (label, members) in enumerate(series.items()):
    if numeric:  # a line joins a series' points from left to right
      members = sorted(members, key=lambda p: p[path])
    xs = [place(p[path], label) for p in members]
    seed_xs = [place(p[path], label, aside=0.05) for p in members]
    shown += _means(ax, xs, seed_xs, members, metric, colors(index % colors.N), label or None,
                    numeric and len(members) > 1)
  if chance is not None:
    ax.axhline(chance, linestyle="--", color="gray", linewidth=1, label=f"chance {chance:.3g}")
    shown.append(chance)
  if log:
    ax.set_xscale("log", base=2)
  if numeric and len(distinct) <= 12 and max(abs(v) for v in distinct) < 1e5:  # else the default ticks
    ax.set_xticks(distinct, [f"{v:g}" for v in distinct])
    ax.minorticks_off()
  if not numeric:
    tilt = len(categories) > 4
    ax.set_xticks(range(len(categories)), categories, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_xlim(-0.5, len(categories) - 0.5)
  _y_limits(ax, metric, shown)
  ax.set_xlabel(path)
  ax.set_ylabel(f"final {metric}")
  ax.set_title(f"final {metric} against {path}\n{_seeds_text(plotted)}")
  _legend(ax, (len(series) if others else 0) + (chance is not None))
  return _save(fig, workdir, f"{file_part(metric)}_vs_{file_part(path)}.png")


def _eval_curves(plt, plotted: list[dict[str, Any]], metric: str, chance: float | None, workdir: str) -> str | None:
  """One axes for up to PANELS_FROM - 1 points; a panel each for more, whose bands would hide each other."""
  curves = [(point, results.point_curve(point["_members"], metric)) for point in plotted]
  curves = [(point, curve) for point, curve in curves if curve]
  if not curves:
    return None
  target = next((p["target"] for p, _ in curves if p.get("target")), "")
  panels = len(curves) >= PANELS_FROM
  if panels:
    columns = min(math.ceil(math.sqrt(len(curves))), 4)
    rows = math.ceil(len(curves) / columns)
    fig, grid = plt.subplots(rows, columns, sharex=True, sharey=True, squeeze=False, layout="constrained",
                             figsize=(2.3 * columns, 1.9 * rows + 1.0))
    axes = list(grid.flat)
    for unused in axes[len(curves):]:
      unused.set_visible(False)
  else:
    fig, ax = plt.subplots(figsize=SIZE)
    axes = [ax] * len(curves)
  colors = plt.get_cmap("tab10")
  shown = []
  for index, ((point, curve), ax) in enumerate(zip(curves, axes)):
    steps, means, lows, highs = zip(*curve)
    color = colors(0 if panels else index)
    label = f"{point['_label']} (n={point['n']})"
    ax.plot(steps, means, color=color, linewidth=1.2, label=label)
    if point["n"] > 1:
      ax.fill_between(steps, lows, highs, color=color, alpha=0.2, linewidth=0)
      shown += [*lows, *highs]
    shown += means
    if panels:
      ax.set_title(textwrap.fill(label, 30), fontsize=8)
  for ax in dict.fromkeys(axes):
    if target:
      _target_line(ax, target, metric)
    if chance is not None:
      ax.axhline(chance, linestyle="--", color="gray", linewidth=1, label=f"chance {chance:.3g}")
  _y_limits(axes[0], metric, shown + ([chance] if chance is not None else []))
  title = f"{metric} during training: mean over seeds, 95% t-band"
  if target:
    title += "\na seed stopped at the target keeps its last value"
  if panels:
    lines = [f"target {target} (black)" if target else "", f"chance {chance:.3g} (gray)" if chance else ""]
    fig.suptitle(title + ("\ndashed: " + ", ".join(line for line in lines if line) if any(lines) else ""))
    fig.supxlabel("step")
    fig.supylabel(metric)
  else:
    axes[0].set_xlabel("step")
    axes[0].set_ylabel(metric)
    axes[0].set_title(title)
    _legend(axes[0], len(curves) + bool(target) + (chance is not None))
  return _save(fig, workdir, "eval_curves.png")


def _steps_to_target(plt, plotted: list[dict[str, Any]], workdir: str) -> str | None:
  targeted = [point for point in plotted if point.get("target")]
  if not targeted:
    return None
  fig, ax = plt.subplots(figsize=SIZE)
  labels = {"reached": True, "not reached (censored)": True, "median": True}

  def once(label: str) -> str | None:
    """The legend label the first time, after that none."""
    return label if labels.pop(label, False) else None

  highest = 0
  upright = len(targeted) <= 6  # "median not reached" upright while such labels fit side by side, else turned
  for index, point in enumerate(targeted):
    members = point["_members"]
    for rank, row in enumerate(members):
      x = index + (rank - (len(members) - 1) / 2) * min(0.08, 0.5 / len(members))
      if row["reached target"]:
        ax.scatter([x], [row["steps to target"]], s=22, color="tab:blue", label=once("reached"))
      else:
        ax.scatter([x], [row["_last_step"]], s=22, facecolors="none", edgecolors="tab:red", linewidths=1.2,
                   label=once("not reached (censored)"))
      highest = max(highest, row["_last_step"])
    median = point["median steps to target"]
    if median == results.NOT_REACHED:
      ax.annotate("median\nnot reached" if upright else "median not reached",
                  (index, max(r["_last_step"] for r in members)), xytext=(0, 8), textcoords="offset points",
                  ha="center", va="bottom", fontsize=8, rotation=0 if upright else 90)
    else:
      ax.scatter([index], [median], marker="_", s=400, linewidths=2, color="black", label=once("median"))
  ax.set_ylim(0, highest * (1.15 if upright else 1.6) or 1)  # room above the dots for the labels
  ax.set_xlim(-0.6, len(targeted) - 0.4)
  ax.set_xticks(range(len(targeted)), [p["_label"] for p in targeted], rotation=30 if len(targeted) > 3 else 0,
                ha="right" if len(targeted) > 3 else "center")
  ax.set_ylabel("steps to target (censored: at the run's last step)")
  ax.set_title(f"steps to {targeted[0]['target']}, one dot per seed\n"
               "median: of the seeds, or Kaplan-Meier where some never reached it")
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside: the dots reach every height
  return _save(fig, workdir, "steps_to_target.png")


def varied(points: list[dict[str, Any]], paths: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
  """The paths whose value differs between `points`, and the points labelled by those alone.

  A path with one value over the points plotted (a zipped setting held fixed, a grid axis of one value) gets no
  figure of its own, where every point would sit at one x, and no place in the labels, where it would repeat in
  every one. A point whose paths all have one value keeps its id as its label.
  """
  kept = [path for path in paths if len({str(point.get(path)) for point in points}) > 1]
  labelled = [{**point, "_label": results.point_label({p: point[p] for p in kept}) or point["point"]}
              for point in points]
  return kept, labelled


def write(rows: list[dict[str, Any]], point_rows: list[dict[str, Any]], paths: list[str], metric: str,
          workdir: str) -> list[str]:
  """Writes the figures of the module docstring that the rows have data for; returns their file names."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")  # files only, no display
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  paths, plotted = varied([point for point in point_rows if point["n"]], paths)
  chance = _chance(rows, metric)
  with matplotlib.rc_context(FONTS):
    written = [_loss_curves(plt, rows, workdir), _by_trial(plt, rows, metric, workdir)]
    if plotted:
      written += [_vs_path(plt, plotted, path, paths, metric, chance, workdir) for path in paths]
      sized = [point for point in plotted if point["parameters"]]
      if len({point["parameters"] for point in sized}) > 1:  # one series per point: labelled with all its values
        written.append(_vs_path(plt, sized, "parameters", paths, metric, chance, workdir))
      written += [_eval_curves(plt, plotted, metric, chance, workdir), _steps_to_target(plt, plotted, workdir)]
  return [name for name in written if name]

"""What a training run tells the person at the terminal: one aligned line per evaluation and a short summary.

The numbers a script reads stay in the workdir (metrics.jsonl, summary.json); these lines are for reading. Light on
purpose (no JAX): the sweep's processes may import it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from experiments.files import METRICS_FILE, SUMMARY_FILE


def shown_metrics(metrics: dict[str, float]) -> list[tuple[str, str]]:
  """(name, value text) of the eval metrics worth a glance: the loss, and bits per char or byte on text (they
  compare tokenizers), else the accuracy of a task's answers."""
  shown = [("loss", "eval/loss")]
  text = [(name, f"eval/{name}") for name in ("bits_per_char", "bits_per_byte") if f"eval/{name}" in metrics]
  shown += text or [("accuracy", "eval/accuracy")]
  return [(name, f"{metrics[key]:.4f}") for name, key in shown if key in metrics]


def duration(seconds: float) -> str:
  """`h:mm:ss` of a wall time, to the second."""
  whole = int(round(seconds))
  return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def eval_line(step: int, total_steps: int, metrics: dict[str, float], tokens_per_sec: float | None,
              elapsed: float, member: int | None = None) -> str:
  """One evaluation in a line whose columns line up from one evaluation to the next (the step padded to the
  width of the last step), e.g. `step   250/2000  loss 1.3862  accuracy 0.2500  41,820 tok/s  0:00:12`."""
  width = len(str(total_steps))
  parts = [f"step {step:>{width}}/{total_steps}"]
  if member is not None:
    parts.append(f"member {member}")
  parts += [f"{name} {value}" for name, value in shown_metrics(metrics)]
  parts.append(f"{tokens_per_sec:>9,.0f} tok/s" if tokens_per_sec is not None else f"{'-':>9} tok/s")
  parts.append(duration(elapsed))
  return "  ".join(parts)


def say(line: str, bar: Any = None) -> None:
  """Prints a line on stdout; through the progress bar when one is shown, so the two never share a line."""
  if bar is not None:
    bar.write(line, file=sys.stdout)
  else:
    print(line, flush=True)


def _run_lines(summary: dict[str, Any], title: str = "", indent: str = "") -> list[str]:
  """The lines of one run's (or member's) summary: how it ended, its final and best evaluations."""
  ended = f"{title}{summary['status']} at step {summary['step']}"
  if summary.get("stop_when"):
    reached = summary.get("steps_to_target")
    ended += (f"; target {summary['stop_when']} " +
              (f"met at step {reached}" if reached is not None else "not met"))
  if "diverged_at" in summary:
    ended += f"; diverged at step {summary['diverged_at']}"
  lines = [ended]
  final = "  ".join(f"{name} {value}" for name, value in shown_metrics(summary.get("final", {})))
  if final:
    lines.append(f"{indent}final  {final}")
  best = summary.get("best") or {}
  shown = "  ".join(f"{name} {value}" for name, value in shown_metrics(best))
  if shown and "step" in best:
    lines.append(f"{indent}best   {shown}  (step {best['step']})")
  return lines


def summary_lines(summary: dict[str, Any], workdir: str) -> list[str]:
  """A finished run's (or population's) summary for a person: how it ended, final and best metrics, its size, the
  wall time and where its files are; summary.json keeps every number."""
  members = summary.get("members")
  if members:
    lines = [f"population of {len(members)}: {summary['status']} at step {summary['step']}"]
    for i, member in enumerate(members):
      lines += _run_lines(member, title=f"member {member.get('member', i)}: ", indent="  ")
    runs = summary.get("member_dirs") or [workdir]
    counted = members[0]
  else:
    lines = _run_lines(summary)
    runs, counted = [workdir], summary
  if "parameters" in counted:
    lines.append(f"parameters {counted['parameters']:,}" + (" each" if members else ""))
  lines.append(f"wall time {duration(summary['wall_time_sec'])}")
  if members:
    lines.append(f"files in {workdir}: {SUMMARY_FILE} (every number), checkpoints/; each member's {SUMMARY_FILE}, "
                 f"{METRICS_FILE} and tensorboard/ in {', '.join(runs)}")
  else:
    lines.append(f"files in {workdir}: {SUMMARY_FILE} (every number), {METRICS_FILE}, checkpoints/, tensorboard/")
  lines.append(f"curves: tensorboard --logdir {os.path.commonpath(runs) if members else workdir}")
  return lines

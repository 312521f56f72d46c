"""The run's files, without JAX: atomic JSON, metrics.jsonl read back, and the advisory locks.

Light on purpose: the sweep and the report import it before (or without) JAX.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from typing import IO, Any

CONFIG_FILE = "config.json"  # the run's resolved config, written before it trains
SUMMARY_FILE = "summary.json"  # the run's result, written once it ends
METRICS_FILE = "metrics.jsonl"  # JSON objects appended by the run as it logs; read it with read_metrics
TRIAL_FILE = "trial.json"  # written by the sweep in each trial's workdir: status, parameters, error
CLAIM_FILE = ".claim"  # locked by the sweep process that trains the trial, so the report can tell it lives


def write_json(path: str, value: Any) -> None:
  """Writes JSON atomically: a reader never sees half a file, and a crash never truncates the old one."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def read_json(path: str) -> dict | None:
  """The JSON object in `path`, or None while it does not exist or is not whole."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """A run's metrics.jsonl as one row per step, in step order, as the step's last attempt logged it.

  A step logs a few rows (train, eval, probes; their keys differ), merged here into one. A resumed run logs
  again the steps after its checkpoint that the stopped one had logged: a row whose step is below the previous
  row's, or that repeats a key of its step, starts a new attempt, and every row the earlier ones wrote from that
  step on is dropped. What a kill cut short mid-line is skipped. Reports, tests and benchmarks read the
  file through this function.

  Args:
    workdir: the run's workdir (or a sweep trial's).

  Returns:
    {"step": step, metric: value, ...} for each step logged, in step order (empty if nothing was logged).
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  by_step: dict[int, dict[str, float]] = {}
  last_step = None
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      row = _metrics_row(line)
      if row is None:
        continue
      step = row["step"]
      rewritten = step in by_step and not by_step[step].keys().isdisjoint(k for k in row if k != "step")
      if rewritten or (last_step is not None and step < last_step):
        by_step = {s: r for s, r in by_step.items() if s < step}
      by_step.setdefault(step, {}).update(row)
      last_step = step
  return list(by_step.values())  # in step order: a step below the last one logged drops every step after it


def last_write_time(workdir: str) -> float:
  """When a run last wrote into workdir: the latest modification time of its files and its checkpoints/ (0 if none).

  The claim is left out: whoever checks a trial's lock creates it.

  metrics.jsonl changes at every log and checkpoints/ at every save, so for a run whose process died this is
  about when it stopped (a lower bound: it ran on until its next log or save).
  """
  latest = 0.0
  for directory in (workdir, os.path.join(workdir, "checkpoints")):
    try:
      names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
      continue
    for name in names:
      if name == CLAIM_FILE:
        continue
      with contextlib.suppress(FileNotFoundError):  # a checkpoint being renamed or removed by its writer
        latest = max(latest, os.stat(os.path.join(directory, name)).st_mtime)
  return latest


def _metrics_row(line: str) -> dict[str, float] | None:
  """One line of metrics.jsonl; for a line a kill cut short, the next attempt's row appended to it, or None."""
  try:
    return json.loads(line)
  except json.JSONDecodeError:
    # Every row starts with its step (MetricWriter.write): the last such start is the appended row, if any.
    start = line.rfind('{"step": ', 1)
    if start < 0:
      return None
    try:
      return json.loads(line[start:])
    except json.JSONDecodeError:
      return None


@contextlib.contextmanager
def exclusive_lock(path: str, *, wait: bool) -> Iterator[IO[str] | None]:
  """Holds an exclusive flock on `path` (created if missing) and yields its open file.

  With wait=False, yields None at once when another live process holds it. The OS releases a lock whose
  process died, which is what makes a free lock mean "nobody is working here".
  """
  with open(path, "a+", encoding="utf-8") as handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      yield None
      return
    try:
      yield handle
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def is_locked(path: str) -> bool:
  """True while a live process holds the lock on `path` (an absent file is not locked, and stays absent)."""
  if not os.path.exists(path):
    return False
  with exclusive_lock(path, wait=False) as handle:
    return handle is None

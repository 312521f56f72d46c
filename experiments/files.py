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
METRICS_FILE = "metrics.jsonl"  # one JSON object per logged step, appended by the run
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
  """Reads a run's metrics.jsonl back (for reports and tests)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue  # a line torn by a kill in the middle of its write (MetricWriter starts a new line after it)
  return rows


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

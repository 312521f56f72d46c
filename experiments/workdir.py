"""A run's directory: the lock that keeps one live run in it, the check before resuming it, where data live.

Light on purpose (no JAX): the caller passes its process index.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

from ml_collections import ConfigDict

from experiments.files import CONFIG_FILE, exclusive_lock


# The keys a 0 in the config means "from the data" for (validation.resolve fills them in before they are saved).
FROM_THE_DATA = {"model": ("vocab_size", "max_len")}
# The sections that say what a run is: a change to any of them cannot resume its checkpoints.
IDENTITY = ("model", "data", "population")
# A run saved before a section existed ran with that section's defaults: a single run has no population.
_SAVED_BEFORE = {"population": {"size": 1, "member_values": {}}}


_LOCK_PREFIX = ".lock.process_"


class WorkdirLocked(RuntimeError):
  """Another live process trains in this workdir."""


def data_dir(config: ConfigDict) -> str:
  """Where the run's data are prepared: data.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return config.data.data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


@contextlib.contextmanager
def workdir_lock(workdir: str, process_index: int) -> Iterator[None]:
  """Holds an exclusive lock on workdir for the life of the run; the OS releases it if the process dies.

  Args:
    workdir: the run's directory (it exists).
    process_index: this process of the job (`jax.process_index()`): each process holds a lock of its own.

  Raises:
    WorkdirLocked: another live process holds the lock.
  """
  path = os.path.join(workdir, f"{_LOCK_PREFIX}{process_index}")
  with exclusive_lock(path, wait=False) as handle:
    if handle is None:
      with open(path, encoding="utf-8") as f:
        owner = f.read().strip() or "another process"
      raise WorkdirLocked(f"workdir {workdir} is in use by a live run ({owner}); wait for it or use another "
                          f"--workdir")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    yield


@contextlib.contextmanager
def made_for_the_run(workdir: str) -> Iterator[None]:
  """Makes workdir if it is missing; a run that fails before writing anything but its locks leaves no trace.

  The workdir is made before the data are prepared, so that one that cannot be written fails at once; a
  mistake only the data reveal (an unknown split, a vocabulary too small) must then not leave an empty run
  behind, which a later resume would take for a real one.
  """
  made = not os.path.isdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  try:
    yield
  except BaseException:
    if made and all(name.startswith(_LOCK_PREFIX) for name in os.listdir(workdir)):
      for name in os.listdir(workdir):
        os.remove(os.path.join(workdir, name))
      os.rmdir(workdir)
    raise


def resume_conflict(workdir: str, config: ConfigDict) -> str | None:
  """Why a workdir whose saved model, data or population differ from this config's cannot resume; None when it can.

  A population's size and member_values decide the shape of its stacked checkpoint and what each member is, so
  a change to them is refused like one to the model, before anything is read or rewritten.

  Args:
    workdir: the run's directory.
    config: the config to resume with, as given or resolved: a 0 of FROM_THE_DATA matches the saved value.

  Returns:
    One line naming the first key that differs (the caller raises it as a ConfigError), or None when the
    workdir has no saved config or its model, data and population sections match.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    # Only a hand edit or a disk fault breaks it (the run writes it atomically): which run this is is unknown.
    return (f"{path} is not valid JSON ({error}): restore it from a copy, or use a new --workdir; the "
            f"checkpoints beside it are untouched")
  if not isinstance(saved, dict):
    return f"{path} holds no config object: restore it from a copy, or use a new --workdir"
  for section in IDENTITY:
    # Through JSON, as the saved side went: member_values given as tuples compare with the lists saved.
    old = {**_SAVED_BEFORE.get(section, {}), **saved.get(section, {})}
    new = json.loads(json.dumps(config[section].to_dict())) if section in config else _SAVED_BEFORE.get(section, {})
    # Where the data live is not what they are: a moved data_dir or manual_dir resumes. A key newer than the
    # saved run, left empty, changes nothing the run did.
    changed = sorted(k for k in set(old) | set(new)
                     if old.get(k) != new.get(k) and k not in ("data_dir", "manual_dir")
                     and not (new.get(k) == 0 and k in FROM_THE_DATA.get(section, ()))
                     and not (k not in old and new.get(k) in ("", None)))
    if changed:
      key = changed[0]
      return (f"{section}.{key}={new.get(key)!r} differs from {old.get(key)!r} saved in {path}: "
              f"use a new --workdir, or the saved value to resume")
  return None


def resume_changes(workdir: str, config: ConfigDict) -> list[str]:
  """What a resume changes in the optimizer and train sections saved in workdir, one `key=new (was old)` each.

  Allowed, since continuing a stopped run with a lower learning rate or more steps is what they are for; the
  caller logs them, because config.json then records only the new values.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  changes = []
  for section in ("optimizer", "train"):
    old, new = saved.get(section, {}), config[section].to_dict()
    changes += [f"{section}.{k}={new.get(k)!r} (was {old.get(k)!r})" for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)]
  return changes

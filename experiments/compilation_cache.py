"""The persistent XLA compilation cache every command turns on: a step compiled once is loaded by later runs.

On a CPU a small model's train step compiles for longer than many of its steps run, and every run of the
same shapes (a rerun, a resumed run, a sweep's replicates and points of one architecture, evaluate and sample
after train) compiles the same programs again. JAX keeps compiled programs on disk once a directory is set;
the commands set it before their first compile, in this order:

  1. `JAX_COMPILATION_CACHE_DIR` in the environment: that directory, or no cache at all when it is empty
     (`JAX_COMPILATION_CACHE_DIR= python -m experiments.train ...`).
  2. Otherwise `$XDG_CACHE_HOME/attention-measured/xla` (`~/.cache/...` without XDG_CACHE_HOME), capped at
     MAX_BYTES: JAX evicts the least recently used programs beyond it.

The directory goes into the environment too, so a sweep's worker processes share it. JAX's key covers the
program, its shapes and shardings, the backend and the JAX version: a changed model compiles anew, never
loads a stale program. Only programs that took at least a second to compile are written (JAX's default), so
the cache holds train and eval steps, not the many small dispatches around them.

Light on purpose (os only): experiments/cli.py calls `configure` before a command's main, and the sweep and
the report import the CLI without JAX.
"""

from __future__ import annotations

import os
import sys

DIR_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
SIZE_VARIABLE = "JAX_COMPILATION_CACHE_MAX_SIZE"
MAX_BYTES = 4 * 2**30  # a train and an eval step of a small model take 1-10 MB; thousands of them fit


def default_dir() -> str:
  """Where the cache lives when the environment names none: the user's cache directory."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "attention-measured", "xla")


def configure() -> str | None:
  """Turns the cache on for this process and its children, unless the environment turned it off.

  Call before the first compilation; with JAX already imported its config is updated too.

  Returns:
    The cache directory, or None when `JAX_COMPILATION_CACHE_DIR` is set and empty.
  """
  directory = os.environ.get(DIR_VARIABLE)
  if directory is None:
    directory = default_dir()
    os.environ[DIR_VARIABLE] = directory
    os.environ.setdefault(SIZE_VARIABLE, str(MAX_BYTES))
  if "jax" in sys.modules:  # JAX read the environment when it was imported
    import jax  # pylint: disable=g-import-not-at-top

    jax.config.update("jax_compilation_cache_dir", directory or None)
    if directory and os.environ.get(SIZE_VARIABLE):
      jax.config.update("jax_compilation_cache_max_size", int(os.environ[SIZE_VARIABLE]))
  return directory or None

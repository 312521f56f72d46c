"""A run's checkpoint read back whole, for tests that compare two runs bitwise."""

from __future__ import annotations

import os
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp

from experiments.checkpoint import CHECKPOINTS


def saved_leaves(workdir: str, step: int) -> dict[str, np.ndarray]:
  """Every leaf of the `state` item saved at `step` (a run's train state, or a population's stacked one)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # no target shardings given: orbax reads the saved ones, and says so
    tree = ocp.PyTreeCheckpointer().restore(os.path.abspath(os.path.join(workdir, CHECKPOINTS, str(step), "state")))
  return {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def saved_state(workdir: str, step: int) -> tuple[dict[str, np.ndarray], str]:
  """Every leaf of the train state saved at `step` (step, params, optimizer state, RNG), and the data position.

  Args:
    workdir: the run's directory.
    step: the checkpoint's step.

  Returns:
    ({leaf path: array}, the text of the data iterator's saved state).
  """
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINTS, str(step)))
  leaves = saved_leaves(workdir, step)
  data_dir = os.path.join(directory, "data")
  [name] = [n for n in os.listdir(data_dir) if n.endswith(".json")]
  with open(os.path.join(data_dir, name), encoding="utf-8") as f:
    return leaves, f.read()


def assert_same_state(workdir_a: str, workdir_b: str, step: int) -> None:
  """The two runs saved bitwise the same train state and data position at `step`."""
  (a, data_a), (b, data_b) = saved_state(workdir_a, step), saved_state(workdir_b, step)
  assert sorted(a) == sorted(b)
  assert any("opt_state" in name and "mu" in name for name in a) and any("params" in name for name in a)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  assert data_a == data_b

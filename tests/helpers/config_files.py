"""The config files of configs/ and configs/sweeps/, as the tests that load every one enumerate them.

A config file defines `get_config()`; one with variants (selected as `configs/<file>.py:<variant>`) lists them in
a module-level tuple `VARIANTS`. Files without `get_config` (__init__.py, configs/sweeps/common.py) are helpers.
"""

from __future__ import annotations

import importlib
import os

from ml_collections import ConfigDict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def names(package: str = "configs") -> list[str]:
  """The module names of the package's config files, sorted.

  Args:
    package: "configs" or "configs.sweeps".
  """
  found = []
  for file in sorted(os.listdir(os.path.join(REPO, *package.split(".")))):
    name, extension = os.path.splitext(file)
    if extension == ".py" and hasattr(importlib.import_module(f"{package}.{name}"), "get_config"):
      found.append(name)
  return found


def variants(name: str, package: str = "configs") -> tuple[str | None, ...]:
  """The file's VARIANTS, or (None,) for a file without them."""
  return getattr(importlib.import_module(f"{package}.{name}"), "VARIANTS", (None,))


def load(name: str, variant: str | None, package: str = "configs") -> ConfigDict:
  """What `--config=configs/<name>.py[:<variant>]` gives (ml_collections calls get_config(arg) when given)."""
  module = importlib.import_module(f"{package}.{name}")
  return module.get_config() if variant is None else module.get_config(variant)

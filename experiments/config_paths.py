"""A nested config (or a section of one) as {dotted path: value}, the names sweeps, populations and TensorBoard use.

Light on purpose (ml_collections only): the sweep command's bookkeeping, the population section's checks and the
metric writer all read configs this way.
"""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict


def flatten(section: ConfigDict | dict | None, prefix: str = "") -> dict[str, Any]:
  """{"train": {"steps": 3}} -> {"train.steps": 3}: leaves in the section's order (a ConfigDict's is sorted, a
  dict's as written); None gives {}."""
  flat = {}
  for key, value in (section.items() if section is not None else ()):
    if isinstance(value, (ConfigDict, dict)):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat

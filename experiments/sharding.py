"""The device mesh and how parameters and batches are laid out on it.

Sharding is data: modules name their parameter axes (embed, heads, mlp, ...), the config's rules map
those names onto the mesh axes (data, fsdp, tensor). Changing the model never touches this file.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config: ConfigDict, device_count: int) -> tuple[int, ...]:
  """Resolves the axis sizes of the `mesh` section (one -1 fills the remaining devices).

  Raises:
    ValueError: sizes that do not multiply to the device count, or more than one -1.
  """
  sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
  fill = [axis for axis, size in zip(MESH_AXES, sizes) if size == -1]
  if len(fill) > 1:
    raise ValueError(f"mesh.{fill[1]}=-1: only one mesh axis may be -1 (fill the remaining devices)")
  bad = [axis for axis, size in zip(MESH_AXES, sizes) if size == 0 or size < -1]
  if bad:
    raise ValueError(f"mesh.{bad[0]}={mesh_config[bad[0]]} is invalid: expected a positive size or -1")
  known = math.prod(size for size in sizes if size != -1)
  if fill:
    if device_count % known:
      raise ValueError(f"mesh.{fill[0]}=-1 cannot fill {device_count} devices: the other axes multiply to {known}")
    sizes[MESH_AXES.index(fill[0])] = device_count // known
  if math.prod(sizes) != device_count:
    raise ValueError(f"mesh data*fsdp*tensor = {math.prod(sizes)} but there are {device_count} devices; "
                     f"set one axis to -1")
  return tuple(sizes)


def make_mesh(mesh_config: ConfigDict, devices=None) -> Mesh:
  """The mesh over all devices of all processes, axes (data, fsdp, tensor)."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def parse_rules(rules: str) -> tuple[tuple[str, Any], ...]:
  """Parses "name=axis+axis,name=,..." into flax logical axis rules.

  Raises:
    ValueError: a malformed rule or an unknown mesh axis.
  """
  parsed = []
  for rule in filter(None, (r.strip() for r in rules.split(","))):
    name, sep, axes = rule.partition("=")
    if not sep or not name.strip():
      raise ValueError(f"mesh.rules entry {rule!r} is malformed: expected logical_name=mesh_axis[+mesh_axis]")
    mesh_axes = tuple(a.strip() for a in axes.split("+") if a.strip())
    unknown = [a for a in mesh_axes if a not in MESH_AXES]
    if unknown:
      raise ValueError(f"mesh.rules entry {rule!r} names unknown mesh axis {unknown[0]!r}; "
                       f"mesh axes are {', '.join(MESH_AXES)}")
    target = None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes
    parsed.append((name.strip(), target))
  return tuple(parsed)


def param_shardings(boxed_params: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for parameters that carry logical axis names (abstract or concrete)."""
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_params), mesh, rules)


def optimizer_shardings(tx: optax.GradientTransformation, abstract_opt_state: Any, params_shardings: Any,
                        mesh: Mesh) -> Any:
  """Optimizer moments are laid out like their parameters; counters and scalars are replicated."""
  replicated = NamedSharding(mesh, PartitionSpec())
  shardings = optax.tree_map_params(tx, lambda _, sharding: sharding, abstract_opt_state, params_shardings,
                                    transform_non_params=lambda _: replicated)
  return shardings


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches split their leading axis over the data-parallel axes."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
  """Several steps' batches stacked on a leading axis: that axis whole, the batch axis split."""
  return NamedSharding(mesh, PartitionSpec(None, BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's rows into one global array per feature, sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, value) for name, value in local_batch.items()}


def global_batches(local_batches: list[dict[str, np.ndarray]], mesh: Mesh) -> dict[str, jax.Array]:
  """Several steps' local batches as global arrays [steps, batch, ...] (see stacked_batch_sharding)."""
  sharding = stacked_batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, np.stack([b[name] for b in local_batches]))
          for name in local_batches[0]}


POPULATION = "population"  # the logical name of a population's member axis (experiments/population.py)


def member_axes(rules) -> tuple[str, ...]:
  """The mesh axes the rules map the member axis to (none: every device holds every member)."""
  target = dict(rules).get(POPULATION)
  return () if target is None else (target,) if isinstance(target, str) else tuple(target)


def with_members(sharding: jax.sharding.Sharding, axes: tuple[str, ...]) -> jax.sharding.Sharding:
  """The sharding of an array stacked over a population's members: the member axis first, over `axes`."""
  if not isinstance(sharding, NamedSharding):
    return sharding  # one device: nothing to split
  return NamedSharding(sharding.mesh, PartitionSpec(axes or None, *sharding.spec))


def population_batch_sharding(mesh: Mesh, axes: tuple[str, ...]) -> NamedSharding:
  """Members' stacked batches [members, steps, batch, ...]: members over `axes`, each batch over the data-parallel
  axes the members do not use."""
  return NamedSharding(mesh, PartitionSpec(axes or None, None, tuple(a for a in BATCH_AXES if a not in axes)))


def shared_batch_sharding(mesh: Mesh, axes: tuple[str, ...]) -> NamedSharding:
  """A batch every member reads (evaluation): over the data-parallel axes the members do not use."""
  return NamedSharding(mesh, PartitionSpec(tuple(a for a in BATCH_AXES if a not in axes)))

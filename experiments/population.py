"""A population: S models trained as one compiled step, each a run of its own downstream (config, metrics, summary).

The `population` config section gives the size S and, per member, the values of the paths that may differ inside
one compiled step (VECTORISABLE): they change numbers, never shapes or the program. Member i has the seed
train.seed + i unless train.seed is listed. Everything else a population shares; a path that changes shapes or the
program (heads, widths, masks, steps...) needs separate trials and is refused in one line naming it.

Light on purpose (no JAX): validation, the runner and the commands that read a member's directory use it. The
loop that trains a population is experiments/population_loop.py.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ml_collections import ConfigDict

from experiments.config_paths import flatten

# Paths a member may set, with the type of its values: each enters the step as a traced number (the seed only
# picks the member's initialisation, dropout and data order).
VECTORISABLE = {"train.seed": int, "optimizer.learning_rate": float, "optimizer.weight_decay": float,
                "optimizer.warmup_steps": int}
MEMBERS_DIR = "members"  # W/members/<i>/: a member's directory, unless the caller gives its own
MEMBER_FILE = "member.json"  # in a member's directory: the population's workdir and the member's index
POPULATION_FILE = "population.json"  # in the population's workdir: where each member's directory is


def size_of(config: ConfigDict) -> int:
  """S, the members of the run (1: a single run, also for configs saved before populations existed)."""
  return int(config.population.size) if "population" in config else 1


def listed_values(config: ConfigDict) -> dict[str, list[Any]]:
  """population.member_values flattened to {dotted path: the members' values}, in the order given."""
  return flatten(config.population.member_values.to_dict() if "population" in config else {})


def errors(config: ConfigDict) -> list[str]:
  """Problems of the population section, one line each (none for a config without one)."""
  if "population" not in config:
    return []
  size = config.population.size
  if not isinstance(size, int) or isinstance(size, bool) or size < 1:
    return [f"population.size={size!r} must be an integer >= 1 (1 = a single run)"]
  problems = []
  for path, values in listed_values(config).items():
    section, _, key = path.partition(".")
    if path not in VECTORISABLE:
      known = section in config and "." not in key and key in config[section]
      why = "cannot vary inside one compiled step, so it needs separate trials (a sweep)" if known else \
          "is not a config key"
      problems.append(f"population.member_values.{path}: {path} {why}; a population varies only "
                      f"{', '.join(VECTORISABLE)}")
      continue
    if not isinstance(values, (list, tuple)) or len(values) != size:
      count = f"{len(values)} values" if isinstance(values, (list, tuple)) else f"{values!r}"
      problems.append(f"population.member_values.{path} has {count} but population.size={size}: give a list of "
                      f"one value per member")
      continue
    kind = VECTORISABLE[path]
    wrong = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int)]
    if wrong:
      kind_name = "an integer" if kind is int else "a number"
      problems.append(f"population.member_values.{path}: {wrong[0]!r} is not {kind_name}")
  if size > 1 and config.inspect.probe_prompts:
    problems.append("inspect.probe_prompts: probes during training watch a single run; set population.size=1, or "
                    "inspect a member after training (--member)")
  return problems


def member_config(config: ConfigDict, member: int) -> ConfigDict:
  """The single run that member `member` of the population is: its own values set, population.size 1."""
  single = ConfigDict(config.to_dict())
  values = listed_values(config)
  single.train.seed = config.train.seed + member
  for path, member_values in values.items():
    section, key = path.split(".")
    single[section][key] = VECTORISABLE[path](member_values[member])
  single.population.size = 1
  single.population.member_values = ConfigDict(type_safe=False)
  return single


def traced_values(config: ConfigDict) -> dict[str, list[float]]:
  """The listed optimizer values, by key (learning_rate...): what the step takes as traced numbers, per member
  (float32: a warmup's length in steps is exact in float32 far beyond any run's length)."""
  return {path.split(".")[1]: [float(v) for v in values] for path, values in listed_values(config).items()
          if path.startswith("optimizer.")}


def member_dirs(workdir: str, size: int, given: list[str] | None = None) -> list[str]:
  """Each member's directory: the caller's (a sweep passes its trials'), else workdir/members/<i>.

  Raises:
    ValueError: `given` does not name one directory per member.
  """
  if given is None:
    return [os.path.join(workdir, MEMBERS_DIR, str(i)) for i in range(size)]
  if len(given) != size or len(set(map(os.path.abspath, given))) != size:
    raise ValueError(f"member_dirs: {len(given)} directories for population.size={size}: give one distinct "
                     f"directory per member")
  return list(given)


def population_of(member_dir: str) -> tuple[str, int] | None:
  """(the population's workdir, the member's index) when member_dir is a member's directory, else None."""
  path = os.path.join(member_dir, MEMBER_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    record = json.load(f)
  return record["population"], int(record["member"])


def member_workdir(workdir: str, member: int | None) -> str:
  """The directory of member `member` of the population trained in workdir; workdir itself for None.

  Raises:
    FileNotFoundError: workdir holds no population, or none with that member.
  """
  if member is None:
    return workdir
  path = os.path.join(workdir, POPULATION_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"--member={member}: {workdir} holds no population ({POPULATION_FILE} is missing): "
                            f"give a population's workdir, or leave --member out")
  with open(path, encoding="utf-8") as f:
    dirs = json.load(f)["member_dirs"]
  if not 0 <= member < len(dirs):
    raise FileNotFoundError(f"--member={member}: the population in {workdir} has members 0 to {len(dirs) - 1}")
  return dirs[member]

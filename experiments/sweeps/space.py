"""What a sweep config describes, as plain data: its parameters, its grid, each trial's overrides and id.

Pure functions of the sweep config (no Optuna, no training), used by the engine (experiments/sweeps/studies.py,
trials.py, engine.py). A point is one choice of the parameters; with `replicates` R > 1 it runs R trials, replicate
r with train.seed = the point's seed + r (`replicate_overrides`), each with its own id and directory.

A sweep config's `parameters` is a list of entries, each one of:

  {"path": "model.num_heads", "values": [1, 2, 4]}              grid values (random/TPE: choices)
  {"paths": ["model.num_heads", "model.head_dim"],
   "values": [[1, 32], [2, 16]]}                                 zipped: the paths change together
  {"path": "optimizer.learning_rate", "low": 1e-4, "high": 1e-2,
   "log": True}                                                  a range (random/TPE only); "int": True
                                                                 for integers
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import json
import os
import re
import sys
from typing import Any

from ml_collections import ConfigDict

from experiments import population
from experiments.config_paths import flatten

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "successive_halving")
DIRECTIONS = ("minimize", "maximize")
LOCATION_KEYS = ("data.data_dir", "data.manual_dir")  # where data live, not what a trial trains on: not in its id
REPLICATE_SEED = "train.seed"  # what tells a point's replicates apart (initialisation, dropout, data order)


def load_config_file(spec: str) -> ConfigDict:
  """Calls get_config() (or get_config(arg)) of `path.py[:arg]`, a path relative to the cwd or the repo."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path) and os.path.exists(os.path.join(REPO, path)):
    path = os.path.join(REPO, path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} not found")
  if REPO not in sys.path:  # config files import `configs.base`
    sys.path.insert(0, REPO)
  name = "sweep_config_" + re.sub(r"\W", "_", os.path.abspath(path))
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def entry_name(entry: dict) -> str:
  """The Optuna parameter name of an entry: its path, or its paths joined by '+'."""
  return entry["path"] if "path" in entry else "+".join(entry["paths"])


def parameters(sweep: ConfigDict) -> list[dict]:
  """The sweep's parameter entries as plain dicts."""
  return [dict(entry) for entry in (sweep.parameters or ())]


def encode(entry: dict, value: Any) -> Any:
  """The Optuna value of one choice: itself, or for zipped paths a JSON string (Optuna stores scalars)."""
  return json.dumps(list(value)) if "paths" in entry else value


def decode(entry: dict, value: Any) -> dict[str, Any]:
  """The overrides {path: value} of one Optuna value of an entry."""
  if "paths" in entry:
    return dict(zip(entry["paths"], json.loads(value)))
  return {entry["path"]: value}


def overrides_of(sweep: ConfigDict, params: dict[str, Any]) -> dict[str, Any]:
  """The varied overrides {path: value} of a trial from its Optuna params (fixed ones not included)."""
  overrides = {}
  for entry in parameters(sweep):
    overrides.update(decode(entry, params[entry_name(entry)]))
  return overrides


def grid_space(sweep: ConfigDict) -> dict[str, list]:
  """The search space of Optuna's GridSampler: {parameter name: [Optuna values]}."""
  return {entry_name(e): [encode(e, v) for v in e["values"]] for e in parameters(sweep)}


def grid_points(sweep: ConfigDict) -> list[dict[str, Any]]:
  """Every point of a grid as Optuna params, in a fixed order."""
  space = grid_space(sweep)
  names = sorted(space)
  return [dict(zip(names, values)) for values in itertools.product(*(space[n] for n in names))]


def corner_points(sweep: ConfigDict) -> list[dict[str, Any]]:
  """Points that check a random/TPE space: each choice and each range end, one entry at a time."""
  entries = parameters(sweep)
  first = {entry_name(e): (encode(e, e["values"][0]) if "values" in e else e["low"]) for e in entries}
  points = [first]
  for e in entries:
    options = [encode(e, v) for v in e["values"]] if "values" in e else [e["low"], e["high"]]
    points.extend({**first, entry_name(e): option} for option in options[1:])
  return points


def slug(overrides: dict[str, Any], limit: int = 60) -> str:
  """A short readable name from the overrides: last path component and value, e.g. num_heads-4_head_dim-8.

  A replicate's seed (REPLICATE_SEED) comes last and is never cut, so that the replicates of a point read apart.
  """
  def part(path: str, value: Any) -> str:
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9_.-]", "", f"{path.rsplit('.', 1)[-1]}-{text}")

  name = "_".join(part(p, v) for p, v in overrides.items() if p != REPLICATE_SEED)[:limit] or "trial"
  return f"{name}_{part('seed', overrides[REPLICATE_SEED])}" if REPLICATE_SEED in overrides else name


def trial_id(sweep: ConfigDict, overrides: dict[str, Any]) -> str:
  """The trial's directory name: a readable slug and a hash of the base config, fixed and varied overrides.

  Overrides that only say where data live (LOCATION_KEYS) are left out of the hash. Given a point's overrides
  (`overrides_of`), it is the point's id; given a replicate's (`replicate_overrides`), the replicate's.

  The same point of the same sweep always gets the same id, on any machine and in any order, so a rerun
  finds its checkpoints; changing the base or a fixed override gives new ids (never a silent mix).
  """
  fixed = {k: v for k, v in flatten(sweep.fixed).items() if k not in LOCATION_KEYS}
  key = json.dumps({"base": sweep.base, "fixed": fixed, "overrides": overrides}, sort_keys=True, default=str)
  return f"{slug(overrides)}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def replicates(sweep: ConfigDict) -> int:
  """Seeds per point (a sweep config without the key, as written before it existed, has one)."""
  return int(sweep.get("replicates", 1))


def pruner_name(sweep: ConfigDict) -> str:
  return sweep.get("pruner", "none")


def vectorized(sweep: ConfigDict) -> bool:
  """Whether trials that differ only in vectorisable paths train together as one population (`vectorize`)."""
  return bool(sweep.get("vectorize", False))


def max_population(sweep: ConfigDict) -> int:
  return int(sweep.get("max_population", 16))


def population_key(sweep: ConfigDict, params: dict[str, Any], replicate: int) -> str:
  """What the trials of one population share: the overrides of trial (params, replicate) without the paths a
  population varies per member (population.VECTORISABLE), as text."""
  overrides = replicate_overrides(sweep, overrides_of(sweep, params), replicate)
  shared = {path: value for path, value in overrides.items() if path not in population.VECTORISABLE}
  return json.dumps(shared, sort_keys=True, default=str)


def population_config(sweep: ConfigDict, members: list[tuple[dict[str, Any], int]]) -> ConfigDict:
  """The run config of a population whose member i is trial (params, replicate) members[i] of the sweep.

  Every member's seed is listed, and each other vectorisable path whose members' values differ, so that
  population.member_config(config, i) is trial i's own run config with population.size 1.

  Raises:
    ValueError: the trials differ in a path a population cannot vary (they have different population_keys).
  """
  configs = [trial_config(sweep, params, replicate) for params, replicate in members]
  keys = {population_key(sweep, params, replicate) for params, replicate in members}
  if len(keys) > 1:
    raise ValueError(f"population_config: the trials differ in more than {', '.join(population.VECTORISABLE)}")
  config = ConfigDict(configs[0].to_dict())
  config.population.size = len(configs)
  listed: dict[str, dict[str, list[Any]]] = {}
  for path in population.VECTORISABLE:
    section, key = path.split(".")
    values = [member[section][key] for member in configs]
    if path == REPLICATE_SEED or len(set(values)) > 1:
      listed.setdefault(section, {})[key] = values
  config.population.member_values = ConfigDict(listed, type_safe=False)
  return config


def populations(sweep: ConfigDict, trials: list[tuple[dict[str, Any], int]]) -> list[list[tuple[dict[str, Any], int]]]:
  """The trials (params, replicate) grouped as a vectorised sweep trains them: by population_key, in the order
  of each key's first trial, at most max_population to a group."""
  by_key: dict[str, list[tuple[dict[str, Any], int]]] = {}
  for params, replicate in trials:
    by_key.setdefault(population_key(sweep, params, replicate), []).append((params, replicate))
  size = max_population(sweep)
  return [group[start:start + size] for group in by_key.values() for start in range(0, len(group), size)]


@functools.lru_cache(maxsize=8)
def _config_file_seed(spec: str, modified: float) -> int:
  del modified  # part of the cache key only: an edited base file is read again
  return int(load_config_file(spec).train.seed)


def point_seed(sweep: ConfigDict, overrides: dict[str, Any]) -> int:
  """train.seed of a point before replicates: its override, else the fixed one, else the base config's."""
  if REPLICATE_SEED in overrides:
    return int(overrides[REPLICATE_SEED])
  fixed = flatten(sweep.fixed)
  if REPLICATE_SEED in fixed:
    return int(fixed[REPLICATE_SEED])
  path = sweep.base.partition(":")[0]
  path = path if os.path.exists(path) else os.path.join(REPO, path)
  return _config_file_seed(sweep.base, os.path.getmtime(path) if os.path.exists(path) else 0.0)


def replicate_overrides(sweep: ConfigDict, overrides: dict[str, Any], replicate: int) -> dict[str, Any]:
  """The overrides of replicate r of a point: train.seed = the point's seed + r, in the id too.

  A sweep of one replicate leaves the overrides (and so its trials' ids) as they were before replicates existed.
  """
  if replicates(sweep) == 1:
    return dict(overrides)
  return {**overrides, REPLICATE_SEED: point_seed(sweep, overrides) + replicate}


def apply(config: ConfigDict, overrides: dict[str, Any]) -> ConfigDict:
  """A copy of the run config with {dotted path: value} set; unknown paths raise KeyError."""
  config = ConfigDict(config.to_dict())
  for path, value in overrides.items():
    *sections, field = path.split(".")
    node = config
    for section in sections:
      if section not in node or not isinstance(node[section], ConfigDict):
        raise KeyError(f"{path}: no section {section!r} in the run config")
      node = node[section]
    if field not in node:
      raise KeyError(f"{path}: no key {field!r} in the run config")
    try:
      node[field] = value  # ConfigDict checks the type, as it does for a command-line override
    except TypeError as error:
      raise KeyError(f"{path}={value!r} does not fit the key's type: {error}") from None
  return config


def trial_config(sweep: ConfigDict, params: dict[str, Any], replicate: int = 0) -> ConfigDict:
  """The run config of one trial: the base config, the fixed overrides, then the trial's own (seed included)."""
  config = apply(load_config_file(sweep.base), flatten(sweep.fixed))
  return apply(config, replicate_overrides(sweep, overrides_of(sweep, params), replicate))


def check_sweep(sweep: ConfigDict) -> list[str]:
  """Problems of the sweep config itself (not of the trials' run configs), one line each."""
  errors = []
  if sweep.sampler not in SAMPLERS:
    errors.append(f"sampler={sweep.sampler!r} is unknown: expected one of {', '.join(SAMPLERS)}")
  if sweep.direction not in DIRECTIONS:
    errors.append(f"direction={sweep.direction!r} must be 'minimize' or 'maximize'")
  if not sweep.metric.startswith("eval/"):
    errors.append(f"metric={sweep.metric!r}: expected an eval metric such as eval/loss or eval/accuracy")
  entries = parameters(sweep)
  if not entries:
    errors.append("parameters is empty: give at least one path to vary")
  for index, e in enumerate(entries):
    where = f"parameters[{index}] ({entry_name(e) if ('path' in e or 'paths' in e) else '?'})"
    if ("path" in e) == ("paths" in e):
      errors.append(f"{where}: give exactly one of 'path' or 'paths'")
      continue
    if "values" in e:
      if not e["values"]:
        errors.append(f"{where}: 'values' is empty")
      if "paths" in e and any(len(v) != len(e["paths"]) for v in e["values"]):
        errors.append(f"{where}: every value must list one item per path ({len(e['paths'])})")
    elif "low" in e and "high" in e:
      if sweep.sampler == "grid":
        errors.append(f"{where}: a range (low, high) needs sampler 'random' or 'tpe'; the grid sampler takes 'values'")
      elif not e["low"] < e["high"] or (e.get("log") and e["low"] <= 0):
        errors.append(f"{where}: need low < high (and low > 0 with log)")
    else:
      errors.append(f"{where}: give 'values' or 'low' and 'high'")
  if sweep.sampler in ("random", "tpe") and sweep.num_trials < 1:
    errors.append(f"num_trials={sweep.num_trials}: the {sweep.sampler} sampler needs num_trials >= 1")
  count = sweep.get("replicates", 1)
  if not isinstance(count, int) or isinstance(count, bool) or count < 1:
    errors.append(f"replicates={count!r}: give the number of seeds per point, an integer >= 1")
  pruner = pruner_name(sweep)
  if pruner not in PRUNERS:
    errors.append(f"pruner={pruner!r} is unknown: expected one of {', '.join(PRUNERS)}")
  elif pruner != "none" and sweep.sampler == "grid":
    errors.append(f"pruner={pruner!r} needs sampler 'random' or 'tpe': a grid runs every point to its end; "
                  "set pruner='none'")
  vectorize = sweep.get("vectorize", False)
  if not isinstance(vectorize, bool):
    errors.append(f"vectorize={vectorize!r}: give True (train trials that differ only in "
                  f"{', '.join(population.VECTORISABLE)} as one population) or False")
  elif vectorize and pruner in PRUNERS and pruner != "none":
    errors.append(f"pruner={pruner!r} with vectorize=True: a population's members train together to the end, "
                  "so none can be pruned alone; set pruner='none' or vectorize=False")
  size = sweep.get("max_population", 16)
  if not isinstance(size, int) or isinstance(size, bool) or size < 1:
    errors.append(f"max_population={size!r}: give the most trials one population trains, an integer >= 1")
  if any(path.startswith("population.") for e in entries for path in e.get("paths", [e.get("path", "")])):
    errors.append("parameters: a path in population.* is set by the sweep itself; vary the member's paths "
                  f"({', '.join(population.VECTORISABLE)}) with vectorize=True instead")
  return errors


def validate_trials(sweep: ConfigDict, device_count: int | None = None) -> list[str]:
  """Every problem of the sweep and of its trials' run configs, one line each, naming the trial.

  A grid is checked point by point; a random or TPE space at each choice and at both ends of each range.
  """
  # The run's validation builds the model (flax, JAX): imported here, so that the sweep command loads neither
  # before it checks the trials.
  from experiments import validation  # pylint: disable=g-import-not-at-top

  errors = check_sweep(sweep)
  if errors:
    return errors
  try:
    load_config_file(sweep.base)
  except (FileNotFoundError, ValueError, TypeError) as error:
    return [f"base={sweep.base!r}: {error}"]
  points = grid_points(sweep) if sweep.sampler == "grid" else corner_points(sweep)
  seen = set()
  for params in points:
    overrides = overrides_of(sweep, params)
    name = slug(overrides)
    try:
      config = trial_config(sweep, params)
    except KeyError as error:
      message = f"{error.args[0] if error.args else error} (a sweep parameter or fixed override)"
    else:
      problems = validation.validate(config, device_count=device_count, process_count=1)
      if pruner_name(sweep) != "none" and not config.train.eval_every:
        problems.append(f"train.eval_every=0: the pruner {pruner_name(sweep)!r} decides at evaluations during "
                        "training; set fixed.train.eval_every")
      message = "\n".join(f"trial {name}: {line}" for line in problems)
    if message and message not in seen:
      seen.add(message)
      errors.append(message)
  if vectorized(sweep) and not errors:
    errors.extend(_population_errors(sweep, points, validation, device_count))
  return errors


def _population_errors(sweep: ConfigDict, points: list[dict[str, Any]], validation: Any,
                       device_count: int | None) -> list[str]:
  """Problems of the populations a vectorised sweep trains its points' replicates in, one line each."""
  base_size = apply(load_config_file(sweep.base), flatten(sweep.fixed)).population.size
  if base_size != 1:
    return [f"population.size={base_size} in the base or fixed: a vectorised sweep makes its populations itself "
            "(at most max_population trials each); leave population.size at 1"]
  trials = [(params, r) for params in points for r in range(replicates(sweep))]
  errors = []
  for group in populations(sweep, trials):
    config = population_config(sweep, group)
    name = slug(replicate_overrides(sweep, overrides_of(sweep, group[0][0]), group[0][1]))
    for line in validation.validate(config, device_count=device_count, process_count=1):
      message = f"population of {len(group)} trials from {name}: {line}"
      if message not in errors:
        errors.append(message)
  return errors

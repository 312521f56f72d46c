"""The random and TPE samplers of sweeps on their value ranges, with Optuna alone (no training, no storage)."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from configs.sweeps import common
from experiments.sweeps import space, studies

optuna.logging.set_verbosity(optuna.logging.WARNING)

PARAMETERS = [
    {"path": "optimizer.learning_rate", "low": 1e-4, "high": 1e-1, "log": True},
    {"path": "model.dropout_rate", "low": 0.0, "high": 0.5},
    {"path": "model.num_layers", "low": 1, "high": 4, "int": True},
    {"paths": ["model.num_heads", "model.head_dim"], "values": [[1, 32], [2, 16]]},
]
TRIALS = 120


def _sweep(sampler: str, seed: int = 0):
  c = common.sweep_config("samplers")
  c.sampler, c.seed, c.num_trials = sampler, seed, TRIALS
  c.parameters = [dict(entry) for entry in PARAMETERS]
  return c


def _draw(sweep, objective=None, worker_index: int = 0, n: int = TRIALS) -> list[dict]:
  """The overrides of n trials asked of the sweep's sampler, told `objective(overrides)` (0 when None)."""
  study = optuna.create_study(sampler=studies.make_sampler(sweep, worker_index), direction=sweep.direction)
  drawn = []
  for _ in range(n):
    trial = study.ask()
    overrides = space.overrides_of(sweep, studies.suggest(trial, sweep))
    study.tell(trial, objective(overrides) if objective else 0.0)
    drawn.append(overrides)
  return drawn


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_every_value_stays_in_its_range_and_zipped_paths_stay_together(sampler):
  drawn = _draw(_sweep(sampler), objective=lambda o: o["model.dropout_rate"])
  for o in drawn:
    assert 1e-4 <= o["optimizer.learning_rate"] <= 1e-1
    assert 0.0 <= o["model.dropout_rate"] <= 0.5
    assert isinstance(o["model.num_layers"], int) and 1 <= o["model.num_layers"] <= 4
    assert [o["model.num_heads"], o["model.head_dim"]] in ([1, 32], [2, 16])
  assert {o["model.num_layers"] for o in drawn} == {1, 2, 3, 4}


def test_random_draws_are_log_uniform_and_uniform_as_configured():
  drawn = _draw(_sweep("random"))
  exponents = np.log10([o["optimizer.learning_rate"] for o in drawn])
  # Log-uniform: each of the three decades holds about a third (uniform in the value would put ~90% in the
  # last one); a KS-style check against the uniform CDF of the exponent, bound for 120 draws at ~1%.
  fractions = np.histogram(exponents, bins=[-4, -3, -2, -1])[0] / len(drawn)
  assert np.all(np.abs(fractions - 1 / 3) < 0.15), fractions
  quantiles = (np.sort(exponents) + 4) / 3
  assert np.max(np.abs(quantiles - (np.arange(len(drawn)) + 0.5) / len(drawn))) < 0.15
  dropout = np.sort([o["model.dropout_rate"] for o in drawn])
  assert np.max(np.abs(dropout / 0.5 - (np.arange(len(drawn)) + 0.5) / len(drawn))) < 0.15


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_the_seed_reproduces_the_draws_and_workers_draw_differently(sampler):
  first, again = _draw(_sweep(sampler, seed=3), n=15), _draw(_sweep(sampler, seed=3), n=15)
  assert first == again
  assert _draw(_sweep(sampler, seed=4), n=15) != first
  assert _draw(_sweep(sampler, seed=3), worker_index=1, n=15) != first  # seed + worker index


def test_tpe_follows_the_metric_where_random_does_not():
  """After its random start-up trials TPE draws near the best learning rate (here 1e-2) far more often."""

  def distance(overrides):
    return abs(math.log10(overrides["optimizer.learning_rate"]) + 2)

  late = {sampler: np.median([distance(o) for o in _draw(_sweep(sampler), objective=distance, n=60)[-30:]])
          for sampler in ("random", "tpe")}
  assert late["tpe"] < 0.5 * late["random"], late


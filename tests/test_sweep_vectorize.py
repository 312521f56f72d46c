"""Vectorised sweeps (`vectorize`): trials that differ only in vectorisable paths train as one population.

The grouping, the configs the populations get, resuming and the study's records are tested with a stand-in for
the run (no training); tests/test_sweep_replicates.py trains a tiny sweep both ways and compares its points.
"""

from __future__ import annotations

import json
import os

import optuna
import pytest
from ml_collections import ConfigDict

from experiments import population, runner
from experiments.files import METRICS_FILE, SUMMARY_FILE, TRIAL_FILE, read_json, write_json
from experiments.sweeps import engine, space, studies
from tests.helpers.sweeps import tiny_sweep


def stand_in_population_runner(calls: list, loss_of, interrupt_first: bool = False):
  """A train_and_evaluate for populations: each member logs eval/loss = loss_of(member config, step) at steps 1
  and 2 and gets a summary, without training. With interrupt_first the first call stops as a signal would."""

  def train_and_evaluate(config, workdir, member_dirs=None, on_member_evaluation=None, **unused):
    del unused
    calls.append((config, workdir, list(member_dirs)))
    if interrupt_first and len(calls) == 1:
      raise KeyboardInterrupt
    summaries = []
    for index, member_dir in enumerate(member_dirs):
      member = population.member_config(config, index)
      metrics = {}
      for step in (1, 2):
        metrics = {"eval/loss": float(loss_of(member, step))}
        with open(os.path.join(member_dir, METRICS_FILE), "a", encoding="utf-8") as f:
          f.write(json.dumps({"step": step, **metrics}) + "\n")
        on_member_evaluation(index, step, metrics)
      summary = {"status": "completed", "step": 2, "final": metrics}
      write_json(os.path.join(member_dir, SUMMARY_FILE), summary)
      summaries.append(summary)
    return {"status": "completed", "step": 2, "members": summaries}

  return train_and_evaluate


def loss_by_heads_and_seed(config, step):
  return config.model.num_heads + config.train.seed / 10 + 1 / step


def study_of(s, sweepdir) -> optuna.Study:
  return optuna.load_study(study_name=s.name, storage=studies.default_storage(str(sweepdir)))


def test_replicates_of_each_point_train_as_populations_of_at_most_max_population(tmp_path, monkeypatch, capsys):
  s = tiny_sweep(str(tmp_path / "data"), values=(1, 2))
  s.replicates, s.vectorize, s.max_population = 3, True, 2
  calls = []
  monkeypatch.setattr(runner, "train_and_evaluate", stand_in_population_runner(calls, loss_by_heads_and_seed))
  assert engine.run(s, str(tmp_path)) == {"COMPLETE": 6}
  # Point after point, seeds in order, cut at max_population: (H=1: seeds 0, 1), (H=1: 2), (H=2: 0, 1), (H=2: 2).
  groups = [(c.model.num_heads, list(c.population.member_values.train.seed)) for c, _, _ in calls]
  assert groups == [(1, [0, 1]), (1, [2]), (2, [0, 1]), (2, [2])]
  for config, workdir, dirs in calls:
    assert config.population.size == len(dirs)
    assert os.path.dirname(workdir) == os.path.join(str(tmp_path), "populations")
    for index, member_dir in enumerate(dirs):  # each member trains in its own trial's directory
      record = read_json(os.path.join(member_dir, TRIAL_FILE))
      assert record["seed"] == config.population.member_values.train.seed[index]
      assert record["population"] == workdir and record["status"] == "completed"
  for t in study_of(s, tmp_path).trials:  # each member is its own trial, with its own intermediate values
    heads, seed = t.user_attrs["overrides"]["model.num_heads"], t.user_attrs["overrides"]["train.seed"]
    assert t.value == pytest.approx(heads + seed / 10 + 1 / 2)
    assert t.intermediate_values == pytest.approx({1: heads + seed / 10 + 1, 2: heads + seed / 10 + 1 / 2})
  lines = capsys.readouterr().err.splitlines()
  assert sum(line.startswith("trial num_heads-") for line in lines) == 6
  assert sum(line.startswith("sweep tiny:") for line in lines) == 4  # one progress line per population


@pytest.mark.slow  # the engine's own run, twice (no training)
def test_an_interrupted_population_resumes_in_the_same_directory_with_the_same_members(tmp_path, monkeypatch):
  s = tiny_sweep(str(tmp_path / "data"), values=(1,))
  s.replicates, s.vectorize = 3, True
  calls = []
  monkeypatch.setattr(runner, "train_and_evaluate",
                      stand_in_population_runner(calls, loss_by_heads_and_seed, interrupt_first=True))
  with pytest.raises(KeyboardInterrupt):
    engine.run(s, str(tmp_path))
  assert {json.dumps(r["status"]) for r in map(read_json, _trial_files(tmp_path))} == {'"interrupted"'}
  engine.run(s, str(tmp_path))
  assert len(calls) == 2 and calls[0][1] == calls[1][1] and sorted(calls[0][2]) == sorted(calls[1][2])
  complete = study_of(s, tmp_path).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
  assert sorted(t.user_attrs["replicate"] for t in complete) == [0, 1, 2]


def _trial_files(sweepdir) -> list[str]:
  trials = os.path.join(sweepdir, "trials")
  return [os.path.join(trials, d, TRIAL_FILE) for d in sorted(os.listdir(trials))]


@pytest.mark.slow  # the engine's own run (no training)
def test_a_sampled_point_trains_with_its_replicates(tmp_path, monkeypatch):
  s = tiny_sweep(str(tmp_path / "data"), values=(1, 2, 4))
  s.sampler, s.num_trials, s.replicates, s.vectorize = "random", 2, 2, True
  calls = []
  monkeypatch.setattr(runner, "train_and_evaluate", stand_in_population_runner(calls, loss_by_heads_and_seed))
  assert engine.run(s, str(tmp_path)) == {"COMPLETE": 4}
  assert len(calls) == 2
  for config, _, dirs in calls:
    assert len(dirs) == 2 and list(config.population.member_values.train.seed) == [0, 1]


def test_a_learning_rate_grid_of_a_point_is_one_population_whose_members_are_the_trials(tmp_path):
  s = tiny_sweep(str(tmp_path / "data"), values=(1, 2))
  s.parameters.append({"path": "optimizer.learning_rate", "values": [1e-3, 3e-3]})
  s.replicates = 2
  s.vectorize = True
  trials = [(params, r) for params in space.grid_points(s) for r in range(2)]
  groups = space.populations(s, trials)
  assert [len(g) for g in groups] == [4, 4]  # per head count: 2 learning rates x 2 seeds
  for group in groups:
    config = space.population_config(s, group)
    assert sorted(config.population.member_values.to_dict()) == ["optimizer", "train"]
    for index, (params, replicate) in enumerate(group):  # member i is trial i's own run, exactly
      assert population.member_config(config, index).to_dict() == space.trial_config(s, params, replicate).to_dict()
  with pytest.raises(ValueError, match="differ in more than"):
    space.population_config(s, [groups[0][0], groups[1][0]])


def test_a_single_learning_rate_is_not_listed_per_member(tmp_path):
  s = tiny_sweep(str(tmp_path / "data"), values=(1,))
  s.replicates = 3
  config = space.population_config(s, [(space.grid_points(s)[0], r) for r in range(3)])
  assert config.population.member_values.to_dict() == {"train": {"seed": [0, 1, 2]}}


@pytest.mark.parametrize("change, message", [
    ({"vectorize": "yes"}, "vectorize='yes': give True"),
    ({"vectorize": True, "sampler": "random", "num_trials": 2, "pruner": "median"},
     "pruner='median' with vectorize=True"),
    ({"max_population": 0}, "max_population=0: give the most trials"),
])
def test_bad_vectorize_settings_are_one_line_each(tmp_path, change, message):
  # A sweep config of the user's own (not from common.sweep_config) has no types to check its values against.
  s = ConfigDict({**tiny_sweep(str(tmp_path / "data")).to_dict(), **change})
  errors = space.check_sweep(s)
  assert len(errors) == 1 and errors[0].startswith(message), errors


def test_a_population_path_as_a_parameter_or_a_base_population_is_refused(tmp_path):
  s = tiny_sweep(str(tmp_path / "data"))
  s.parameters = [{"path": "population.size", "values": [1, 2]}]
  assert any(e.startswith("parameters: a path in population.*") for e in space.check_sweep(s))
  s = tiny_sweep(str(tmp_path / "data"))
  s.vectorize = True
  s.fixed.population = {"size": 2}
  errors = space.validate_trials(s, device_count=1)
  assert errors == ["population.size=2 in the base or fixed: a vectorised sweep makes its populations itself (at "
                    "most max_population trials each); leave population.size at 1"]


def test_a_population_that_validation_refuses_is_reported_before_anything_runs(tmp_path):
  s = tiny_sweep(str(tmp_path / "data"), values=(1,))
  s.replicates, s.vectorize = 2, True
  s.fixed.inspect = {"probe_prompts": "1 2 3"}  # fine for single runs, refused in a population
  errors = space.validate_trials(s, device_count=1)
  assert len(errors) == 1 and errors[0].startswith("population of 2 trials from num_heads-1_seed-0: "
                                                   "inspect.probe_prompts"), errors
  s.vectorize = False
  assert space.validate_trials(s, device_count=1) == []


@pytest.mark.slow
def test_the_capacity_study_runs_end_to_end_at_its_narrowest_and_widest_points(tfds_data_dir, tmp_path,
                                                                             fast_compilation):
  from configs.sweeps import capacity  # pylint: disable=g-import-not-at-top

  del fast_compilation  # its programs are compiled once each and run 2 steps: optimizing them is most of the time
  s = capacity.get_config()
  widths = next(p for p in s.parameters if p.get("path") == "model.d_model")
  heads = next(p for p in s.parameters if p.get("path") == "model.num_heads")
  # Every point compiles its own population (about 10 s each on 2 cores): the two ends of the grid stand for it.
  widths["values"], heads["values"] = [widths["values"][0], widths["values"][-1]], [heads["values"][-1]]
  s.replicates = 2
  s.fixed.data.update(num_train=64, num_validation=16, data_dir=tfds_data_dir)
  s.fixed.train.update(steps=2, eval_every=1, checkpoint_every=2, batch_size=8, log_every=1)
  s.fixed.eval.max_batches = 1
  s.fixed.optimizer.warmup_steps = 0
  s.fixed.checkpoint.async_save = False
  assert engine.run(s, str(tmp_path), workers=1) == {"COMPLETE": 2 * 2 * 2}
  assert len(os.listdir(tmp_path / "populations")) == 2  # a point's 2 learning rates x 2 seeds train together
  for t in study_of(s, tmp_path).trials:
    assert sorted(t.intermediate_values) == [1, 2] and 0 <= t.value <= 1

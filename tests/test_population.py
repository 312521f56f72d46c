"""Populations: S members in one compiled step, each the single run of its own config.

The config tests validate only (no data is prepared). The end-to-end ones (slow) train the tiny run: a population
of 4 against the four single runs it stands for, a population stopped and resumed against one that ran straight,
and a population with a diverging member that also stops at a target.

Members are compared with single runs at rtol 1e-5, not bitwise: vmap turns each matmul and reduction into a
batched one, which XLA's CPU backend tiles and sums in another order, so a member's loss moves from its single
run's by an ulp here and there (seen: up to 2.4e-7 absolute on a loss of 3.4 within 6 steps, and parameters
up to 1.5e-6 apart). A wrong member-to-seed or member-to-value mapping moves the loss by 1e-3 or more at step 2.
"""

from __future__ import annotations

import json
import os
import types

import jax
import numpy as np
import pytest

from experiments import checkpoint, population, validation
from experiments.evaluate import evaluate
from experiments.files import CONFIG_FILE, SUMMARY_FILE, read_metrics
from experiments.optimizer import learning_rate_schedule, traced_learning_rate_schedule
from experiments.runner import train_and_evaluate
from tests.helpers import tensorboard_files
from tests.helpers.checkpoints import saved_leaves
from tests.helpers.tiny_config import tiny_config

STEPS = 6
LEARNING_RATES = [3e-3, 1e-3, 2e-3, 4e-3]
WARMUPS = [2, 0, 3, 1]
# The schedule ends at STEPS (decay_steps) whatever train.steps is, so a population stopped halfway and resumed
# matches one that ran straight.
COMMON = {"train.steps": STEPS, "train.eval_every": 3, "eval.max_batches": 1, "train.steps_per_call": 2,
          "optimizer.decay_steps": STEPS}


def population_config(data_dir: str, size: int, member_values: dict | None = None, overrides: dict | None = None):
  config = tiny_config(data_dir, {**COMMON, **(overrides or {})})
  config.population.size = size
  config.population.member_values = member_values or {}
  return config


def one_line(config) -> str:
  errors = validation.validate(config, device_count=1, process_count=1)
  assert len(errors) == 1, errors
  return errors[0]


@pytest.mark.parametrize("path, values", [
    ("model.num_heads", [1, 2]), ("model.d_model", [32, 64]), ("model.value_rank", [4, 8]),
    ("model.mask", ["causal", "none"]), ("model.positions", ["rope", "learned"]), ("train.steps", [4, 6]),
    ("model.dropout_rate", [0.0, 0.1]), ("data.seq_len", [16, 24]),
])
def test_a_path_that_changes_the_step_is_refused_in_one_line_naming_it(path, values):
  section, key = path.split(".")
  line = one_line(population_config("/nonexistent/data", 2, {section: {key: values}}))
  assert line.startswith(f"population.member_values.{path}: ") and "separate trials" in line


def test_values_that_are_not_one_per_member_or_not_numbers_are_refused_in_one_line():
  line = one_line(population_config("/nonexistent/data", 3, {"optimizer": {"learning_rate": [1e-3, 2e-3]}}))
  assert line.startswith("population.member_values.optimizer.learning_rate has 2 values but population.size=3")
  line = one_line(population_config("/nonexistent/data", 2, {"optimizer": {"learning_rate": ["fast", 1e-3]}}))
  assert line == "population.member_values.optimizer.learning_rate: 'fast' is not a number"
  line = one_line(population_config("/nonexistent/data", 2, {"optimizer": {"learnin_rate": [1e-3, 2e-3]}}))
  assert line.startswith("population.member_values.optimizer.learnin_rate: optimizer.learnin_rate is not a config key")
  assert one_line(population_config("/nonexistent/data", 0)).startswith("population.size=0 must be an integer >= 1")


def test_a_members_own_bad_value_is_one_line_naming_the_member():
  config = population_config("/nonexistent/data", 3, {"optimizer": {"learning_rate": [1e-3, 0.0, 2e-3]}})
  assert one_line(config) == "population member 1: optimizer.learning_rate=0.0 must be positive"


def test_members_split_over_a_mesh_axis_must_divide_it():
  config = population_config("/nonexistent/data", 3, overrides={"mesh.data": 2})
  config.mesh.rules += ",population=data"
  errors = validation.validate(config, device_count=2, process_count=1)
  assert any(e.startswith("population.size=3 is not divisible by mesh data=2") for e in errors), errors


def test_a_member_is_the_single_run_of_its_seed_and_values():
  config = population_config("/nonexistent/data", 3, {"optimizer": {"weight_decay": [0.0, 0.1, 0.2]}},
                             {"train.seed": 7})
  member = population.member_config(config, 2)
  assert (member.train.seed, member.optimizer.weight_decay, member.population.size) == (9, 0.2, 1)
  assert validation.validate(member, device_count=1, process_count=1) == []
  seeds = population_config("/nonexistent/data", 2, {"train": {"seed": [5, 3]}})
  assert [population.member_config(seeds, i).train.seed for i in range(2)] == [5, 3]


def test_a_single_run_config_is_a_population_of_one():
  config = tiny_config("/nonexistent/data")
  assert population.size_of(config) == 1 and population.errors(config) == []
  del config["population"]  # a config saved before populations existed
  assert population.size_of(config) == 1


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup_steps", [0, 1, 7])
def test_the_traced_schedule_is_optaxs_with_the_warmup_a_traced_number(schedule, warmup_steps):
  opt = tiny_config("/nonexistent/data").optimizer
  opt.schedule, opt.warmup_steps, opt.decay_steps, opt.learning_rate = schedule, warmup_steps, 20, 3e-3
  steps = np.arange(26)
  expected = jax.vmap(learning_rate_schedule(opt, 20))(steps)

  def traced(learning_rate, warmup):
    settings = types.SimpleNamespace(**{**opt.to_dict(), "learning_rate": learning_rate, "warmup_steps": warmup})
    return jax.vmap(traced_learning_rate_schedule(settings, 20))(steps)

  got = jax.jit(traced)(np.float32(3e-3), np.float32(warmup_steps))
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)


def test_restore_from_takes_a_population_members_directory(tmp_path):
  member_dir = tmp_path / "members" / "1"
  member_dir.mkdir(parents=True)
  (member_dir / population.MEMBER_FILE).write_text(json.dumps({"population": str(tmp_path), "member": 1}))
  assert population.population_of(str(member_dir)) == (str(tmp_path), 1)
  assert validation.validate(tiny_config("/nonexistent/data", {"checkpoint.restore_from": str(member_dir)}),
                             device_count=1, process_count=1) == []
  line = one_line(tiny_config("/nonexistent/data", {"checkpoint.restore_from": str(tmp_path)}))
  assert line.startswith("checkpoint.restore_from=") and "has no checkpoints/ folder" in line


def losses(workdir: str) -> np.ndarray:
  return np.array([row["train/loss"] for row in read_metrics(workdir) if "train/loss" in row])




@pytest.fixture(scope="module")
def four(tmp_path_factory, tfds_data_dir) -> dict:
  """A population of 4 learning rates and warmups (seeds 0-3) and the four single runs it stands for."""
  root = str(tmp_path_factory.mktemp("population"))
  config = population_config(tfds_data_dir, 4, {"optimizer": {"learning_rate": LEARNING_RATES,
                                                              "warmup_steps": WARMUPS}})
  summary = train_and_evaluate(config, os.path.join(root, "population"))
  singles = []
  for seed, (learning_rate, warmup) in enumerate(zip(LEARNING_RATES, WARMUPS)):
    single = tiny_config(tfds_data_dir, {**COMMON, "train.seed": seed, "optimizer.learning_rate": learning_rate,
                                         "optimizer.warmup_steps": warmup})
    singles.append(os.path.join(root, f"single_{seed}"))
    train_and_evaluate(single, singles[-1])
  return {"root": root, "population": os.path.join(root, "population"), "summary": summary, "singles": singles}


@pytest.mark.slow
def test_a_population_of_four_trains_as_the_four_single_runs(four):
  pop = four["population"]
  assert four["summary"]["status"] == "completed" and four["summary"]["step"] == STEPS
  state = saved_leaves(pop, STEPS)
  for i, single in enumerate(four["singles"]):
    member = population.member_workdir(pop, i)
    assert member == os.path.join(pop, population.MEMBERS_DIR, str(i))
    with open(os.path.join(member, CONFIG_FILE)) as f, open(os.path.join(single, CONFIG_FILE)) as g:
      assert json.load(f) == json.load(g), "a member's config.json is its single run's"
    np.testing.assert_allclose(losses(member), losses(single), rtol=1e-5)
    assert len(losses(member)) == STEPS
    rows, single_rows = read_metrics(member), read_metrics(single)
    assert [r["step"] for r in rows if "eval/loss" in r] == [3, 6]
    for row, single_row in zip(rows, single_rows):
      assert row.keys() == single_row.keys()
      for key in (k for k in row if k.startswith(("train/", "eval/"))):
        np.testing.assert_allclose(row[key], single_row[key], rtol=1e-5, err_msg=key)
    with open(os.path.join(member, SUMMARY_FILE)) as f:
      summary = json.load(f)
    assert (summary["status"], summary["step"], summary["member"]) == ("completed", STEPS, i)
    single_state = saved_leaves(single, STEPS)
    assert set(single_state) == set(state) - {"['active']", "['stop_code']", "['stop_step']"}
    for name, value in single_state.items():
      np.testing.assert_allclose(state[name][i], value, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_each_member_is_a_tensorboard_run_with_its_single_runs_hparams_and_config_text(four):
  learning_rates = set()
  for i, single in enumerate(four["singles"]):
    member = tensorboard_files.read_run(population.member_workdir(four["population"], i))
    alone = tensorboard_files.read_run(single)
    assert tensorboard_files.session_hparams(member) == tensorboard_files.session_hparams(alone)
    assert tensorboard_files.config_texts(member) == tensorboard_files.config_texts(alone)
    learning_rates.add(tensorboard_files.session_hparams(member)["optimizer.learning_rate"])
  assert learning_rates == set(LEARNING_RATES)


@pytest.mark.slow
def test_a_member_reads_as_its_single_run_in_evaluate_and_load_model(four):
  pop = four["population"]
  for i in (0, 3):
    single = evaluate(four["singles"][i])
    for by_member in (evaluate(pop, member=i), evaluate(population.member_workdir(pop, i))):
      assert by_member.keys() == single.keys() and by_member["step"] == STEPS
      for key in single:
        np.testing.assert_allclose(by_member[key], single[key], rtol=1e-5, err_msg=key)
  _, params, step = checkpoint.load_model(population.member_workdir(pop, 2))
  _, single_params, _ = checkpoint.load_model(four["singles"][2])
  assert step == STEPS
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, single_params)
  with pytest.raises(FileNotFoundError, match="population of 4 models: give --member"):
    evaluate(pop)
  with pytest.raises(FileNotFoundError, match="members 0 to 3"):
    evaluate(pop, member=4)


@pytest.mark.slow
def test_a_resumed_population_is_bitwise_the_one_that_ran_straight(four, tfds_data_dir):
  # Halfway, then on: the schedule ends at STEPS in both (decay_steps), as for single runs in test_checkpoints.
  values = {"optimizer": {"learning_rate": LEARNING_RATES, "warmup_steps": WARMUPS}}
  workdir = os.path.join(four["root"], "resumed")
  train_and_evaluate(population_config(tfds_data_dir, 4, values, {"train.steps": 3}), workdir)
  assert saved_leaves(workdir, 3)["['step']"].tolist() == [3] * 4
  train_and_evaluate(population_config(tfds_data_dir, 4, values), workdir)
  straight = four["population"]
  a, b = saved_leaves(workdir, STEPS), saved_leaves(straight, STEPS)
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  for i in range(4):
    np.testing.assert_array_equal(losses(population.member_workdir(workdir, i)),
                                  losses(population.member_workdir(straight, i)))
    data = os.path.join(checkpoint.CHECKPOINTS, str(STEPS), f"data_{i}")
    [name] = [n for n in os.listdir(os.path.join(straight, data)) if n.endswith(".json")]
    with open(os.path.join(workdir, data, name)) as f, open(os.path.join(straight, data, name)) as g:
      assert f.read() == g.read(), "each member's data position"


@pytest.mark.slow
def test_a_diverging_member_stops_alone_and_a_member_at_its_target_stops(four, tfds_data_dir):
  # Member 1's learning rate overflows the parameters; member 2 meets an easy target at its first evaluation.
  workdir = os.path.join(four["root"], "diverging")
  config = population_config(tfds_data_dir, 3, {"optimizer": {"learning_rate": [3e-3, 1e30, 2e-3],
                                                              "warmup_steps": [2, 2, 3]}},
                             {"train.stop_when": "eval/loss<=1e9"})
  summary = train_and_evaluate(config, workdir)
  statuses = [m["status"] for m in summary["members"]]
  assert statuses == ["reached_target", "diverged", "reached_target"] and summary["status"] == "all_stopped"
  diverged = summary["members"][1]
  bad = diverged["diverged_at"]
  assert diverged["step"] == bad - 1 and diverged["steps_to_target"] is None
  rows = read_metrics(population.member_workdir(workdir, 1))
  assert rows[-1] == {"step": bad, "train/nonfinite": 1.0}
  assert all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
  # The others trained as their single runs up to their target (step 3), unharmed by member 1's NaN.
  for i in (0, 2):
    assert summary["members"][i]["steps_to_target"] == 3 and summary["members"][i]["step"] == 3
    np.testing.assert_allclose(losses(population.member_workdir(workdir, i)), losses(four["singles"][i])[:3],
                               rtol=1e-5)
  state = saved_leaves(workdir, 3)
  assert state["['step']"].tolist() == [3, bad - 1, 3] and state["['active']"].tolist() == [False] * 3
  assert all(np.isfinite(v).all() for k, v in state.items() if "params" in k)
  # A rerun finds the population ended and does nothing.
  assert train_and_evaluate(config, workdir) == summary



@pytest.mark.slow
def test_eight_members_over_eight_fake_devices_train_as_on_one_device(tmp_path, tfds_data_dir):
  # Subprocesses: fake CPU devices (XLA_FLAGS) must be set before JAX starts (see tests/test_multidevice.py).
  from helpers import launch  # tests/ is on sys.path under pytest's default (prepend) import mode

  overrides = {"train.steps": 3, "population.size": 8, "population.member_values": {"optimizer": {
      "learning_rate": [1e-3 * (i + 1) for i in range(8)]}}}
  base_rules = tiny_config(tfds_data_dir).mesh.rules
  one = {"workdir": str(tmp_path / "one"), "data_dir": tfds_data_dir, "overrides": overrides}
  eight = {"workdir": str(tmp_path / "eight"), "data_dir": tfds_data_dir,
           "overrides": {**overrides, "mesh.data": 8, "mesh.rules": base_rules + ",population=data"}}
  (on_one,), (on_eight,) = launch.finish([launch.start([one], str(tmp_path / "one.log"), devices=1),
                                          launch.start([eight], str(tmp_path / "eight.log"), devices=8)])
  assert on_eight["devices"] == 8 and on_eight["status"] == "completed"
  # One member per device: the member axis of the stacked parameters is split 8 ways, nothing else is.
  assert on_eight["layouts"]["block_0/attention/query"]["shape"] == [8, 32, 8, 4]
  assert on_eight["layouts"]["block_0/attention/query"]["shard_shape"] == [1, 32, 8, 4]
  assert len(on_one["member_losses"]) == 8
  for i, (losses_one, losses_eight) in enumerate(zip(on_one["member_losses"], on_eight["member_losses"])):
    assert [step for step, _ in losses_eight] == [1, 2, 3]
    np.testing.assert_allclose([loss for _, loss in losses_eight], [loss for _, loss in losses_one], rtol=1e-5,
                               err_msg=f"member {i}")

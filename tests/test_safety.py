"""Nothing lost: a NaN stop, a rerun of a finished run and unreadable checkpoints, with asynchronous saves on."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from experiments import build, checkpoint, evaluate, steps
from experiments.checkpoint import CheckpointError
from experiments.files import METRICS_FILE, SUMMARY_FILE, read_metrics
from experiments.metrics import MetricWriter, NonFiniteLoss
from experiments.runner import train_and_evaluate
from experiments.validation import ConfigError
from tests.helpers.tiny_config import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def run_config(data_dir: str, overrides: dict | None = None):
  """Asynchronous saves (the default, unlike tiny_config's), a checkpoint and an evaluation every 2 steps.

  The best checkpoint is the one of the *highest* eval/loss: the loss falls, so the best is an early step and
  a resume that forgot it would pick a later one.
  """
  return tiny_config(data_dir, {"train.steps": STEPS, "train.checkpoint_every": 2, "train.eval_every": 2,
                                "checkpoint.async_save": True, "checkpoint.best_mode": "max", **(overrides or {})})


@pytest.fixture(scope="module")
def finished(tfds_data_dir, tmp_path_factory) -> str:
  """A workdir that completed STEPS steps: checkpoints 2 and 4, evaluations at 2 and 4, summary.json."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  train_and_evaluate(run_config(tfds_data_dir), workdir)
  return workdir


@pytest.fixture
def copy(finished, tmp_path) -> str:
  """A copy of the finished workdir that a test may change."""
  return shutil.copytree(finished, str(tmp_path / "run"))


def snapshot(workdir: str) -> dict[str, tuple[bytes, int]]:
  """Every file's bytes and modification time, but the lock file (each run writes its pid there)."""
  files = {}
  for path in glob.glob(os.path.join(workdir, "**"), recursive=True):
    if os.path.isfile(path) and not os.path.basename(path).startswith(".lock"):
      files[os.path.relpath(path, workdir)] = (open(path, "rb").read(), os.stat(path).st_mtime_ns)
  return files


def truncate_state(workdir: str, step: int) -> None:
  """Cuts each data file of a checkpoint's state in half, as a full disk or a crash would."""
  for path in glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "ocdbt.process_0", "d", "*")):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def restore_warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "does not restore" in
          r.getMessage()]


@pytest.mark.slow
def test_nan_with_async_saves_keeps_the_last_good_checkpoint_complete(tfds_data_dir, tmp_path):
  """The issue's command, as a process (whose exit kills a save still in flight): the NaN at step 2 must leave
  checkpoint 1 whole, where an exit during its asynchronous save left only 1.orbax-checkpoint-tmp and
  'Event loop is closed' tracebacks."""
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--config=configs/default.py", f"--workdir={workdir}",
       "--noprogress", f"--config.data.data_dir={tfds_data_dir}", "--config.model.d_model=32",
       "--config.model.num_heads=2", "--config.data.num_train=512", "--config.data.num_validation=64",
       "--config.data.seq_len=24", "--config.data.vocab_size=32", "--config.data.num_pairs=4",
       "--config.data.num_queries=4", "--config.train.batch_size=8", "--config.train.steps=20",
       "--config.optimizer.learning_rate=1e9", "--config.optimizer.warmup_steps=0",
       "--config.train.checkpoint_every=1"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "at step 2;" in errors[0] and errors[0].endswith("checkpoint, step 1"), errors
  assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr
  assert os.listdir(workdir / "checkpoints") == ["1"]
  _, params, step = checkpoint.load_model(str(workdir))
  assert step == 1 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_resume_after_a_nan_with_a_lower_learning_rate(tfds_data_dir, tmp_path, monkeypatch, caplog):
  """A gradient that turns NaN at step 3 while the learning rate is above 1 (its loss still finite, its
  parameters NaN) stops the run at step 3 with checkpoint 2; rerun with a learning rate below 1, the run
  resumes there (the change logged) and completes."""

  def poisoned(state, batches, **kwargs):
    new_state, metrics = steps.train_steps(state, batches, **kwargs)
    row_steps = state.step + 1 + jnp.arange(metrics["train/loss"].shape[0])
    nan = (row_steps >= 3) & (kwargs["schedule"](state.step) > 1)
    params = jax.tree.map(lambda x: jnp.where(nan.any(), jnp.nan, x), new_state.params)
    return new_state.replace(params=params), {**metrics, "train/grad_norm": jnp.where(nan, jnp.nan, 1.0)}

  monkeypatch.setattr(build, "train_steps", poisoned)
  config = tiny_config(tfds_data_dir, {"train.steps": 5, "train.checkpoint_every": 1,
                                       "checkpoint.async_save": True, "optimizer.learning_rate": 2.0})
  with pytest.raises(NonFiniteLoss, match=r"at step 3; .*step 2$"):
    train_and_evaluate(config, str(tmp_path))
  config.optimizer.learning_rate = 1e-3
  with caplog.at_level(logging.INFO):
    summary = train_and_evaluate(config, str(tmp_path))
  assert summary["status"] == "completed" and summary["step"] == 5
  messages = [r.getMessage() for r in caplog.records]
  assert any(m.startswith("resumed from step 2 ") for m in messages), messages
  assert any("optimizer.learning_rate=0.001 (was 2.0)" in m for m in messages), messages
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["learning_rate"] == 1e-3


@pytest.mark.slow
def test_rerun_of_a_finished_run_rewrites_nothing(tfds_data_dir, copy):
  before = snapshot(copy)
  summary = train_and_evaluate(run_config(tfds_data_dir), copy)
  assert summary == json.loads(before[SUMMARY_FILE][0])
  assert snapshot(copy) == before


@pytest.mark.slow
def test_fewer_steps_than_the_run_reached_is_refused(tfds_data_dir, copy):
  before = snapshot(copy)
  with pytest.raises(ConfigError, match=r"^train.steps=3 is below step 4 of the checkpoint"):
    train_and_evaluate(run_config(tfds_data_dir, {"train.steps": 3}), copy)
  assert snapshot(copy) == before


@pytest.mark.slow
def test_a_kill_before_the_summary_gets_the_same_summary_on_rerun(tfds_data_dir, finished, copy):
  """A run killed after its last checkpoint, before summary.json: the rerun writes the summary it would have
  written (its final metrics and best evaluation) and no metric row twice."""
  os.remove(os.path.join(copy, SUMMARY_FILE))
  metrics_before = open(os.path.join(copy, "metrics.jsonl"), "rb").read()
  summary = train_and_evaluate(run_config(tfds_data_dir), copy)
  expected = json.loads(open(os.path.join(finished, SUMMARY_FILE)).read())
  assert (summary["status"], summary["step"]) == ("completed", STEPS)
  assert summary["final"] == expected["final"] and summary["best"] == expected["best"]
  assert open(os.path.join(copy, "metrics.jsonl"), "rb").read() == metrics_before


@pytest.mark.slow
def test_raising_steps_continues_and_keeps_the_best(tfds_data_dir, finished, copy):
  best_before = json.loads(open(os.path.join(finished, SUMMARY_FILE)).read())["best"]
  assert best_before["step"] == 2  # the highest eval/loss, as run_config's best_mode asks
  summary = train_and_evaluate(run_config(tfds_data_dir, {"train.steps": STEPS + 2}), copy)
  assert (summary["status"], summary["step"]) == ("completed", STEPS + 2)
  assert [m["step"] for m in read_metrics(copy) if "train/loss" in m] == list(range(1, STEPS + 3))
  evals = {m["step"]: m["eval/loss"] for m in read_metrics(copy) if "eval/loss" in m}
  assert summary["best"] == best_before and max(evals, key=evals.get) == 2


@pytest.mark.slow
def test_a_truncated_latest_checkpoint_falls_back_with_one_warning(tfds_data_dir, copy, caplog):
  truncate_state(copy, STEPS)
  with caplog.at_level(logging.INFO):
    summary = train_and_evaluate(run_config(tfds_data_dir, {"train.steps": STEPS + 2}), copy)
  warnings = restore_warnings(caplog)
  assert len(warnings) == 1 and "\n" not in warnings[0], warnings
  assert f"checkpoints/{STEPS} " in warnings[0] and "OUT_OF_RANGE" in warnings[0], warnings
  assert any(r.getMessage().startswith("resumed from step 2 ") for r in caplog.records)
  assert summary["step"] == STEPS + 2
  assert sorted(os.listdir(os.path.join(copy, "checkpoints"))) == ["2", str(STEPS), str(STEPS + 2)]
  assert [name.split(".")[0] for name in os.listdir(os.path.join(copy, checkpoint.UNREADABLE))] == [str(STEPS)]


@pytest.mark.slow
def test_no_readable_checkpoint_is_one_error_and_changes_nothing(tfds_data_dir, copy, caplog):
  for step in (2, STEPS):
    truncate_state(copy, step)
  before = snapshot(copy)
  with pytest.raises(CheckpointError) as error:
    train_and_evaluate(run_config(tfds_data_dir, {"train.steps": STEPS + 2}), copy)
  assert "\n" not in str(error.value) and "step 4: " in str(error.value) and "step 2: " in str(error.value)
  assert len(restore_warnings(caplog)) == 2
  assert snapshot(copy) == before


@pytest.mark.slow
def test_evaluate_and_load_model_fall_back_to_the_previous_checkpoint(copy, caplog):
  truncate_state(copy, STEPS)
  assert evaluate.evaluate(copy)["step"] == 2
  assert checkpoint.load_model(copy)[2] == 2
  warnings = restore_warnings(caplog)
  assert len(warnings) == 2 and all(f"checkpoints/{STEPS} " in w for w in warnings), warnings
  with pytest.raises(CheckpointError, match=rf"^checkpoint .*/{STEPS} does not restore: ValueError: OUT_OF_RANGE"):
    evaluate.evaluate(copy, step=STEPS)


COMMANDS = {"evaluate": [], "sample": ["--prompt=1 2", "--max_new_tokens=2"], "inspect": ["heads"]}


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_a_corrupt_step_asked_for_is_one_line_with_status_2(copy, command):
  truncate_state(copy, STEPS)
  result = subprocess.run([sys.executable, "-m", f"experiments.{command}", f"--workdir={copy}", f"--step={STEPS}",
                           *COMMANDS[command]], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  # Exactly the one line: orbax's unfinished reads used to print tracebacks as the interpreter shut down (in
  # about one run of `evaluate` in four).
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:") and f"/{STEPS} does not restore" in lines[0], \
      result.stderr[-3000:]


def test_a_metrics_line_torn_by_a_kill_costs_no_other_row(tmp_path):
  (tmp_path / METRICS_FILE).write_text('{"step": 1, "train/loss": 2.5}\n{"step": 2, "train/lo')
  writer = MetricWriter(str(tmp_path))
  writer.write(2, {"train/loss": 2.0})
  writer.close()
  assert read_metrics(str(tmp_path)) == [{"step": 1, "train/loss": 2.5}, {"step": 2, "train/loss": 2.0}]


class _Killed(BaseException):
  """Stands for a SIGKILL: raised where the kill lands, it unwinds past every handler, as nothing runs after one."""


def _tiny_state(step: int) -> steps.TrainState:
  return steps.TrainState(step=jnp.array(step, jnp.int32), params={"w": jnp.full((4,), float(step))},
                          opt_state={"m": jnp.zeros((4,))}, rng=jax.random.PRNGKey(0))


def test_a_kill_while_a_checkpoint_is_deleted_leaves_no_half_deleted_step_listed(tmp_path, monkeypatch, caplog):
  """keep=1: saving step 2 deletes step 1, and a kill lands once the first of its files is gone. Orbax deleted in
  place, so step 1 stayed listed with files missing; renamed into checkpoints/.deleting/ first, it is gone from
  the listing, and the next manager removes its remains in one warning line."""
  ck = base.get_config().checkpoint
  ck.keep, ck.keep_best, ck.async_save = 1, 0, False
  workdir = str(tmp_path)
  iterator = iter(grain.MapDataset.range(8).to_iter_dataset())
  manager = checkpoint.make_manager(workdir, ck)
  checkpoint.save(manager, _tiny_state(1), iterator)

  def killed_midway(path, *args, **kwargs):
    os.remove(next(os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names))
    raise _Killed

  monkeypatch.setattr(shutil, "rmtree", killed_midway)
  with pytest.raises(_Killed):
    checkpoint.save(manager, _tiny_state(2), iterator)
  monkeypatch.undo()
  folder = os.path.join(workdir, checkpoint.CHECKPOINTS)
  assert sorted(name for name in os.listdir(folder) if not name.startswith(".")) == ["2"]
  reader = checkpoint.make_manager(workdir, read_only=True)
  assert reader.all_steps() == [2]
  reader.close()
  with caplog.at_level(logging.WARNING):
    checkpoint.make_manager(workdir, ck).close()
  assert not os.path.exists(os.path.join(folder, checkpoint.DELETING, "1"))
  removed = [r.getMessage() for r in caplog.records if "what a kill left" in r.getMessage()]
  assert len(removed) == 1 and "step(s) 1 in" in removed[0], removed


@pytest.mark.slow
def test_evaluate_and_resume_pass_over_what_a_kill_during_a_deletion_left(tfds_data_dir, copy, caplog):
  """Checkpoint 2 as a kill during its deletion leaves it (renamed, some files gone): evaluation and the resume
  use step 4, the last complete one, with no restore warning; the resume removes the remains in one line."""
  folder = os.path.join(copy, checkpoint.CHECKPOINTS)
  os.makedirs(os.path.join(folder, checkpoint.DELETING))
  os.replace(os.path.join(folder, "2"), os.path.join(folder, checkpoint.DELETING, "2"))
  os.remove(os.path.join(folder, checkpoint.DELETING, "2", "state", "_METADATA"))
  with caplog.at_level(logging.INFO):
    assert evaluate.evaluate(copy)["step"] == STEPS
    summary = train_and_evaluate(run_config(tfds_data_dir, {"train.steps": STEPS + 2}), copy)
  assert summary["step"] == STEPS + 2 and not restore_warnings(caplog)
  messages = [r.getMessage() for r in caplog.records]
  assert any(m.startswith(f"resumed from step {STEPS} ") for m in messages), messages
  removed = [m for m in messages if "what a kill left" in m]
  assert len(removed) == 1 and "step(s) 2 in" in removed[0], removed
  assert os.listdir(os.path.join(folder, checkpoint.DELETING)) == []

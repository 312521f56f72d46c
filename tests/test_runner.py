"""End-to-end tests of the training runner on one CPU device: learning, resume, validation, lock, NaN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import base
from experiments import checkpoint, runner, validation
from experiments.metrics import read_metrics
from experiments.runner import ConfigError, NonFiniteLoss, WorkdirLocked, train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir: str, task: str = "associative_recall", steps: int = 12):
  """A model and data small enough to compile and run a dozen steps in seconds."""
  c = base.get_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads = 2, 32, 2
  c.data.task, c.data.vocab_size, c.data.seq_len = task, 32, 24
  c.data.num_pairs, c.data.num_queries = 4, 4
  c.data.num_train, c.data.num_validation, c.data.data_dir = 512, 64, data_dir
  c.train.steps, c.train.batch_size, c.train.log_every = steps, 16, 1
  c.train.eval_every, c.train.checkpoint_every = 0, 0
  c.optimizer.warmup_steps, c.optimizer.learning_rate = 2, 3e-3
  c.checkpoint.async_save = False
  return c


def losses(workdir: str) -> dict[int, float]:
  return {m["step"]: m["train/loss"] for m in read_metrics(workdir) if "train/loss" in m}


STEPS = 150


@pytest.mark.parametrize("task", ["associative_recall", "induction", "copy", "reverse"])
def test_loss_falls_on_every_task(task, tfds_data_dir, tmp_path):
  config = tiny_config(tfds_data_dir, task, steps=STEPS)
  config.train.eval_every, config.train.log_every = STEPS, 5
  config.optimizer.learning_rate = 1e-2
  summary = train_and_evaluate(config, str(tmp_path))
  by_step = losses(str(tmp_path))
  first = np.mean([by_step[s] for s in (5, 10)])
  last = np.mean([by_step[s] for s in (STEPS - 5, STEPS)])
  assert last < first - 0.3, (task, first, last)
  assert summary["status"] == "completed" and summary["step"] == STEPS
  for name in ("eval/loss", "eval/accuracy", "eval/perplexity", "perf/tokens_per_sec", "perf/mfu"):
    assert np.isfinite(summary["final"][name]), name
  assert os.path.isdir(tmp_path / "tensorboard") and os.listdir(tmp_path / "tensorboard")
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["vocab_size"] == 32 and saved["model"]["max_len"] == 24  # filled in from the data


def test_resume_is_bitwise_identical(tfds_data_dir, tmp_path):
  """N steps, stop, resume for N more == 2N steps straight, on CPU, to the last bit."""
  n = 6
  straight = tiny_config(tfds_data_dir, steps=2 * n)
  straight.optimizer.decay_steps = 2 * n  # the schedule must not depend on where the run stops
  straight.model.dropout_rate = 0.1  # dropout randomness must resume too
  train_and_evaluate(straight, str(tmp_path / "straight"))

  first_half = tiny_config(tfds_data_dir, steps=n)
  first_half.optimizer.decay_steps = 2 * n
  first_half.model.dropout_rate = 0.1
  train_and_evaluate(first_half, str(tmp_path / "resumed"))
  second_half = tiny_config(tfds_data_dir, steps=2 * n)
  second_half.optimizer.decay_steps = 2 * n
  second_half.model.dropout_rate = 0.1
  summary = train_and_evaluate(second_half, str(tmp_path / "resumed"))
  assert summary["step"] == 2 * n

  straight_losses, resumed_losses = losses(str(tmp_path / "straight")), losses(str(tmp_path / "resumed"))
  assert [straight_losses[s] for s in range(1, 2 * n + 1)] == [resumed_losses[s] for s in range(1, 2 * n + 1)]
  trainer = runner.Trainer(validation.resolve(straight), str(tmp_path / "straight"))
  a, _ = checkpoint.restore_params(str(tmp_path / "straight"), trainer.abstract_state.params)
  b, _ = checkpoint.restore_params(str(tmp_path / "resumed"), trainer.abstract_state.params)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_accumulation_matches_one_big_batch(tfds_data_dir, tmp_path):
  one = tiny_config(tfds_data_dir, steps=3)
  four = tiny_config(tfds_data_dir, steps=3)
  four.optimizer.accumulation_steps = 4
  train_and_evaluate(one, str(tmp_path / "one"))
  train_and_evaluate(four, str(tmp_path / "four"))
  np.testing.assert_allclose(list(losses(str(tmp_path / "one")).values()),
                             list(losses(str(tmp_path / "four")).values()), rtol=1e-5)


INVALID = [
    ("model.num_heads", 3, "model.num_heads"),
    ("model.mask", "diagonal", "model.mask"),
    ("model.value_mode", "low_rank", "model.value_mode"),
    ("model.max_len", 8, "data.seq_len"),
    ("model.vocab_size", 8, "model.vocab_size"),
    ("model.num_kv_heads", 3, "model.num_kv_heads"),
    ("model.window", 4, "model.window"),
    ("model.dropout_rate", 1.5, "model.dropout_rate"),
    ("optimizer.learning_rate", -1e-3, "optimizer.learning_rate"),
    ("optimizer.schedule", "exponential", "optimizer.schedule"),
    ("optimizer.accumulation_steps", 3, "optimizer.accumulation_steps"),
    ("optimizer.no_decay", "norms,weights", "optimizer.no_decay"),
    ("train.batch_size", 0, "train.batch_size"),
    ("train.steps", 0, "train.steps"),
    ("mesh.data", 3, "mesh"),
    ("mesh.tensor", 2, "mesh"),
    ("mesh.rules", "heads=model_axis", "mesh.rules"),
    ("data.task", "sorting", "data."),
    ("data.num_pairs", 100, "data."),
    ("checkpoint.best_mode", "lowest", "checkpoint.best_mode"),
    ("checkpoint.best_metric", "eval/bleu", "checkpoint.best_metric"),
    ("checkpoint.restore_from", "/nonexistent/run", "checkpoint.restore_from"),
]


@pytest.mark.parametrize("key,value,named", INVALID, ids=[f"{k}={v}" for k, v, _ in INVALID])
def test_invalid_config_names_the_key_and_touches_nothing(key, value, named, tmp_path):
  config = tiny_config(str(tmp_path / "data"))
  section, field = key.split(".")
  config[section][field] = value
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError) as error:
    train_and_evaluate(config, str(workdir))
  lines = str(error.value).splitlines()
  assert any(named in line for line in lines), lines
  assert not workdir.exists() and not (tmp_path / "data").exists()


def test_tensor_parallel_size_must_divide_heads(tmp_path):
  config = tiny_config(str(tmp_path))
  config.mesh.data, config.mesh.tensor = 1, 4
  errors = validation.validate(config, device_count=4, process_count=1)
  assert any(e.startswith("model.num_heads") and "tensor=4" in e for e in errors), errors


def test_cli_rejects_bad_config_with_status_2_and_keeps_the_workdir(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "precious.txt").write_text("results")
  for override in ("--config.optimizer.learning_rate=-1", "--config.optimizer.learning_rat=1"):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=configs/default.py", f"--workdir={workdir}", override],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "learning_rat" in result.stderr
  assert sorted(os.listdir(workdir)) == ["precious.txt"]


def test_resume_refuses_a_different_model(tfds_data_dir, tmp_path):
  train_and_evaluate(tiny_config(tfds_data_dir, steps=2), str(tmp_path))
  changed = tiny_config(tfds_data_dir, steps=4)
  changed.model.num_heads = 4
  with pytest.raises(ConfigError, match="model.num_heads=4 differs"):
    train_and_evaluate(changed, str(tmp_path))


def test_workdir_lock_refuses_a_second_run(tfds_data_dir, tmp_path):
  with runner.workdir_lock(str(tmp_path)):
    with pytest.raises(WorkdirLocked, match="in use by a live run"):
      train_and_evaluate(tiny_config(tfds_data_dir, steps=2), str(tmp_path))
  train_and_evaluate(tiny_config(tfds_data_dir, steps=2), str(tmp_path))  # released: runs


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tfds_data_dir, tmp_path):
  config = tiny_config(tfds_data_dir, steps=30)
  config.train.checkpoint_every, config.train.log_every = 1, 10
  config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e30, 0
  with pytest.raises(NonFiniteLoss, match=r"at step \d+"):
    train_and_evaluate(config, str(tmp_path))
  manager = checkpoint.make_manager(str(tmp_path), read_only=True)
  assert manager.all_steps(), "the good checkpoints before the failure were kept"
  trainer = runner.Trainer(validation.resolve(config), str(tmp_path))
  for step in manager.all_steps():
    params, _ = checkpoint.restore_params(str(tmp_path), trainer.abstract_state.params, step)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params)), step


def test_resume_with_a_different_optimizer_state_is_a_clear_error(tfds_data_dir, tmp_path):
  train_and_evaluate(tiny_config(tfds_data_dir, steps=2), str(tmp_path))
  changed = tiny_config(tfds_data_dir, steps=4)
  changed.optimizer.grad_clip = 0.0
  with pytest.raises(ConfigError, match="does not fit this config's train state"):
    train_and_evaluate(changed, str(tmp_path))


def test_sigterm_saves_and_the_run_resumes(tfds_data_dir, tmp_path):
  workdir = tmp_path / "run"
  args = [sys.executable, "-m", "experiments.train", "--config=configs/default.py", f"--workdir={workdir}",
          "--noprogress", f"--config.data.data_dir={tfds_data_dir}", "--config.train.steps=100000",
          "--config.optimizer.warmup_steps=2", "--config.train.log_every=1", "--config.model.d_model=32",
          "--config.data.num_train=512", "--config.data.num_validation=64", "--config.data.seq_len=24",
          "--config.data.vocab_size=32", "--config.data.num_pairs=4", "--config.data.num_queries=4",
          "--config.train.batch_size=8", "--config.train.eval_every=0", "--config.eval.max_batches=1"]
  process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    start = time.time()
    while time.time() - start < 180 and len(losses(str(workdir))) < 3:
      time.sleep(0.5)
    assert len(losses(str(workdir))) >= 3, "training did not start"
    process.terminate()  # SIGTERM
    _, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 0, stderr[-2000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"].startswith("stopped by SIGTERM at step")
  saved = checkpoint.make_manager(str(workdir), read_only=True).latest_step()
  assert saved == summary["step"]
  resume_args = [f"--config.train.steps={saved + 2}" if a.startswith("--config.train.steps=") else a for a in args]
  resumed = subprocess.run(resume_args, cwd=REPO,
                           capture_output=True, text=True, timeout=180, check=False)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert json.loads((workdir / "summary.json").read_text())["step"] == saved + 2


@pytest.mark.parametrize("path", sorted(p for p in os.listdir(os.path.join(REPO, "configs"))
                                        if p.endswith(".py") and p not in ("__init__.py",)))
def test_every_config_file_validates(path):
  import importlib

  module = importlib.import_module(f"configs.{path[:-3]}")
  for variant in getattr(module, "VARIANTS", (None,)):
    config = module.get_config() if variant is None else module.get_config(variant)
    errors = validation.validate(config, device_count=1, process_count=1)
    assert not errors, (path, variant, errors)

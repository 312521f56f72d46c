"""End-to-end tests of the training runner on one CPU device: learning, resume, validation, lock, NaN."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs import base
from experiments import build, checkpoint, host, runner, validation
from experiments.files import read_metrics
from experiments.metrics import NonFiniteLoss
from experiments.runner import train_and_evaluate
from experiments.validation import ConfigError
from experiments.workdir import WorkdirLocked, workdir_lock
from tests.helpers import config_files
from tests.helpers.metrics import losses_by_step
from tests.helpers.tiny_config import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


STEPS = 150


@pytest.mark.slow
@pytest.mark.parametrize("task", ["associative_recall", "induction", "copy", "reverse"])
def test_loss_falls_on_every_task(task, tfds_data_dir, tmp_path):
  config = tiny_config(tfds_data_dir, {"data.task": task, "train.steps": STEPS})
  config.train.eval_every, config.train.log_every = STEPS, 5
  config.optimizer.learning_rate = 1e-2
  summary = train_and_evaluate(config, str(tmp_path))
  by_step = losses_by_step(str(tmp_path))
  first = np.mean([by_step[s] for s in (5, 10)])
  last = np.mean([by_step[s] for s in (STEPS - 5, STEPS)])
  assert last < first - 0.3, (task, first, last)
  assert summary["status"] == "completed" and summary["step"] == STEPS
  for name in ("eval/loss", "eval/accuracy", "eval/perplexity", "perf/tokens_per_sec", "perf/mfu"):
    assert np.isfinite(summary["final"][name]), name
  assert os.path.isdir(tmp_path / "tensorboard") and os.listdir(tmp_path / "tensorboard")
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["vocab_size"] == 32 and saved["model"]["max_len"] == 24  # filled in from the data


@pytest.mark.slow
@pytest.mark.parametrize("log_every, steps_per_call", [(1, 1), (6, 3)])
def test_resume_is_bitwise_identical(tfds_data_dir, tmp_path, log_every, steps_per_call):
  """N steps, stop, resume for N more == 2N steps straight, on CPU, to the last bit (also with calls of
  several steps, which must break at the same steps in both runs)."""
  n = 6

  def config(steps):
    c = tiny_config(tfds_data_dir, {"train.steps": steps})
    c.optimizer.decay_steps = 2 * n  # the schedule must not depend on where the run stops
    c.model.dropout_rate = 0.1  # dropout randomness must resume too
    c.train.log_every, c.train.steps_per_call = log_every, steps_per_call
    return c

  straight = config(2 * n)
  train_and_evaluate(straight, str(tmp_path / "straight"))
  train_and_evaluate(config(n), str(tmp_path / "resumed"))
  summary = train_and_evaluate(config(2 * n), str(tmp_path / "resumed"))
  assert summary["step"] == 2 * n

  straight_losses = losses_by_step(str(tmp_path / "straight"))
  resumed_losses = losses_by_step(str(tmp_path / "resumed"))
  assert sorted(straight_losses) == list(range(log_every, 2 * n + 1, log_every))
  assert straight_losses == resumed_losses
  sharded = build.ShardedModel(validation.resolve(straight))
  a, _ = checkpoint.restore_params(str(tmp_path / "straight"), sharded.abstract_params)
  b, _ = checkpoint.restore_params(str(tmp_path / "resumed"), sharded.abstract_params)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_steps_per_call_changes_no_step(tfds_data_dir, tmp_path):
  """One call of 5 steps trains the same steps as 5 calls of 1: the same losses and parameters."""
  runs = {}
  for steps_per_call in (1, 5):
    c = tiny_config(tfds_data_dir, {"train.steps": 5})
    c.train.log_every, c.train.steps_per_call = 5, steps_per_call
    c.model.dropout_rate = 0.1
    workdir = str(tmp_path / str(steps_per_call))
    train_and_evaluate(c, workdir)
    sharded = build.ShardedModel(validation.resolve(c))
    runs[steps_per_call] = (losses_by_step(workdir), checkpoint.restore_params(workdir, sharded.abstract_params)[0])
  np.testing.assert_allclose(runs[1][0][5], runs[5][0][5], rtol=1e-6)
  for x, y in zip(jax.tree.leaves(runs[1][1]), jax.tree.leaves(runs[5][1])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_heap_guard_changes_no_step(tfds_data_dir, tmp_path, monkeypatch):
  """With the heap guard of big steps switched on (and trimming whenever the process grows), the run's
  losses and parameters are bitwise those of a run without it."""
  checks = []
  original_check = host.HeapGuard.check

  def counted_check(guard):
    checks.append(guard.slack_bytes)
    return original_check(guard)

  runs = {}
  for guarded in (False, True):
    c = tiny_config(tfds_data_dir, {"train.steps": 6})
    c.train.log_every, c.train.steps_per_call = 2, 2
    c.model.dropout_rate = 0.1
    if guarded:
      monkeypatch.setattr(host, "ONE_HEAP_ABOVE_BYTES", -1)
      monkeypatch.setattr(host.HeapGuard, "check", counted_check)
      monkeypatch.setattr(host, "estimated_step_temporaries", lambda config: 0)  # trim at any growth
    workdir = str(tmp_path / str(guarded))
    train_and_evaluate(c, workdir)
    sharded = build.ShardedModel(validation.resolve(c))
    runs[guarded] = (losses_by_step(workdir), checkpoint.restore_params(workdir, sharded.abstract_params)[0])
  assert len(checks) == 2  # the first of three calls settles, the other two check
  assert runs[True][0] == runs[False][0]
  for x, y in zip(jax.tree.leaves(runs[True][1]), jax.tree.leaves(runs[False][1])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@given(steps=st.integers(1, 60), per_call=st.integers(1, 12), log=st.integers(1, 20), evaluate=st.integers(0, 20),
       save=st.integers(0, 20), start=st.integers(0, 60))
@settings(max_examples=200, deadline=None)
def test_calls_end_at_every_log_eval_and_checkpoint_step(steps, per_call, log, evaluate, save, start):
  train = base.get_config().train
  train.steps, train.steps_per_call, train.log_every, train.eval_every, train.checkpoint_every = (
      steps, per_call, log, evaluate, save)
  ends, step = [], min(start, steps - 1)
  while step < steps:
    count = runner.steps_in_call(train, step)
    assert 1 <= count <= per_call
    step += count
    ends.append(step)
  due = {s for s in range(min(start, steps - 1) + 1, steps + 1)
         if s % log == 0 or (evaluate and s % evaluate == 0) or (save and s % save == 0)}
  assert due | {steps} <= set(ends)


@pytest.mark.slow
def test_accumulation_matches_one_big_batch(tfds_data_dir, tmp_path):
  """4 micro-batches of 4 take the steps of one batch of 16: the same parameters after 4 steps, and gradients."""
  runs = {}
  for accumulation in (1, 4):
    c = tiny_config(tfds_data_dir, {"train.steps": 4, "optimizer.accumulation_steps": accumulation})
    # Adam divides the gradient's scale away (eps aside) and clipping caps it: without both, a gradient k times
    # too large (micro-batch means summed, not averaged) would take the same steps.
    c.optimizer.grad_clip, c.optimizer.eps, c.optimizer.learning_rate = 0.0, 1e-3, 1e-2
    workdir = str(tmp_path / str(accumulation))
    train_and_evaluate(c, workdir)
    sharded = build.ShardedModel(validation.resolve(c))
    norms = [m["train/grad_norm"] for m in read_metrics(workdir) if "train/grad_norm" in m]
    runs[accumulation] = (norms, checkpoint.restore_params(workdir, sharded.abstract_params)[0])
  np.testing.assert_allclose(runs[4][0], runs[1][0], rtol=1e-5)
  for x, y in zip(jax.tree.leaves(runs[1][1]), jax.tree.leaves(runs[4][1])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


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
    ("train.steps_per_call", 0, "train.steps_per_call"),
    ("mesh.data", 3, "mesh"),
    ("mesh.tensor", 2, "mesh"),
    ("mesh.rules", "heads=model_axis", "mesh.rules"),
    ("data.task", "sorting", "data."),
    ("data.num_pairs", 100, "data."),
    ("checkpoint.best_mode", "lowest", "checkpoint.best_mode"),
    ("checkpoint.best_metric", "eval/bleu", "checkpoint.best_metric"),
    ("checkpoint.best_metric", "eval/bits_per_byte", "checkpoint.best_metric"),  # text only: a task has none
    ("checkpoint.restore_from", "/nonexistent/run", "checkpoint.restore_from"),
]


@pytest.mark.parametrize("key,value,named", INVALID, ids=[f"{k}={v}" for k, v, _ in INVALID])
def test_invalid_config_names_the_key_and_touches_nothing(key, value, named, tmp_path):
  config = tiny_config(str(tmp_path / "data"), {"train.steps": 12})
  section, field = key.split(".")
  config[section][field] = value
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError) as error:
    train_and_evaluate(config, str(workdir))
  lines = str(error.value).splitlines()
  assert any(named in line for line in lines), lines
  assert not workdir.exists() and not (tmp_path / "data").exists()


def test_tensor_parallel_size_must_divide_heads(tmp_path):
  config = tiny_config(str(tmp_path), {"train.steps": 12})
  config.mesh.data, config.mesh.tensor = 1, 4
  errors = validation.validate(config, device_count=4, process_count=1)
  assert any(e.startswith("model.num_heads") and "tensor=4" in e for e in errors), errors


@pytest.mark.slow  # runs the train command (a JAX start, ~3 s)
def test_cli_rejects_bad_config_with_status_2_and_keeps_the_workdir(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "precious.txt").write_text("results")
  for override in ("--config.optimizer.learning_rate=-1", "--config.optimizer.learning_rat=1"):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=configs/default.py", f"--workdir={workdir}", override],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "learning_rat" in result.stderr and "Traceback" not in result.stderr
  assert sorted(os.listdir(workdir)) == ["precious.txt"]


@pytest.mark.slow
def test_resume_refuses_a_different_model(tfds_data_dir, tmp_path):
  train_and_evaluate(tiny_config(tfds_data_dir, {"train.steps": 2}), str(tmp_path))
  changed = tiny_config(tfds_data_dir, {"train.steps": 4})
  changed.model.num_heads = 4
  with pytest.raises(ConfigError, match="model.num_heads=4 differs"):
    train_and_evaluate(changed, str(tmp_path))


@pytest.mark.slow
def test_workdir_lock_refuses_a_second_run(tfds_data_dir, tmp_path):
  with workdir_lock(str(tmp_path), jax.process_index()):
    with pytest.raises(WorkdirLocked, match="in use by a live run"):
      train_and_evaluate(tiny_config(tfds_data_dir, {"train.steps": 2}), str(tmp_path))
  train_and_evaluate(tiny_config(tfds_data_dir, {"train.steps": 2}), str(tmp_path))  # released: runs


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tfds_data_dir, tmp_path):
  config = tiny_config(tfds_data_dir, {"train.steps": 30})
  config.train.checkpoint_every, config.train.log_every = 1, 10
  config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e30, 0
  with pytest.raises(NonFiniteLoss, match=r"at step \d+"):
    train_and_evaluate(config, str(tmp_path))
  manager = checkpoint.make_manager(str(tmp_path), read_only=True)
  assert manager.all_steps(), "the good checkpoints before the failure were kept"
  sharded = build.ShardedModel(validation.resolve(config))
  for step in manager.all_steps():
    params, _ = checkpoint.restore_params(str(tmp_path), sharded.abstract_params, step)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params)), step


@pytest.mark.slow
def test_resume_with_a_different_optimizer_state_is_a_clear_error(tfds_data_dir, tmp_path):
  train_and_evaluate(tiny_config(tfds_data_dir, {"train.steps": 2}), str(tmp_path))
  changed = tiny_config(tfds_data_dir, {"train.steps": 4})
  changed.optimizer.grad_clip = 0.0
  with pytest.raises(ConfigError, match="does not fit this config's train state"):
    train_and_evaluate(changed, str(tmp_path))


@pytest.mark.slow
def test_sigterm_saves_and_the_run_resumes(tfds_data_dir, tmp_path):
  workdir = tmp_path / "run"
  args = [sys.executable, "-m", "experiments.train", "--config=configs/default.py", f"--workdir={workdir}",
          "--noprogress", f"--config.data.data_dir={tfds_data_dir}", "--config.train.steps=100000",
          "--config.optimizer.warmup_steps=2", "--config.train.log_every=1", "--config.model.d_model=32",
          "--config.data.num_train=512", "--config.data.num_validation=64", "--config.data.seq_len=24",
          "--config.data.vocab_size=32", "--config.data.num_pairs=4", "--config.data.num_queries=4",
          "--config.train.batch_size=8", "--config.train.eval_every=0", "--config.eval.max_batches=1",
          "--config.inspect.default_probe=False"]
  process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    start = time.time()
    while time.time() - start < 180 and len(losses_by_step(str(workdir))) < 3:
      time.sleep(0.5)
    assert len(losses_by_step(str(workdir))) >= 3, "training did not start"
    process.terminate()  # SIGTERM
    _, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 0, stderr[-2000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == f"stopped by SIGTERM at step {summary['step']}"
  saved = checkpoint.make_manager(str(workdir), read_only=True).latest_step()
  assert saved == summary["step"]
  # Resumed with an evaluation after each of its two steps: what the terminal shows of a run that works.
  resume_args = [f"--config.train.steps={saved + 2}" if a.startswith("--config.train.steps=") else
                 "--config.train.eval_every=1" if a.startswith("--config.train.eval_every=") else a for a in args]
  resumed = subprocess.run(resume_args, cwd=REPO,
                           capture_output=True, text=True, timeout=180, check=False)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert json.loads((workdir / "summary.json").read_text())["step"] == saved + 2
  assert_quiet_terminal(stderr + resumed.stdout + resumed.stderr)
  logged = {row["step"]: row["eval/loss"] for row in read_metrics(str(workdir)) if "eval/loss" in row}
  lines = resumed.stdout.splitlines()
  evals = [line for line in lines if line.startswith("step ")]
  assert len(evals) == 2 and evals == lines[:2], resumed.stdout  # one per evaluation, before the summary
  for step, line in zip((saved + 1, saved + 2), evals):
    assert re.match(rf"step +{step}/{saved + 2}  loss {logged[step]:.4f}  accuracy \d\.\d{{4}} +[\d,]+ tok/s  "
                    rf"\d+:\d\d:\d\d$", line), (line, logged)
  assert len({line.index(" tok/s") for line in evals}) == 1, evals  # aligned
  summary = lines[2:]
  assert summary[0] == f"completed at step {saved + 2}", summary
  assert summary[1].startswith(f"final  loss {logged[saved + 2]:.4f}"), summary
  assert any(line.startswith(f"files in {workdir}: summary.json") for line in summary), summary
  assert "{" not in resumed.stdout  # the JSON is summary.json's alone


def assert_quiet_terminal(printed: str) -> None:
  """No library's INFO record in what a command printed: neither absl's (`I1201 13:18:05.326 ...`) nor logging's."""
  noisy = [line for line in printed.splitlines() if re.match(r"I\d{4} ", line) or "INFO:" in line]
  assert not noisy, noisy[:5]


@pytest.mark.parametrize("name", config_files.names())
def test_every_config_file_validates(name):
  for variant in config_files.variants(name):
    config = config_files.load(name, variant)
    errors = validation.validate(config, device_count=1, process_count=1)
    assert not errors, (name, variant, errors)

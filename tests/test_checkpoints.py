"""One shared tiny run with asynchronous checkpoints: which checkpoints keep and keep_best leave, bitwise resume
from a mid-run checkpoint, restore_from, the data-config refusal, SIGINT, and MFU from the same run."""

from __future__ import annotations

import os
import shutil
import signal

import jax
import numpy as np
import pytest

from configs import base
from experiments import build, checkpoint, host, runner, validation
from experiments.files import read_metrics
from experiments.runner import train_and_evaluate
from experiments.validation import ConfigError
from tests.helpers.checkpoints import assert_same_state
from tests.helpers.metrics import losses_by_step
from tests.helpers.tiny_config import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# One run shared by the tests of what a finished run leaves: 12 steps, evaluated and saved every 2 with the default
# (asynchronous) saves, dropout on; the last 2 checkpoints kept and the best 1 by the highest eval loss ("max": so
# that the best is an early step the last two do not already keep).
REFERENCE_STEPS = 12


def reference_config(data_dir: str):
  c = tiny_config(data_dir, {"train.steps": REFERENCE_STEPS, "train.eval_every": 2, "train.checkpoint_every": 2,
                             "eval.max_batches": 1, "model.dropout_rate": 0.1, "checkpoint.keep": 2,
                             "checkpoint.keep_best": 1, "checkpoint.best_metric": "eval/loss",
                             "checkpoint.best_mode": "max"})
  c.checkpoint.async_save = base.get_config().checkpoint.async_save
  assert c.checkpoint.async_save  # the default this run stands for
  return c


@pytest.fixture(scope="module")
def reference_run(tfds_data_dir, tmp_path_factory) -> tuple[str, dict]:
  workdir = str(tmp_path_factory.mktemp("reference"))
  return workdir, train_and_evaluate(reference_config(tfds_data_dir), workdir)


@pytest.mark.slow
def test_keep_and_keep_best_leave_the_last_and_the_best_checkpoints(reference_run):
  workdir, _ = reference_run
  evals = {m["step"]: m["eval/loss"] for m in read_metrics(workdir) if "eval/loss" in m}
  assert sorted(evals) == list(range(2, REFERENCE_STEPS + 1, 2))
  best = max(evals, key=evals.get)
  assert best < REFERENCE_STEPS - 2, ("the best checkpoint should be one the last two do not keep", evals)
  kept = checkpoint.make_manager(workdir, read_only=True).all_steps()
  assert sorted(kept) == [best, REFERENCE_STEPS - 2, REFERENCE_STEPS]


@pytest.mark.slow
def test_resume_from_a_mid_run_asynchronous_checkpoint_is_bitwise(reference_run, tfds_data_dir, tmp_path):
  """A copy of the run holding only an early checkpoint trains on to the same state, data position and losses."""
  workdir, _ = reference_run
  start = min(checkpoint.make_manager(workdir, read_only=True).all_steps())
  assert start < REFERENCE_STEPS - 2
  resumed = tmp_path / "resumed"
  shutil.copytree(os.path.join(workdir, checkpoint.CHECKPOINTS, str(start)),
                  resumed / checkpoint.CHECKPOINTS / str(start))
  shutil.copy(os.path.join(workdir, "config.json"), resumed / "config.json")
  summary = train_and_evaluate(reference_config(tfds_data_dir), str(resumed))
  assert summary["step"] == REFERENCE_STEPS
  assert losses_by_step(str(resumed)) == {s: loss for s, loss in losses_by_step(workdir).items() if s > start}
  assert_same_state(workdir, str(resumed), REFERENCE_STEPS)


@pytest.mark.slow
def test_restore_from_starts_from_the_other_runs_params_with_a_fresh_optimizer(reference_run, tfds_data_dir,
                                                                              tmp_path):
  workdir, _ = reference_run
  config = tiny_config(tfds_data_dir, {"train.steps": 4, "checkpoint.restore_from": workdir})
  data = build.load_data(config)
  config = validation.resolve(config, data.vocab_size)
  sharded = build.ShardedModel(config)
  training = build.Training(config, sharded, data)
  start_state = runner._start_state  # pylint: disable=protected-access  (what _run does before its first step)
  state, unreadable = start_state(config, str(tmp_path), training, training.new_iterator())
  assert unreadable == []
  other, step = checkpoint.restore_params(workdir, sharded.abstract_params)
  assert step == REFERENCE_STEPS and int(state.step) == 0
  for x, y in zip(jax.tree.leaves(other), jax.tree.leaves(state.params), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  fresh = training.initial_state()
  assert not all(np.array_equal(np.asarray(x), np.asarray(y))
                 for x, y in zip(jax.tree.leaves(fresh.params), jax.tree.leaves(state.params)))
  for x, y in zip(jax.tree.leaves(fresh.opt_state), jax.tree.leaves(state.opt_state), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert all(not np.asarray(x).any() for x in jax.tree.leaves(state.opt_state))  # Adam's moments and count at 0


@pytest.mark.slow
def test_resume_refuses_a_different_data_config_and_touches_nothing(reference_run, tfds_data_dir):
  workdir, _ = reference_run
  before = (sorted(os.listdir(workdir)), open(os.path.join(workdir, "metrics.jsonl"), "rb").read(),
            checkpoint.make_manager(workdir, read_only=True).all_steps())
  changed = reference_config(tfds_data_dir)
  changed.data.seed = 1
  with pytest.raises(ConfigError, match=r"^data\.seed=1 differs from 0 saved in .*use a new --workdir"):
    train_and_evaluate(changed, workdir)
  after = (sorted(os.listdir(workdir)), open(os.path.join(workdir, "metrics.jsonl"), "rb").read(),
           checkpoint.make_manager(workdir, read_only=True).all_steps())
  assert after == before


@pytest.mark.slow
def test_sigint_saves_between_checkpoints_and_the_run_resumes_bitwise(reference_run, tfds_data_dir, tmp_path,
                                                                      monkeypatch):
  """Ctrl-C at step 3 (checkpoints every 2) saves step 3 and exits; rerun, it ends as the run that never stopped."""
  workdir, _ = reference_run
  reached = host.Preemption.reached

  def interrupt_at_step_3(preemption, step):
    if step == 3:
      os.kill(os.getpid(), signal.SIGINT)  # handled before the next bytecode, as a Ctrl-C would be
    return reached(preemption, step)

  with monkeypatch.context() as patch:
    patch.setattr(host.Preemption, "reached", interrupt_at_step_3)
    try:
      stopped = train_and_evaluate(reference_config(tfds_data_dir), str(tmp_path))
    except KeyboardInterrupt:
      pytest.fail("SIGINT reached Python's default handler: the run did not catch it")
  assert stopped["status"] == "stopped by SIGINT at step 3" and stopped["step"] == 3
  assert checkpoint.make_manager(str(tmp_path), read_only=True).latest_step() == 3
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the run gave Ctrl-C back
  assert train_and_evaluate(reference_config(tfds_data_dir), str(tmp_path))["step"] == REFERENCE_STEPS
  assert losses_by_step(str(tmp_path)) == losses_by_step(workdir)
  assert_same_state(workdir, str(tmp_path), REFERENCE_STEPS)


@pytest.mark.slow
def test_mfu_is_the_flops_per_token_times_tokens_per_second_over_the_peak(reference_run):
  workdir, summary = reference_run
  # PaLM's 6 W + 12 N H K T: W = 2 blocks of 4 D^2 + 2 D F (D = 32, F = 128) plus the tied unembedding V D (V = 32).
  assert summary["flops_per_token"] == 6 * (2 * (4 * 32 * 32 + 2 * 32 * 128) + 32 * 32) + 12 * 2 * 2 * 16 * 24
  assert summary["peak_flops"] > 0
  rows = [m for m in read_metrics(workdir) if "perf/mfu" in m]
  assert [m["step"] for m in rows] == list(range(1, REFERENCE_STEPS + 1))
  for m in rows:
    assert m["perf/mfu"] == pytest.approx(summary["flops_per_token"] * m["perf/tokens_per_sec"]
                                          / summary["peak_flops"], rel=1e-9)
    assert m["perf/tokens_per_sec"] * m["perf/step_time"] == pytest.approx(16 * 24, rel=1e-6)  # B T per step
  assert summary["final"]["perf/mfu"] == rows[-1]["perf/mfu"]

"""train.stop_when and on_evaluation: a run ends at the first evaluation that meets its target (or that the hook
prunes), checkpointed, and says so in its summary; a rerun of a run that reached its target does nothing; bad
targets are one line naming the key.

The parse and validation tests train nothing; the end-to-end ones (slow) train a few steps of the tiny run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from experiments import checkpoint, validation
from experiments.files import METRICS_FILE, SUMMARY_FILE, read_metrics
from experiments.runner import train_and_evaluate
from experiments.steps import summarize_eval
from experiments.targets import OPERATORS, Target, parse_target
from tests.helpers.metrics import written_steps
from tests.helpers.tiny_config import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A target every evaluation meets, and one none can (accuracy is at most 1).
ALWAYS, NEVER = "eval/loss<=1e9", "eval/accuracy>=2"


def config_of(task: str, stop_when: str = "", eval_every: int = 2):
  """The tiny run on a task or on text (the char tokenizer), validated only: its data are never prepared."""
  config = tiny_config("/nonexistent/data", {"train.steps": 6, "train.eval_every": eval_every,
                                             "train.stop_when": stop_when, "data.task": task})
  if task == "text":
    config.data.vocab_size = 0
  return config


@pytest.mark.parametrize("text, expected, canonical", [
    ("eval/accuracy>=0.99", Target("eval/accuracy", ">=", 0.99), "eval/accuracy>=0.99"),
    ("  eval/loss <=  1.5 ", Target("eval/loss", "<=", 1.5), "eval/loss<=1.5"),
    ("eval/loss<2", Target("eval/loss", "<", 2.0), "eval/loss<2"),
    ("eval/sequence_accuracy > 5e-1", Target("eval/sequence_accuracy", ">", 0.5), "eval/sequence_accuracy>0.5"),
    ("eval/loss<=1e9", Target("eval/loss", "<=", 1e9), "eval/loss<=1000000000"),
    ("eval/loss>=-3", Target("eval/loss", ">=", -3.0), "eval/loss>=-3"),
])
def test_a_target_parses_with_or_without_spaces_to_its_canonical_text(text, expected, canonical):
  assert parse_target(text) == expected
  assert str(expected) == canonical


@pytest.mark.parametrize("text", ["", "   "])
def test_no_target(text):
  assert parse_target(text) is None


@given(operator=st.sampled_from(sorted(OPERATORS)), threshold=st.floats(allow_nan=False, allow_infinity=False))
def test_the_canonical_text_reads_back_as_the_same_target(operator, threshold):
  target = Target("eval/loss", operator, threshold)
  assert parse_target(str(target)) == target


# Each operator at a value below, at and above its threshold of 0.5.
MET = {">=": (False, True, True), "<=": (True, True, False), ">": (False, False, True), "<": (True, False, False)}


@pytest.mark.parametrize("operator", sorted(MET))
def test_met_compares_the_metric_as_the_operator_says(operator):
  target = parse_target(f"eval/accuracy{operator}0.5")
  assert tuple(target.met({"eval/accuracy": value, "eval/loss": 0.5}) for value in (0.25, 0.5, 0.75)) == MET[operator]
  assert not target.met({"eval/loss": 0.5}), "a row without the target's metric meets nothing"


def test_the_eval_metrics_validation_allows_are_those_the_evaluation_computes():
  sums = {"loss": 6.0, "correct": 2.0, "weight": 4.0, "sequences": 2.0, "sequences_correct": 1.0}
  task = config_of("associative_recall").data
  text = config_of("text").data
  assert set(validation.eval_metrics(task)) == set(summarize_eval(sums))
  assert set(validation.eval_metrics(text)) == set(summarize_eval({**sums, "target_chars": 9.0,
                                                                    "target_bytes": 12.0}))


BAD = [
    ("eval/bleu>=1", "associative_recall", ["'eval/bleu' is not an eval metric", "eval/loss, eval/accuracy"]),
    ("train/loss<=1", "associative_recall", ["'train/loss' is not an eval metric"]),
    ("eval/bits_per_byte<=1", "associative_recall", ["text only", "eval/perplexity"]),
    ("eval/accuracy=>0.99", "associative_recall", ["operator '=>' is unknown", ">=, <=, >, <"]),
    ("eval/accuracy==0.99", "associative_recall", ["operator '==' is unknown"]),
    ("eval/accuracy>=high", "associative_recall", ["'high' is not a number"]),
    ("eval/loss<=inf", "associative_recall", ["finite"]),
    ("eval/loss<=nan", "text", ["finite"]),
    ("eval/accuracy", "associative_recall", ["METRIC OP NUMBER"]),
    (">=0.99", "associative_recall", ["METRIC OP NUMBER"]),
]


@pytest.mark.parametrize("text, task, named", BAD, ids=[text for text, _, _ in BAD])
def test_a_bad_target_is_one_line_naming_the_key(text, task, named):
  errors = validation.validate(config_of(task, text), device_count=1, process_count=1)
  assert len(errors) == 1 and errors[0].startswith(f"train.stop_when={text!r}"), errors
  for part in named:
    assert part in errors[0], (part, errors[0])


def test_a_text_metric_is_a_target_of_a_text_run():
  assert not validation.validate(config_of("text", "eval/bits_per_byte <= 1.2"), device_count=1, process_count=1)


def test_a_target_without_evaluations_during_the_run_names_both_keys():
  errors = validation.validate(config_of("associative_recall", "eval/accuracy>=0.99", eval_every=0),
                               device_count=1, process_count=1)
  assert len(errors) == 1 and "train.stop_when" in errors[0] and "train.eval_every=0" in errors[0], errors


def saved_steps(workdir) -> list[int]:
  return checkpoint.make_manager(str(workdir), read_only=True).all_steps()


def summary_of(workdir) -> dict:
  return json.loads((workdir / SUMMARY_FILE).read_text())


@pytest.mark.slow
def test_a_run_ends_at_the_first_evaluation_that_meets_its_target_and_a_rerun_does_nothing(tfds_data_dir, tmp_path):
  config = tiny_config(tfds_data_dir, {"train.steps": 6, "train.eval_every": 2, "train.stop_when": ALWAYS})
  summary = train_and_evaluate(config, str(tmp_path))
  assert (summary["status"], summary["step"], summary["steps_to_target"]) == ("reached_target", 2, 2)
  assert summary["stop_when"] == "eval/loss<=1000000000"
  assert summary_of(tmp_path) == summary
  assert max(row["step"] for row in read_metrics(str(tmp_path))) == 2
  assert saved_steps(tmp_path) == [2]
  assert summary["final"]["eval/loss"] == read_metrics(str(tmp_path))[-1]["eval/loss"]

  files = [tmp_path / METRICS_FILE, tmp_path / SUMMARY_FILE]
  before = [os.stat(f).st_mtime_ns for f in files]
  for steps in (6, 10):  # raising train.steps does not revive it
    config.train.steps = steps
    assert train_and_evaluate(config, str(tmp_path)) == summary
  assert [os.stat(f).st_mtime_ns for f in files] == before
  assert saved_steps(tmp_path) == [2]

  # Stopped after the evaluation that met the target, before its summary: the rerun writes that summary and
  # trains no step.
  os.remove(tmp_path / SUMMARY_FILE)
  trained = written_steps(str(tmp_path))
  resumed = train_and_evaluate(config, str(tmp_path))
  assert (resumed["status"], resumed["step"], resumed["steps_to_target"]) == ("reached_target", 2, 2)
  assert written_steps(str(tmp_path)) == trained
  # Its final metrics: the logged train row of step 2 and an evaluation of the checkpoint of step 2.
  assert set(resumed["final"]) == set(summary["final"])
  assert resumed["final"]["train/loss"] == summary["final"]["train/loss"]
  assert math.isclose(resumed["final"]["eval/loss"], summary["final"]["eval/loss"], rel_tol=1e-6)


@pytest.mark.slow
def test_the_hook_prunes_a_run_that_never_reaches_its_target_and_a_resume_completes_it(tfds_data_dir, tmp_path):
  config = tiny_config(tfds_data_dir, {"train.steps": 6, "train.eval_every": 2, "train.stop_when": NEVER})
  calls = []

  def prune_from_step_4(step, metrics):
    calls.append((step, metrics))
    return step >= 4

  pruned = train_and_evaluate(config, str(tmp_path), on_evaluation=prune_from_step_4)
  assert (pruned["status"], pruned["step"], pruned["steps_to_target"]) == ("pruned", 4, None)
  logged = {row["step"]: {k: v for k, v in row.items() if k.startswith("eval/")} for row in read_metrics(str(tmp_path))}
  assert calls == [(2, logged[2]), (4, logged[4])]
  assert max(logged) == 4 and saved_steps(tmp_path) == [4]

  # A pruned run trains on when asked again; the target it never met leaves steps_to_target null.
  completed = train_and_evaluate(config, str(tmp_path))
  assert (completed["status"], completed["step"], completed["steps_to_target"]) == ("completed", 6, None)
  assert completed["stop_when"] == NEVER and summary_of(tmp_path)["steps_to_target"] is None

  # Another target, met by an evaluation the run logged: it ends there at once, steps_to_target that step.
  config.train.stop_when = "eval/loss <= 1e9"
  trained = written_steps(str(tmp_path))
  reached = train_and_evaluate(config, str(tmp_path))
  assert (reached["status"], reached["step"], reached["steps_to_target"]) == ("reached_target", 6, 2)
  assert written_steps(str(tmp_path)) == trained


@pytest.mark.slow
def test_the_hook_prunes_a_run_without_a_target_but_not_at_its_last_step(tfds_data_dir, tmp_path):
  config = tiny_config(tfds_data_dir, {"train.steps": 4, "train.eval_every": 2})
  summary = train_and_evaluate(config, str(tmp_path), on_evaluation=lambda step, metrics: True)
  assert (summary["status"], summary["step"], summary["stop_when"]) == ("pruned", 2, "")
  assert "steps_to_target" not in summary and saved_steps(tmp_path) == [2]
  # Resumed with the same hook: at the last step there is nothing left to prune.
  summary = train_and_evaluate(config, str(tmp_path), on_evaluation=lambda step, metrics: True)
  assert (summary["status"], summary["step"]) == ("completed", 4)


@pytest.mark.slow  # starts the train command up to its validation (JAX imported): ~3 s of CPU
def test_the_train_command_refuses_a_bad_target_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run([sys.executable, "-m", "experiments.train", "--config=configs/default.py",
                           f"--workdir={workdir}", "--config.train.stop_when=eval/accuracy=>0.99"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  # No INFO records (JAX's "Unable to initialize backend 'tpu'"): the command's message is all it says.
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: train.stop_when='eval/accuracy=>0.99'"), lines
  assert not workdir.exists()

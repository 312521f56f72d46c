"""What a training run prints for a person: aligned evaluation lines and the summary that replaces the JSON dump."""

from __future__ import annotations

from experiments import terminal


def test_eval_lines_show_the_task_or_text_metrics_in_aligned_columns():
  task = {"eval/loss": 1.23456, "eval/accuracy": 0.5, "eval/sequence_accuracy": 0.1, "eval/perplexity": 3.4}
  early = terminal.eval_line(5, 2000, task, 812.4, 3.2)
  late = terminal.eval_line(1750, 2000, {**task, "eval/loss": 0.01}, 123456.0, 3725.0)
  assert early == "step    5/2000  loss 1.2346  accuracy 0.5000        812 tok/s  0:00:03"
  assert late.endswith("  123,456 tok/s  1:02:05")
  assert [early.index(word) for word in ("loss", "accuracy", "tok/s")] == [
      late.index(word) for word in ("loss", "accuracy", "tok/s")]
  text = terminal.eval_line(10, 10, {"eval/loss": 2.0, "eval/accuracy": 0.3, "eval/bits_per_char": 1.5}, None, 0)
  assert text == "step 10/10  loss 2.0000  bits_per_char 1.5000          - tok/s  0:00:00"  # no accuracy on text


def test_the_summary_keeps_the_facts_of_the_json_it_replaces():
  run = {"status": "reached_target", "step": 300, "stop_when": "eval/accuracy>=0.9", "steps_to_target": 300,
         "final": {"train/loss": 0.2, "eval/loss": 0.25, "eval/accuracy": 0.91},
         "best": {"eval/loss": 0.25, "eval/accuracy": 0.91, "step": 300}, "parameters": 27520,
         "wall_time_sec": 61.6}
  assert terminal.summary_lines(run, "runs/x") == [
      "reached_target at step 300; target eval/accuracy>=0.9 met at step 300",
      "final  loss 0.2500  accuracy 0.9100",
      "best   loss 0.2500  accuracy 0.9100  (step 300)",
      "parameters 27,520",
      "wall time 0:01:02",
      "files in runs/x: summary.json (every number), metrics.jsonl, checkpoints/, tensorboard/",
      "curves: tensorboard --logdir runs/x",
  ]
  diverged = {**run, "status": "diverged", "steps_to_target": None, "diverged_at": 7, "member": 1, "best": {}}
  members = {"status": "completed", "step": 300, "wall_time_sec": 5.0, "member_dirs": ["p/members/0", "p/members/1"],
             "members": [{**run, "member": 0}, diverged]}
  lines = terminal.summary_lines(members, "p")
  assert lines[0] == "population of 2: completed at step 300"
  assert "member 1: diverged at step 300; target eval/accuracy>=0.9 not met; diverged at step 7" in lines
  assert sum(line.startswith("  best") for line in lines) == 1  # the diverged member never evaluated
  assert "parameters 27,520 each" in lines and lines[-1] == "curves: tensorboard --logdir p/members"

r"""Does a model trained without a causal mask still predict when it samples? Teacher-forced vs sampled accuracy.

  python -m benchmarks.masked_future --workdir=runs/masking [--examples=64]

For every trial of a sweep (or one run) on the induction task: the accuracy on the answer positions with
the true inputs (teacher forcing, as in training and eval), and when the answers are generated greedily,
one token at a time, each step seeing only the tokens before it, as sampling does. A model whose mask let
it read the next input learns to copy it; at sampling time that input does not exist yet.
Prints a Markdown table.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import build, checkpoint
from experiments.data import pipeline


def sampled_accuracy(model, params, inputs_BL: np.ndarray, targets_BL: np.ndarray,
                     weights_BL: np.ndarray) -> tuple[float, float]:
  """(teacher-forced, sampled) accuracy on the weighted positions.

  Sampling: position t's input is the model's own prediction at t - 1 wherever t - 1 is an answer
  position, and the model is run on the prefix [0, t) only, so no later token is there to be seen.
  """
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x))  # retraced once per prefix length
  forced_BL = np.asarray(jnp.argmax(apply(params, jnp.asarray(inputs_BL)), axis=-1))
  seq_BL = inputs_BL.copy()
  sampled_BL = np.zeros_like(inputs_BL)
  for t in range(1, inputs_BL.shape[1] + 1):
    logits_BtV = apply(params, jnp.asarray(seq_BL[:, :t]))
    sampled_BL[:, t - 1] = np.asarray(jnp.argmax(logits_BtV[:, -1], axis=-1))
    if t < inputs_BL.shape[1]:
      answer_B = weights_BL[:, t - 1] > 0
      seq_BL[answer_B, t] = sampled_BL[answer_B, t - 1]
  total = max(weights_BL.sum(), 1.0)
  forced = float(((forced_BL == targets_BL) * weights_BL).sum() / total)
  sampled = float(((sampled_BL == targets_BL) * weights_BL).sum() / total)
  return forced, sampled


def measure(workdir: str, examples: int) -> dict | None:
  """The row of one run on the induction task (None for runs on other tasks)."""
  config = checkpoint.read_config(workdir)
  if config.data.task != "induction":
    return None
  model, params, step = checkpoint.load_model(workdir)
  data = build.load_data(config)
  batch = next(iter(pipeline.eval_batches(data.validation, batch_size=examples)))
  forced, sampled = sampled_accuracy(model, params, np.asarray(batch["inputs"]), np.asarray(batch["targets"]),
                                     np.asarray(batch["weights"]))
  summary_path = os.path.join(workdir, "summary.json")
  final = json.load(open(summary_path, encoding="utf-8"))["final"] if os.path.exists(summary_path) else {}
  return {"run": os.path.basename(os.path.normpath(workdir)), "mask": config.model.mask, "step": step,
          "train/loss": final.get("train/loss"), "eval/loss": final.get("eval/loss"),
          "teacher-forced accuracy": forced, "sampled accuracy": sampled}


def main(argv):
  del argv
  workdir = flags.FLAGS.workdir
  trials = os.path.join(workdir, "trials")
  dirs = [os.path.join(trials, d) for d in sorted(os.listdir(trials))] if os.path.isdir(trials) else [workdir]
  rows = [r for r in (measure(d, flags.FLAGS.examples) for d in dirs
                      if os.path.exists(os.path.join(d, "checkpoints"))) if r]
  if not rows:
    print(f"no run on the induction task with checkpoints in {workdir}")
    return
  columns = list(rows[0])
  print("| " + " | ".join(columns) + " |")
  print("|" + " --- |" * len(columns))
  for row in rows:
    print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
  print(f"\n{flags.FLAGS.examples} validation examples per run; {jax.devices()[0].device_kind}")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A sweep's workdir (its induction trials are measured) or one run's.")
  flags.DEFINE_integer("examples", 64, "Validation examples per run.")
  flags.mark_flag_as_required("workdir")
  app.run(main)

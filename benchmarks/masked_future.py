r"""Does a model trained without a causal mask still predict when it samples? Teacher-forced vs sampled accuracy.

  python -m benchmarks.masked_future --workdir=runs/masking [--examples=64]
  python -m benchmarks.masked_future --workdir=runs/masking_text --examples=64   # text runs

For every trial of a sweep (or one run) on the induction task: the accuracy on the answer positions with
the true inputs (teacher forcing, as in training and eval), and when the answers are generated greedily,
one token at a time, each step seeing only the tokens before it, as sampling does. A model whose mask let
it read the next input learns to copy it; at sampling time that input does not exist yet.

For runs on text (data.task=text) every position is an answer, so feeding the model's own characters back
would measure how far a generated text drifts from the true one. There each position is predicted from
the true characters up to it and nothing after (the `prefix-only` columns: what the model knows when it
generates that character), against the whole window as eval sees it: loss in nats per token and accuracy.
A causal model gives the same numbers both ways (to float rounding); the gap is what the mask leaked.
Prints a Markdown table.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import build, checkpoint, population
from experiments.data import pipeline


def jitted_apply(model):
  """The model's apply, jitted; it retraces once per input length."""
  return jax.jit(lambda p, x: model.apply({"params": p}, x))


def sampled_accuracy(model, params, inputs_BL: np.ndarray, targets_BL: np.ndarray,
                     weights_BL: np.ndarray, apply=None) -> tuple[float, float]:
  """(teacher-forced, sampled) accuracy on the weighted positions.

  Sampling: position t's input is the model's own prediction at t - 1 wherever t - 1 is an answer
  position, and the model is run on the prefix [0, t) only, so no later token is there to be seen.
  """
  apply = apply or jitted_apply(model)  # `apply`: one shared by runs of one architecture
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


def prefix_only_metrics(model, params, inputs_BL: np.ndarray, targets_BL: np.ndarray,
                        weights_BL: np.ndarray, apply=None) -> dict[str, float]:
  """Loss and accuracy on the weighted positions from the whole window, and from each position's prefix only.

  Prefix-only: the prediction at t comes from a run on inputs [0, t], the tokens after t left out, so a model
  that learned to read later inputs finds none there, as when it generates.
  """
  apply = apply or jitted_apply(model)  # `apply`: one shared by runs of one architecture

  def loss_and_hits(logits_BLV, targets):
    log_probs = jax.nn.log_softmax(logits_BLV.astype(jnp.float32))
    loss_BL = -np.asarray(jnp.take_along_axis(log_probs, jnp.asarray(targets)[..., None], axis=-1)[..., 0])
    return loss_BL, np.asarray(jnp.argmax(logits_BLV, axis=-1)) == targets

  forced_loss_BL, forced_hits_BL = loss_and_hits(apply(params, jnp.asarray(inputs_BL)), targets_BL)
  prefix_loss_BL, prefix_hits_BL = np.zeros_like(forced_loss_BL), np.zeros_like(forced_hits_BL)
  for t in range(inputs_BL.shape[1]):
    last_BV = apply(params, jnp.asarray(inputs_BL[:, :t + 1]))[:, -1:]
    loss_B1, hits_B1 = loss_and_hits(last_BV, targets_BL[:, t:t + 1])
    prefix_loss_BL[:, t], prefix_hits_BL[:, t] = loss_B1[:, 0], hits_B1[:, 0]
  total = max(weights_BL.sum(), 1.0)
  mean = lambda values_BL: float((values_BL * weights_BL).sum() / total)  # noqa: E731
  return {"teacher-forced loss": mean(forced_loss_BL), "prefix-only loss": mean(prefix_loss_BL),
          "teacher-forced accuracy": mean(forced_hits_BL), "prefix-only accuracy": mean(prefix_hits_BL)}


def measure(workdir: str, examples: int, applies: dict) -> dict | None:
  """The row of one run on the induction task or on text (None for runs on other tasks).

  `applies` maps a model config to its jitted apply, so the runs of one architecture compile once.
  """
  config = checkpoint.read_config(workdir)
  if config.data.task not in ("induction", "text"):
    return None
  model, params, step = checkpoint.load_model(workdir)
  data = build.load_data(config)
  batch = next(iter(pipeline.eval_batches(data.validation, batch_size=examples)))
  arrays = [np.asarray(batch[k]) for k in ("inputs", "targets", "weights")]
  apply = applies.setdefault(model.config, jitted_apply(model))
  if config.data.task == "text":
    measured = prefix_only_metrics(model, params, *arrays, apply=apply)
  else:
    forced, sampled = sampled_accuracy(model, params, *arrays, apply=apply)
    measured = {"teacher-forced accuracy": forced, "sampled accuracy": sampled}
  summary_path = os.path.join(workdir, "summary.json")
  final = json.load(open(summary_path, encoding="utf-8"))["final"] if os.path.exists(summary_path) else {}
  m = config.model
  size = {"sliding_window": f" {m.window}", "prefix": f" {m.prefix_length}"}.get(m.mask, "")
  mask = m.mask + size
  return {"run": os.path.basename(os.path.normpath(workdir)), "mask": mask, "step": step,
          "train/loss": final.get("train/loss"), "eval/loss": final.get("eval/loss"), **measured}


def main(argv):
  del argv
  workdir = flags.FLAGS.workdir
  trials = os.path.join(workdir, "trials")
  dirs = [os.path.join(trials, d) for d in sorted(os.listdir(trials))] if os.path.isdir(trials) else [workdir]
  # A population member's directory has no checkpoints/ of its own: its member.json names the population's.
  trained = [d for d in dirs if os.path.exists(os.path.join(d, "checkpoints")) or population.population_of(d)]
  applies = {}
  rows = [r for r in (measure(d, flags.FLAGS.examples, applies) for d in trained) if r]
  if not rows:
    print(f"no run on the induction task or on text with checkpoints in {workdir}")
    return
  columns = list(dict.fromkeys(key for row in rows for key in row))
  print("| " + " | ".join(columns) + " |")
  print("|" + " --- |" * len(columns))
  for row in rows:
    cells = (row.get(key, "") for key in columns)
    print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in cells) + " |")
  print(f"\n{flags.FLAGS.examples} validation examples per run; {jax.devices()[0].device_kind}")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A sweep's workdir (its induction and text trials are measured) or one run's.")
  flags.DEFINE_integer("examples", 64, "Validation examples per run.")
  flags.mark_flag_as_required("workdir")
  app.run(main)

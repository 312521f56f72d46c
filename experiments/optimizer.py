"""The optimizer: AdamW with warmup and a decay schedule, gradient clipping and a weight-decay mask."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

SCHEDULES = ("cosine", "linear", "constant")
NO_DECAY_KINDS = ("norms", "biases", "embeddings")


def learning_rate_schedule(opt: ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then cosine, linear or no decay to end_learning_rate.

  Args:
    opt: the `optimizer` config section.
    total_steps: train.steps, used when optimizer.decay_steps is 0.
  """
  decay_steps = opt.decay_steps or total_steps
  warmup = optax.linear_schedule(0.0, opt.learning_rate, max(opt.warmup_steps, 1))
  after = max(decay_steps - opt.warmup_steps, 1)
  if opt.schedule == "cosine":
    decay = optax.cosine_decay_schedule(opt.learning_rate, after, alpha=opt.end_learning_rate / opt.learning_rate)
  elif opt.schedule == "linear":
    decay = optax.linear_schedule(opt.learning_rate, opt.end_learning_rate, after)
  else:
    decay = optax.constant_schedule(opt.learning_rate)
  if opt.warmup_steps == 0:
    return decay
  return optax.join_schedules([warmup, decay], [opt.warmup_steps])


def traced_learning_rate_schedule(opt: Any, total_steps: int) -> optax.Schedule:
  """learning_rate_schedule for a population whose members differ in optimizer.warmup_steps: the same formulas as
  optax's schedules there, written with array operations throughout, since optax decides on the warmup's length
  in Python (`if transition_steps <= 0`) and so cannot take a traced one.

  Args:
    opt: the `optimizer` section, or an object with its fields where learning_rate, end_learning_rate and
      warmup_steps may be traced scalars.
    total_steps: train.steps, used when optimizer.decay_steps is 0.
  """
  decay_steps = opt.decay_steps or total_steps
  warmup = jnp.asarray(opt.warmup_steps, jnp.float32)
  after = jnp.maximum(decay_steps - warmup, 1.0)
  peak, end = opt.learning_rate, opt.end_learning_rate

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warming = (0.0 - peak) * (1 - jnp.clip(step, 0, warmup) / jnp.maximum(warmup, 1.0)) + peak
    count = step - warmup
    if opt.schedule == "cosine":
      alpha = end / peak
      cosine = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(count, after) / after))
      decayed = peak * ((1 - alpha) * cosine + alpha)
    elif opt.schedule == "linear":
      decayed = (peak - end) * (1 - jnp.clip(count, 0, after) / after) + end
    else:
      decayed = peak + 0.0 * count
    return jnp.where(step < warmup, warming, decayed)

  return schedule


def _kind(path: tuple[Any, ...]) -> str:
  """Classifies a parameter by its path: 'norms', 'biases', 'embeddings' or 'weights'."""
  names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
  leaf = names[-1]
  if any(n.endswith("_norm") or n == "final_norm" for n in names):
    return "norms"
  if leaf == "bias" or leaf.endswith("_bias"):
    return "biases"
  if leaf in ("embedding", "position_embedding", "unembed") or "embed" in names:
    return "embeddings"
  return "weights"


def decay_mask(params: Any, no_decay: str) -> Any:
  """A tree of bools: True where weight decay applies (parameters not of an exempt kind)."""
  exempt = {kind.strip() for kind in no_decay.split(",") if kind.strip()}
  return jax.tree_util.tree_map_with_path(lambda path, _: _kind(path) not in exempt, params)


def make_optimizer(opt: ConfigDict, total_steps: int, params: Any,
                   schedule: optax.Schedule | None = None) -> optax.GradientTransformation:
  """AdamW with the schedule, clipping and decay mask of the config.

  Args:
    opt: the `optimizer` config section (or an object with its fields, some traced: see population_loop).
    total_steps: train.steps.
    params: the parameters (or their shapes): only their tree and names are used, for the mask.
    schedule: the learning rate's schedule (default: learning_rate_schedule of opt).

  Returns:
    The optax transformation.
  """
  parts = []
  if opt.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip))
  schedule = learning_rate_schedule(opt, total_steps) if schedule is None else schedule
  parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay, mask=decay_mask(params, opt.no_decay)))
  return optax.chain(*parts)

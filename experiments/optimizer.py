"""The optimizer: AdamW with warmup and a decay schedule, gradient clipping and a weight-decay mask."""

from __future__ import annotations

from typing import Any

import jax
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


def make_optimizer(opt: ConfigDict, total_steps: int, params: Any) -> optax.GradientTransformation:
  """AdamW with the schedule, clipping and decay mask of the config.

  Args:
    opt: the `optimizer` config section.
    total_steps: train.steps.
    params: the parameters (or their shapes): only their tree and names are used, for the mask.

  Returns:
    The optax transformation.
  """
  parts = []
  if opt.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip))
  parts.append(optax.adamw(learning_rate_schedule(opt, total_steps), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay, mask=decay_mask(params, opt.no_decay)))
  return optax.chain(*parts)

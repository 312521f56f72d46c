"""The train state and the pure train and eval steps, `(state, batch) -> (state, metrics)`.

Batches are dicts of `inputs` [B,L], `targets` [B,L] and `weights` [B,L] (1 where the loss counts).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from transformer import TransformerLM


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly: the step, parameters, optimizer state and base RNG."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # raw key data (uint32); dropout at step t uses fold_in(rng, t)


def weighted_sums(model: TransformerLM, params: Any, batch: dict[str, jax.Array],
                  dropout_rng: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Sums over the batch of the weighted cross-entropy and correct predictions.

  Returns:
    (loss_sum, sums): the summed loss (what gradients are taken of) and metric sums keyed by name:
    loss, correct, weight, sequences, sequences_correct.
  """
  rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
  logits_BLV = model.apply({"params": params}, batch["inputs"], deterministic=dropout_rng is None, rngs=rngs)
  weights_BL = batch["weights"].astype(jnp.float32)
  losses_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, batch["targets"])
  correct_BL = (logits_BLV.argmax(-1) == batch["targets"]).astype(jnp.float32) * weights_BL
  has_targets_B = weights_BL.sum(-1) > 0
  loss_sum = (losses_BL * weights_BL).sum()
  sums = {
      "loss": loss_sum,
      "correct": correct_BL.sum(),
      "weight": weights_BL.sum(),
      "sequences": has_targets_B.sum().astype(jnp.float32),
      # A sequence counts as solved when every target position is predicted right.
      "sequences_correct": (has_targets_B & (correct_BL.sum(-1) == weights_BL.sum(-1))).sum().astype(jnp.float32),
  }
  # Text evaluation batches carry the bytes and characters behind each target (0 where not counted).
  for name in ("target_bytes", "target_chars"):
    if name in batch:
      sums[name] = batch[name].astype(jnp.float32).sum()
  return loss_sum, sums


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: TransformerLM,
               tx: optax.GradientTransformation, accumulation_steps: int,
               schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on the global batch, split into `accumulation_steps` micro-batches.

  Gradients of the summed loss are accumulated and divided by the total weight once, so any
  number of micro-batches gives the gradient of the whole batch's mean loss.
  """
  dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  grad_fn = jax.grad(weighted_sums, argnums=1, has_aux=True)

  def micro(index, micro_batch):
    rng = jax.random.fold_in(dropout_rng, index) if model.config.dropout_rate or \
        model.config.attention_dropout_rate else None
    return grad_fn(model, state.params, micro_batch, rng)

  if accumulation_steps == 1:
    grads, sums = micro(0, batch)
  else:
    split = jax.tree.map(lambda x: x.reshape(accumulation_steps, -1, *x.shape[1:]), batch)

    def body(carry, indexed):
      index, micro_batch = indexed
      grads, sums = micro(index, micro_batch)
      return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(micro, 0, jax.tree.map(lambda x: x[0], split)))
    (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(accumulation_steps), split))

  total_weight = jnp.maximum(sums["weight"], 1.0)
  grads = jax.tree.map(lambda g: g / total_weight, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "train/loss": sums["loss"] / total_weight,
      "train/accuracy": sums["correct"] / total_weight,
      "train/grad_norm": optax.tree_utils.tree_norm(grads),
      "train/learning_rate": schedule(state.step),
      "train/tokens": sums["weight"],
  }
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def train_steps(state: TrainState, batches: dict[str, jax.Array],
                **step_kwargs) -> tuple[TrainState, dict[str, jax.Array]]:
  """`train_step` over the leading axis of `batches` (one batch per step), in one compiled call.

  Each step is the same function of the state and its batch as a call of train_step on its own, so
  a run takes the same steps whatever the number per call. Metrics come back stacked, one row a step.
  Several steps per call share the host's per-call costs (dispatch, fresh buffers; docs/performance.md).
  """
  return jax.lax.scan(functools.partial(train_step, **step_kwargs), state, batches)


def eval_step(params: Any, batch: dict[str, jax.Array], *, model: TransformerLM) -> dict[str, jax.Array]:
  """Metric sums of one evaluation batch (summed over batches, then divided; see summarize_eval)."""
  return weighted_sums(model, params, batch, None)[1]


def summarize_eval(sums: dict[str, float], prefix: str = "eval") -> dict[str, float]:
  """Turns summed eval metrics into means: loss, accuracy, sequence accuracy, perplexity.

  On text also bits per character and per byte: the summed loss in bits over the characters
  (bytes) behind the predicted tokens, which compares runs with different tokenizers.
  """
  weight = max(sums["weight"], 1.0)
  loss = sums["loss"] / weight
  metrics = {
      f"{prefix}/loss": loss,
      f"{prefix}/accuracy": sums["correct"] / weight,
      f"{prefix}/sequence_accuracy": sums["sequences_correct"] / max(sums["sequences"], 1.0),
      f"{prefix}/perplexity": math.exp(min(loss, 80.0)),  # capped: exp overflows float64 near 710
  }
  for name, key in (("target_chars", "bits_per_char"), ("target_bytes", "bits_per_byte")):
    if sums.get(name):
      metrics[f"{prefix}/{key}"] = sums["loss"] / math.log(2) / sums[name]
  return metrics

"""The inspected forward pass: attention patterns and the residual stream as the trained model computes them.

Every pass runs the `reference` attention (the only one that materializes, and sows, the pattern) with dropout
off, whatever implementation training used: the parameters are the same, so the pattern is the one the trained
model computes. Letters as in the README's key: N layers, B batch, H heads, L queries, M keys, D width,
V vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from transformer import TransformerLM
from transformer.masks import MaskSpec


def inspection_model(model: TransformerLM) -> TransformerLM:
  """The same model with the reference attention and no dropout: same parameters, pattern sown."""
  config = dataclasses.replace(model.config, attention_impl="reference", dropout_rate=0.0,
                               attention_dropout_rate=0.0)
  return TransformerLM(config)


def _per_layer(intermediates: dict[str, Any], path: tuple[str, ...], num_layers: int, scanned: bool) -> jax.Array:
  """Stacks a value every block sows (at `path` inside the block) into one array, layer axis first."""

  def lookup(node):
    for key in path:
      node = node[key]
    return node[0]  # sow appends to a tuple; each block sows once

  if scanned:  # nn.scan already stacks what its body sows along a leading layer axis
    return lookup(intermediates["blocks"]["block"])
  return jnp.stack([lookup(intermediates[f"block_{i}"]) for i in range(num_layers)])


# Jitted with the model static (modules are frozen dataclasses: equal configs share one compiled program);
# eager application of a model dispatches hundreds of small ops and is many times slower.
@functools.partial(jax.jit, static_argnums=0)
def forward(model: TransformerLM, params: Any, tokens_BL: jax.Array) -> dict[str, jax.Array]:
  """One inspected forward pass of `tokens_BL` (positions 0..L-1, no segments).

  Args:
    model: the trained model (any attention implementation; the reference one is used here).
    params: its parameters.
    tokens_BL: token ids, L <= max_len.

  Returns:
    `weights_NBHLM` (attention of every layer, float32, 0 where masked), `residual_NBLD` (the residual
    stream after each block), `embedding_BLD` (the token embedding, before positions and blocks) and
    `logits_BLV`.
  """
  model = inspection_model(model)
  c = model.config
  logits_BLV, state = model.apply({"params": params}, tokens_BL, mutable=["intermediates"])
  intermediates = state["intermediates"]
  embedding_BLD = jnp.take(params["embed"]["embedding"], tokens_BL, axis=0)
  return {
      "weights_NBHLM": _per_layer(intermediates, ("attention", "attention_weights"), c.num_layers, c.scan_layers),
      "residual_NBLD": _per_layer(intermediates, ("residual",), c.num_layers, c.scan_layers),
      "embedding_BLD": embedding_BLD.astype(jnp.float32),
      "logits_BLV": logits_BLV,
  }


def allowed_matrix(model: TransformerLM, length: int) -> np.ndarray:
  """allowed_LM of the model's mask for one unpacked sequence: False where a key is masked."""
  positions_1L = jnp.arange(length)[None]
  return np.asarray(MaskSpec.from_config(model.config)(positions_1L, positions_1L)[0])

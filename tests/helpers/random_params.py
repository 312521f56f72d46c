"""Random parameters far from the init's small values, for checks that the init's near-zero weights would hide."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from transformer.config import ModelConfig
from transformer.model import TransformerLM


def random_arrays(shapes: dict, seed: int, std: float) -> dict:
  """Float32 draws of N(0, std²) from np.random.RandomState(seed), a leaf named `scale` (LayerNorm's) around 1.

  Args:
    shapes: {name: a shape tuple, or an array or jax.ShapeDtypeStruct, or a nested dict of them}. Leaves are
      drawn in the dict's order, depth first: a test's values depend on it (jax.eval_shape's are sorted by name).
    seed: the RandomState's seed.
    std: the standard deviation.

  Returns:
    The dict, with a float32 array for each leaf.
  """
  rng = np.random.RandomState(seed)

  def fill(tree, name):
    if isinstance(tree, dict):
      return {key: fill(value, key) for key, value in tree.items()}
    shape = getattr(tree, "shape", tree)
    return jnp.asarray((1.0 if name == "scale" else 0.0) + std * rng.randn(*shape), jnp.float32)

  return fill(shapes, None)


def random_params(c: ModelConfig, seed: int = 0) -> dict:
  """Parameters of TransformerLM(c), std 0.3 (scales around 1), so that every layer changes the logits noticeably.

  Args:
    c: the model's config.
    seed: the RandomState's seed.

  Returns:
    The parameter tree, as TransformerLM(c).init would give it (without the partitioning boxes).
  """
  tokens = jnp.zeros((1, c.max_len), jnp.int32)
  shapes = nn.unbox(jax.eval_shape(TransformerLM(c).init, jax.random.key(0), tokens)["params"])
  return random_arrays(shapes, seed, 0.3)

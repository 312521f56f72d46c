"""Position information: the sinusoidal table of the 2017 paper and rotary embeddings (RoPE).

Learned positions are an ordinary embedding table and live in the model, as does the scaling of the sinusoidal
table's sum with the embeddings (the paper's: embeddings times sqrt(D)).

Letter key as in attention.py: B batch, L length, D width, H heads, K head width, U frequencies (one per pair
of features: D / 2 in the table, K / 2 in RoPE).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def sinusoidal_table(length: int, width: int) -> np.ndarray:
  """table_LD[p, 2i] = sin(p / 10000^(2i/D)), table_LD[p, 2i+1] = cos(same), as in Vaswani et al. 2017."""
  positions_L1 = np.arange(length, dtype=np.float64)[:, None]
  frequencies_U = 1.0 / 10_000.0 ** (np.arange(0, width, 2, dtype=np.float64) / width)
  angles_LU = positions_L1 * frequencies_U[None]
  table_LD = np.zeros((length, width), np.float64)
  table_LD[:, 0::2] = np.sin(angles_LU)
  table_LD[:, 1::2] = np.cos(angles_LU[:, : width // 2])
  return table_LD.astype(np.float32)


def apply_rope(x_BLHK: jax.Array, positions_BL: jax.Array, base: float) -> jax.Array:
  """Rotates each pair of features (i, i + K/2) of each head by the angle position * base^(-2i/K).

  Args:
    x_BLHK: queries or keys.
    positions_BL: the position of each token.
    base: the wavelength base (10,000 in Su et al. 2021).

  Returns:
    The rotated array, same shape and dtype.
  """
  half = x_BLHK.shape[-1] // 2
  # Angles in float32 whatever the compute dtype: bfloat16 cannot hold positions past 256 exactly.
  frequencies_U = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_BLU = positions_BL[..., None].astype(jnp.float32) * frequencies_U[None, None]
  cos_BL1U = jnp.cos(angles_BLU)[:, :, None, :]
  sin_BL1U = jnp.sin(angles_BLU)[:, :, None, :]
  first, second = x_BLHK[..., :half].astype(jnp.float32), x_BLHK[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate([first * cos_BL1U - second * sin_BL1U, second * cos_BL1U + first * sin_BL1U], axis=-1)
  return rotated.astype(x_BLHK.dtype)

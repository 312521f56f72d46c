"""The same token in different contexts: its residual stream at each layer, compared across prompts.

Letters as in the README's key (N layers, D width), and X for the contexts compared (one prompt each; Y is the
same axis as the second of a pair).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from experiments.inspection import forward_pass
from transformer import TransformerLM


def find_token(ids_L: np.ndarray, word_ids: np.ndarray) -> int | None:
  """Position of the last token of the first occurrence of word_ids in ids_L, or None."""
  n = len(word_ids)
  for start in range(len(ids_L) - n + 1):
    if np.array_equal(ids_L[start:start + n], word_ids):
      return start + n - 1
  return None


def context_vectors(model: TransformerLM, params: Any, prompts_ids: list[np.ndarray],
                    positions: list[int]) -> np.ndarray:
  """vectors_XND: the residual stream at one position of each prompt, layer by layer.

  Row 0 of N + 1 is the token embedding (no position, no context); row n is the stream after block n.
  Each prompt runs alone, so prompts of different lengths need no padding.
  """
  rows = []
  for ids_L, position in zip(prompts_ids, positions):
    out = forward_pass.forward(model, params, jnp.asarray(ids_L, jnp.int32)[None])
    stream_ND = jnp.concatenate([out["embedding_BLD"][None, 0, position], out["residual_NBLD"][:, 0, position]])
    rows.append(np.asarray(stream_ND, np.float64))
  return np.stack(rows)


def cosine_similarities(vectors_XND: np.ndarray) -> np.ndarray:
  """similarity_NXX: cosine similarity between every two contexts, at every layer."""
  unit_XND = vectors_XND / np.maximum(np.linalg.norm(vectors_XND, axis=-1, keepdims=True), 1e-30)
  return np.einsum("XND,YND->NXY", unit_XND, unit_XND)


def drift_from_embedding(vectors_XND: np.ndarray) -> np.ndarray:
  """similarity_NX: cosine between each context's vector at every layer and the token embedding (row 0)."""
  unit_XND = vectors_XND / np.maximum(np.linalg.norm(vectors_XND, axis=-1, keepdims=True), 1e-30)
  return np.einsum("XND,XD->NX", unit_XND, unit_XND[:, 0])

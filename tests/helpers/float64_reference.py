"""Attention in float64 NumPy, written from the math independently of transformer/: explicit loops over heads,
masks built by looping over (query, key) pairs, a float64 softmax and its hand-derived gradients."""

from __future__ import annotations

import math

import numpy as np

from transformer.config import ModelConfig


def pair_allowed(kind: str, window: int, prefix_length: int, q_pos: int, k_pos: int, q_seg=0, k_seg=0) -> bool:
  """Whether the query at q_pos (segment q_seg) may attend to the key at k_pos (segment k_seg)."""
  if q_seg != k_seg:
    return False
  if kind == "none":
    return True
  if kind == "causal":
    return k_pos <= q_pos
  if kind == "sliding_window":
    return q_pos - window < k_pos <= q_pos
  return k_pos <= q_pos or (q_pos < prefix_length and k_pos < prefix_length)


def reference_allowed(c: ModelConfig, q_pos: int, k_pos: int, q_seg=0, k_seg=0) -> bool:
  """pair_allowed under the config's mask."""
  return pair_allowed(c.mask, c.window, c.prefix_length, q_pos, k_pos, q_seg, k_seg)


def allowed_matrix(c: ModelConfig, length: int) -> np.ndarray:
  """allowed_LM of self-attention over positions 0..length-1 in one segment."""
  return np.array([[reference_allowed(c, i, j) for j in range(length)] for i in range(length)])


def reference_rope(x_LK, positions_L, base):
  """Rotates feature pairs (i, i + K/2) of each row by position * base^(-2i/K), in float64."""
  _, k = x_LK.shape
  half = k // 2
  out = np.empty_like(x_LK)
  for row, pos in enumerate(positions_L):
    for i in range(half):
      angle = pos * base ** (-2.0 * i / k)
      c, s = math.cos(angle), math.sin(angle)
      out[row, i] = x_LK[row, i] * c - x_LK[row, i + half] * s
      out[row, i + half] = x_LK[row, i + half] * c + x_LK[row, i] * s
  return out


def reference_attention(c: ModelConfig, params: dict, x_BLD, positions_BL, segments_BL=None):
  """Returns (update_BLD, weights_BHLM) of multi-head self-attention, in float64, head by head."""
  p = {name: np.asarray(value, np.float64) for name, value in params.items()}
  x = np.asarray(x_BLD, np.float64)
  positions = np.asarray(positions_BL)
  segments = np.zeros(positions.shape, int) if segments_BL is None else np.asarray(segments_BL)
  batch, length, d = x.shape
  h_count, g_count = c.num_heads, c.kv_heads
  per_group = h_count // g_count
  k_width = c.head_dim if c.head_dim is not None else d // h_count
  scale = {"rsqrt": 1.0 / math.sqrt(k_width), "none": 1.0}.get(c.score_scale)
  scale = float(c.score_scale) if scale is None else scale

  def bias(name, index):
    return p[name][index] if c.use_bias else 0.0

  update = np.zeros((batch, length, d))
  weights = np.zeros((batch, h_count, length, length))
  for b in range(batch):
    allowed = np.zeros((length, length), bool)
    for i in range(length):
      for j in range(length):
        allowed[i, j] = reference_allowed(c, positions[b, i], positions[b, j], segments[b, i], segments[b, j])
    for h in range(h_count):
      g = h // per_group
      q = x[b] @ p["query"][:, h, :] + bias("query_bias", h)
      k = x[b] @ p["key"][:, g, :] + bias("key_bias", g)
      if c.positions == "rope":
        q, k = reference_rope(q, positions[b], c.rope_base), reference_rope(k, positions[b], c.rope_base)
      if c.value_mode == "full":
        v = x[b] @ p["value"][:, g, :] + bias("value_bias", g)
      else:
        v = x[b] @ p["value_down"][:, g, :] + bias("value_down_bias", g)
      scores = q @ k.T * scale
      for i in range(length):
        keys = allowed[i]
        if keys.any():
          e = np.exp(scores[i, keys] - scores[i, keys].max())
          weights[b, h, i, keys] = e / e.sum()
      head = weights[b, h] @ v
      update[b] += head if c.value_mode == "full" else head @ p["value_up"][h]
  if c.value_mode == "factored" and c.use_bias:
    update += p["value_up_bias"]
  return update, weights


def pairs_allowed_BLM(kind, window, prefix_length, q_pos_BL, k_pos_BM, q_seg_BL, k_seg_BM) -> np.ndarray:
  """allowed_BLM from positions and segment ids, pair by pair."""
  q_pos, k_pos, q_seg, k_seg = (np.asarray(a) for a in (q_pos_BL, k_pos_BM, q_seg_BL, k_seg_BM))
  return np.array([[[pair_allowed(kind, window, prefix_length, q_pos[b, i], k_pos[b, j], q_seg[b, i], k_seg[b, j])
                     for j in range(k_pos.shape[1])] for i in range(q_pos.shape[1])] for b in range(q_pos.shape[0])])


def dropout_attention_and_grads(q_BLHK, k_BMGK, v_BMGR, allowed_BLM, multipliers_BHLM, scale, d_mixed_BLHR):
  """Softmax attention whose weights are multiplied elementwise by dropout multipliers, in float64, head by head.

  Args:
    q_BLHK, k_BMGK, v_BMGR: queries, keys, values; query head h uses key/value head h // (H / G).
    allowed_BLM: the mask; a row with no allowed key mixes nothing.
    multipliers_BHLM: 0 where a weight is dropped, 1 / (1 - rate) where kept (all 1 for no dropout).
    scale: the factor on q.k.
    d_mixed_BLHR: the cotangent of the output.

  Returns:
    (mixed_BLHR, (dq_BLHK, dk_BMGK, dv_BMGR)): the output and the gradients of <d_mixed, mixed>.
  """
  q, k, v, d_mixed = (np.asarray(a, np.float64) for a in (q_BLHK, k_BMGK, v_BMGR, d_mixed_BLHR))
  allowed, multipliers = np.asarray(allowed_BLM, bool), np.asarray(multipliers_BHLM, np.float64)
  batch, length, heads, _ = q.shape
  per_group = heads // k.shape[2]
  mixed = np.zeros(d_mixed.shape)
  dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
  for b in range(batch):
    for h in range(heads):
      g = h // per_group
      scores_LM = q[b, :, h] @ k[b, :, g].T * scale
      weights_LM = np.zeros(scores_LM.shape)
      for i in range(length):
        keys = allowed[b, i]
        if keys.any():
          e = np.exp(scores_LM[i, keys] - scores_LM[i, keys].max())
          weights_LM[i, keys] = e / e.sum()
      mixing_LM = weights_LM * multipliers[b, h]
      mixed[b, :, h] = mixing_LM @ v[b, :, g]
      # Backward, from out = (P * D) V and the softmax Jacobian dS = P * (dP - rowsum(P * dP)).
      dv[b, :, g] += mixing_LM.T @ d_mixed[b, :, h]
      d_weights_LM = (d_mixed[b, :, h] @ v[b, :, g].T) * multipliers[b, h]
      d_scores_LM = weights_LM * (d_weights_LM - (weights_LM * d_weights_LM).sum(axis=-1, keepdims=True))
      dq[b, :, h] = scale * d_scores_LM @ k[b, :, g]
      dk[b, :, g] += scale * d_scores_LM.T @ q[b, :, h]
  return mixed, (dq, dk, dv)

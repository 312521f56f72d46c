"""Attention cores: from projected queries, keys and values to each head's mixed values.

Three implementations of the same function, chosen by `ModelConfig.attention_impl`, with one signature
(each uses the arguments it needs; the mask comes as a MaskSpec and the positions it is built from):
- `reference_attention`: plain einsums; materializes the B x H x L x M pattern (and returns it).
- `chunked_attention`: online softmax over blocks of keys, with a hand-written backward pass that
  recomputes each block, so memory grows linearly in the sequence length in training too.
- `auto_attention`: `jax.nn.dot_product_attention` (cuDNN flash attention on GPUs) where the
  variant allows it; otherwise the chunked kernel, with a one-time log line saying why.

Letter key: B batch, L queries, M keys, H query heads, G key/value heads, Q = H / G query heads per
key/value head, K query/key width, R value width, C keys per block of the chunked kernel, J key blocks
(M / C, rounded up; the j of FlashAttention's loop over key blocks). Head h belongs to group h // Q.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

from transformer.masks import MASK_KINDS, MaskSpec
from transformer.ops import dropout_scale

# Added to masked scores before the softmax. Finite, so a row with every key masked gives no NaN
# (its weights are then zeroed explicitly); far enough below any real score that exp() is exactly 0.
MASKED_SCORE = -0.7 * float(jnp.finfo(jnp.float32).max)


def _group(q_BLHK: jax.Array, kv_heads: int) -> jax.Array:
  """q_BLHK -> q_BLGQK, so that each key/value head serves its Q query heads."""
  b, l, h, k = q_BLHK.shape
  return q_BLHK.reshape(b, l, kv_heads, h // kv_heads, k)


def _scores(q_BLGQK: jax.Array, k_BMGK: jax.Array, scale: float) -> jax.Array:
  # float32 scores whatever the compute dtype: the softmax of bfloat16 logits loses the small
  # differences between keys that attention patterns are made of.
  scores = jnp.einsum("BLGQK,BMGK->BGQLM", q_BLGQK, k_BMGK, preferred_element_type=jnp.float32)
  return scores * scale


# Query tiles of the reference and chunked kernels (see query_tiles_for): small tiles cost more than the keys
# they skip save, and more than a few tiles were not clearly better (see docs/performance.md).
MIN_QUERY_TILE = 128
MAX_QUERY_TILES = 4


def query_tiles_for(mask_kind: str, length: int) -> int:
  """How many query tiles the reference and chunked kernels should use for self-attention over `length` tokens.

  Under masks where no query may attend to a later key (causal, sliding window: positions increase along
  a sequence and each packed segment), a tile of queries needs only the keys up to its own end: with n
  tiles the kernel computes (n + 1) / 2n of the pattern. Other masks get one tile.
  """
  if not MASK_KINDS[mask_kind].masks_later_keys:
    return 1
  return max(1, min(MAX_QUERY_TILES, length // MIN_QUERY_TILE))


def _query_tiles(query_tiles: int, length: int, keys: int, dropout_rng: jax.Array | None):
  """(queries, key_end, dropout_rng) of each tile: its queries attend to the keys before key_end."""
  if query_tiles <= 1:
    return [(slice(None), keys, dropout_rng)]
  if keys != length:
    raise ValueError(f"query_tiles={query_tiles} needs self-attention (as many keys as queries, got {keys} and "
                     f"{length}); use query_tiles=1")
  ends = [round(length * (i + 1) / query_tiles) for i in range(query_tiles)]
  return [(slice(start, end), end, None if dropout_rng is None else jax.random.fold_in(dropout_rng, i))
          for i, (start, end) in enumerate(zip([0] + ends[:-1], ends))]


def _attend(q_BLHK, k_BMHK, v_BMHR, allowed_BLM, scale, dropout_rate, dropout_rng):
  """Softmax attention with as many key/value heads as query heads: (mixed_BLHR, weights_BHLM)."""
  # float32 scores whatever the compute dtype (see _scores).
  scores_BHLM = jnp.einsum("BLHK,BMHK->BHLM", q_BLHK, k_BMHK, preferred_element_type=jnp.float32) * scale
  allowed_B1LM = allowed_BLM[:, None]
  scores_BHLM = jnp.where(allowed_B1LM, scores_BHLM, MASKED_SCORE)
  # Masked keys get exactly 0 from the softmax (exp underflows), except in a row where every key is
  # masked: its scores are all equal, so it is zeroed as a whole, by one multiply (a second select over
  # all B*H*L*M weights did the same at a measurable cost: see docs/performance.md).
  any_allowed_B1L1 = allowed_B1LM.any(axis=-1, keepdims=True).astype(jnp.float32)
  weights_BHLM = jax.nn.softmax(scores_BHLM, axis=-1) * any_allowed_B1L1
  mixing_BHLM = weights_BHLM
  if dropout_rng is not None and dropout_rate > 0.0:
    mixing_BHLM = weights_BHLM * dropout_scale(dropout_rng, dropout_rate, weights_BHLM.shape)
  mixed_BLHR = jnp.einsum("BHLM,BMHR->BLHR", mixing_BHLM.astype(v_BMHR.dtype), v_BMHR)
  return mixed_BLHR, weights_BHLM


def reference_attention(
    q_BLHK: jax.Array,
    k_BMGK: jax.Array,
    v_BMGR: jax.Array,
    spec: MaskSpec,
    q_positions_BL: jax.Array,
    k_positions_BM: jax.Array,
    q_segment_ids_BL: jax.Array | None = None,
    k_segment_ids_BM: jax.Array | None = None,
    *,
    scale: float,
    chunk_size: int = 128,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    query_tiles: int = 1,
    contiguous: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """Softmax attention written as the math reads, over the whole B x H x L x M pattern.

  Args:
    q_BLHK, k_BMGK, v_BMGR: queries, keys, values (value-down outputs, or full D-wide values).
    spec: the mask.
    q_positions_BL, k_positions_BM: positions of queries and keys (see masks.MaskSpec).
    q_segment_ids_BL, k_segment_ids_BM: packed-sequence ids, or None.
    scale: the factor on q.k.
    chunk_size: keys per block of the chunked kernel (and of auto's fallback to it).
    dropout_rate: dropout on the attention weights (applied when dropout_rng is given).
    dropout_rng: PRNG key for that dropout; None for no dropout.
    query_tiles: computes the queries in this many tiles, each against the keys up to its own end only.
      Exact only when no query may attend to a later key (self-attention under a mask kind that masks later
      keys; see query_tiles_for); the caller decides. Each tile draws its own dropout key. Unused by auto.
    contiguous: positions are 0..L-1 in every row with no segments (see auto_attention).

  Returns:
    (mixed_BLHR, weights_BHLM): each head's weighted sum of values, and the attention weights
    (exactly 0 where masked; rows with no allowed key are all 0).
  """
  del chunk_size, contiguous
  allowed_BLM = spec(q_positions_BL, k_positions_BM, q_segment_ids_BL, k_segment_ids_BM)
  q_per_group = q_BLHK.shape[2] // k_BMGK.shape[2]
  tiles = _query_tiles(query_tiles, q_BLHK.shape[1], k_BMGK.shape[1], dropout_rng)
  # Query head h uses key/value head h // Q. Repeating those to H heads keeps every array 4-D: XLA's
  # CPU backend ran the 5-D grouped form (with a size-1 axis when G = H) much slower (see docs/performance.md).
  k_BMHK = jnp.repeat(k_BMGK, q_per_group, axis=2)
  v_BMHR = jnp.repeat(v_BMGR, q_per_group, axis=2)
  if len(tiles) == 1:
    return _attend(q_BLHK, k_BMHK, v_BMHR, allowed_BLM, scale, dropout_rate, dropout_rng)
  mixed, weights = [], []
  for queries, key_end, tile_rng in tiles:
    tile_mixed_BLHR, tile_weights_BHLM = _attend(q_BLHK[:, queries], k_BMHK[:, :key_end], v_BMHR[:, :key_end],
                                                 allowed_BLM[:, queries, :key_end], scale, dropout_rate, tile_rng)
    mixed.append(tile_mixed_BLHR)
    weights.append(jnp.pad(tile_weights_BHLM, ((0, 0), (0, 0), (0, 0), (0, k_BMHK.shape[1] - key_end))))
  return jnp.concatenate(mixed, axis=1), jnp.concatenate(weights, axis=2)


# Chunked attention: flash-attention style online softmax, forward and backward over key blocks.


def _key_blocks(chunk: int, *arrays_BM):
  """Splits arrays along M into J blocks of C = `chunk` keys (M is padded to J C): arrays_JBC..."""
  m = arrays_BM[0].shape[1]
  padded = -(-m // chunk) * chunk
  out = []
  for array in arrays_BM:
    array = jnp.pad(array, [(0, 0), (0, padded - m)] + [(0, 0)] * (array.ndim - 2))
    out.append(jnp.moveaxis(array.reshape(array.shape[0], padded // chunk, chunk, *array.shape[2:]), 1, 0))
  return out


def _block_allowed(spec, q_pos_BL, q_seg_BL, k_pos_BC, k_seg_BC, k_valid_BC):
  """allowed_B11LC of one key block, broadcastable against scores_BGQLC."""
  allowed_BLC = spec(q_pos_BL, k_pos_BC, q_seg_BL, k_seg_BC) & k_valid_BC[:, None, :]
  return allowed_BLC[:, None, None]


def _chunked_forward(spec, scale, chunk, rate, q_BLHK, k_BMGK, v_BMGR, q_pos_BL, k_pos_BM, q_seg_BL,
                     k_seg_BM, rng):
  """Returns (mixed_BLHR, logsumexp_BGQL); differentiable by autodiff too (used to test the VJP)."""
  b, l, h, _ = q_BLHK.shape
  m, g, r = v_BMGR.shape[1], v_BMGR.shape[2], v_BMGR.shape[3]
  q_BLGQK = _group(q_BLHK, g)
  k_valid_BM = jnp.ones((b, m), bool)
  blocks = _key_blocks(chunk, k_BMGK, v_BMGR, k_pos_BM, k_seg_BM, k_valid_BM)

  def step(carry, block):
    max_BGQL, sum_BGQL, acc_BLGQR = carry
    index, (k_BCGK, v_BCGR, k_pos_BC, k_seg_BC, k_valid_BC) = block
    allowed_B11LC = _block_allowed(spec, q_pos_BL, q_seg_BL, k_pos_BC, k_seg_BC, k_valid_BC)
    scores_BGQLC = jnp.where(allowed_B11LC, _scores(q_BLGQK, k_BCGK, scale), MASKED_SCORE)
    new_max_BGQL = jnp.maximum(max_BGQL, scores_BGQLC.max(axis=-1))
    p_BGQLC = jnp.where(allowed_B11LC, jnp.exp(scores_BGQLC - new_max_BGQL[..., None]), 0.0)
    correction_BGQL = jnp.exp(max_BGQL - new_max_BGQL)
    sum_BGQL = sum_BGQL * correction_BGQL + p_BGQLC.sum(axis=-1)
    if rng is not None:
      p_BGQLC = p_BGQLC * dropout_scale(jax.random.fold_in(rng, index), rate, p_BGQLC.shape)
    update_BLGQR = jnp.einsum("BGQLC,BCGR->BLGQR", p_BGQLC.astype(v_BCGR.dtype), v_BCGR,
                              preferred_element_type=jnp.float32)
    acc_BLGQR = acc_BLGQR * jnp.moveaxis(correction_BGQL, 3, 1)[..., None] + update_BLGQR
    return (new_max_BGQL, sum_BGQL, acc_BLGQR), None

  q = h // g
  init = (jnp.full((b, g, q, l), MASKED_SCORE, jnp.float32), jnp.zeros((b, g, q, l), jnp.float32),
          jnp.zeros((b, l, g, q, r), jnp.float32))
  indices = jnp.arange(blocks[0].shape[0])
  (max_BGQL, sum_BGQL, acc_BLGQR), _ = jax.lax.scan(step, init, (indices, tuple(blocks)))
  # A row with no allowed key has sum 0 and acc 0: dividing by max(sum, tiny) returns zeros.
  safe_sum_BGQL = jnp.maximum(sum_BGQL, jnp.finfo(jnp.float32).tiny)
  mixed_BLGQR = acc_BLGQR / jnp.moveaxis(safe_sum_BGQL, 3, 1)[..., None]
  logsumexp_BGQL = jnp.where(sum_BGQL > 0, max_BGQL + jnp.log(safe_sum_BGQL), 0.0)
  return mixed_BLGQR.reshape(b, l, h, r).astype(v_BMGR.dtype), logsumexp_BGQL


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _chunked(spec, scale, chunk, rate, q, k, v, q_pos, k_pos, q_seg, k_seg, rng):
  return _chunked_forward(spec, scale, chunk, rate, q, k, v, q_pos, k_pos, q_seg, k_seg, rng)[0]


def _chunked_fwd(spec, scale, chunk, rate, q, k, v, q_pos, k_pos, q_seg, k_seg, rng):
  mixed, logsumexp = _chunked_forward(spec, scale, chunk, rate, q, k, v, q_pos, k_pos, q_seg, k_seg, rng)
  return mixed, (q, k, v, q_pos, k_pos, q_seg, k_seg, rng, mixed, logsumexp)


def _chunked_bwd(spec, scale, chunk, rate, residuals, d_mixed_BLHR):
  q_BLHK, k_BMGK, v_BMGR, q_pos_BL, k_pos_BM, q_seg_BL, k_seg_BM, rng, mixed_BLHR, logsumexp_BGQL = residuals
  b, l, h, kd = q_BLHK.shape
  m, g, r = v_BMGR.shape[1], v_BMGR.shape[2], v_BMGR.shape[3]
  q_BLGQK = _group(q_BLHK, g)
  d_mixed_BLGQR = _group(d_mixed_BLHR.astype(jnp.float32), g)
  # rowsum(dP * P) of the softmax backward equals rowsum(dO * O): one number per query and head.
  delta_BGQL = jnp.einsum("BLGQR,BLGQR->BGQL", d_mixed_BLGQR, _group(mixed_BLHR.astype(jnp.float32), g))
  k_valid_BM = jnp.ones((b, m), bool)
  blocks = _key_blocks(chunk, k_BMGK, v_BMGR, k_pos_BM, k_seg_BM, k_valid_BM)

  def step(dq_BLGQK, block):
    index, (k_BCGK, v_BCGR, k_pos_BC, k_seg_BC, k_valid_BC) = block
    allowed_B11LC = _block_allowed(spec, q_pos_BL, q_seg_BL, k_pos_BC, k_seg_BC, k_valid_BC)
    scores_BGQLC = _scores(q_BLGQK, k_BCGK, scale)
    p_BGQLC = jnp.where(allowed_B11LC, jnp.exp(scores_BGQLC - logsumexp_BGQL[..., None]), 0.0)
    d_p_BGQLC = jnp.einsum("BLGQR,BCGR->BGQLC", d_mixed_BLGQR, v_BCGR.astype(jnp.float32))
    mixing_BGQLC = p_BGQLC
    if rng is not None:
      dropout_BGQLC = dropout_scale(jax.random.fold_in(rng, index), rate, p_BGQLC.shape)
      mixing_BGQLC = p_BGQLC * dropout_BGQLC
      d_p_BGQLC = d_p_BGQLC * dropout_BGQLC
    d_v_BCGR = jnp.einsum("BGQLC,BLGQR->BCGR", mixing_BGQLC, d_mixed_BLGQR)
    d_scores_BGQLC = p_BGQLC * (d_p_BGQLC - delta_BGQL[..., None]) * scale
    dq_BLGQK = dq_BLGQK + jnp.einsum("BGQLC,BCGK->BLGQK", d_scores_BGQLC, k_BCGK.astype(jnp.float32))
    d_k_BCGK = jnp.einsum("BGQLC,BLGQK->BCGK", d_scores_BGQLC, q_BLGQK.astype(jnp.float32))
    return dq_BLGQK, (d_k_BCGK, d_v_BCGR)

  indices = jnp.arange(blocks[0].shape[0])
  dq_BLGQK, (d_k_JBCGK, d_v_JBCGR) = jax.lax.scan(
      step, jnp.zeros(q_BLGQK.shape, jnp.float32), (indices, tuple(blocks)))
  d_k_BMGK = jnp.moveaxis(d_k_JBCGK, 0, 1).reshape(b, -1, g, kd)[:, :m]
  d_v_BMGR = jnp.moveaxis(d_v_JBCGR, 0, 1).reshape(b, -1, g, r)[:, :m]
  # Positions, segment ids and the dropout key are integers: they have no cotangent.
  return (dq_BLGQK.reshape(b, l, h, kd).astype(q_BLHK.dtype), d_k_BMGK.astype(k_BMGK.dtype),
          d_v_BMGR.astype(v_BMGR.dtype), None, None, None, None, None)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def chunked_attention(
    q_BLHK: jax.Array,
    k_BMGK: jax.Array,
    v_BMGR: jax.Array,
    spec: MaskSpec,
    q_positions_BL: jax.Array,
    k_positions_BM: jax.Array,
    q_segment_ids_BL: jax.Array | None = None,
    k_segment_ids_BM: jax.Array | None = None,
    *,
    scale: float,
    chunk_size: int = 128,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    query_tiles: int = 1,
    contiguous: bool = False,
) -> jax.Array:
  """Softmax attention over key blocks of `chunk_size`: memory linear in M, forward and backward.

  The mask is built block by block from positions and segment ids, never as an L x M array. Arguments as
  reference_attention's; each tile of queries runs over the key blocks up to its end; `contiguous` is unused.

  Returns:
    mixed_BLHR: each head's weighted sum of values.
  """
  del contiguous
  if q_segment_ids_BL is None:
    q_segment_ids_BL = jnp.zeros(q_positions_BL.shape, jnp.int32)
    k_segment_ids_BM = jnp.zeros(k_positions_BM.shape, jnp.int32)
  if dropout_rate <= 0.0:
    dropout_rng = None
  mixed = [_chunked(spec, float(scale), min(chunk_size, key_end), float(dropout_rate), q_BLHK[:, queries],
                    k_BMGK[:, :key_end], v_BMGR[:, :key_end], q_positions_BL[:, queries], k_positions_BM[:, :key_end],
                    q_segment_ids_BL[:, queries], k_segment_ids_BM[:, :key_end], tile_rng)
           for queries, key_end, tile_rng in _query_tiles(query_tiles, q_BLHK.shape[1], k_BMGK.shape[1], dropout_rng)]
  return mixed[0] if len(mixed) == 1 else jnp.concatenate(mixed, axis=1)


# jax.nn.dot_product_attention, with cuDNN flash attention on GPUs.


@functools.lru_cache(maxsize=None)
def _log_fallback_once(reason: str) -> None:
  logging.warning("attention_impl='auto' falls back to the chunked kernel: %s", reason)


def auto_fallback_reason(key_dim: int, value_dim: int, dropout: bool) -> str | None:
  """Why jax.nn.dot_product_attention cannot run this variant, or None if it can."""
  if value_dim != key_dim:
    return f"value width {value_dim} differs from key width {key_dim} (value_mode='full' or value_rank != head_dim)"
  if dropout:
    return "it has no attention dropout"
  return None


def auto_attention(
    q_BLHK: jax.Array,
    k_BMGK: jax.Array,
    v_BMGR: jax.Array,
    spec: MaskSpec,
    q_positions_BL: jax.Array,
    k_positions_BM: jax.Array,
    q_segment_ids_BL: jax.Array | None = None,
    k_segment_ids_BM: jax.Array | None = None,
    *,
    scale: float,
    chunk_size: int = 128,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    query_tiles: int = 1,
    contiguous: bool = False,
) -> jax.Array:
  """jax.nn.dot_product_attention where it applies, else chunked_attention (arguments as reference_attention's).

  `contiguous` says positions are 0..L-1 in every row with no segments, so masks that the function's flags
  can say are passed as flags, which is what lets cuDNN's fused kernels run on GPUs. `query_tiles` is unused:
  the fallback to the chunked kernel runs in one tile.
  """
  del query_tiles
  dropout = dropout_rng is not None and dropout_rate > 0.0
  reason = auto_fallback_reason(q_BLHK.shape[-1], v_BMGR.shape[-1], dropout)
  if reason is not None:
    _log_fallback_once(reason)
    return chunked_attention(q_BLHK, k_BMGK, v_BMGR, spec, q_positions_BL, k_positions_BM, q_segment_ids_BL,
                             k_segment_ids_BM, scale=scale, chunk_size=chunk_size, dropout_rate=dropout_rate,
                             dropout_rng=dropout_rng)
  kind = MASK_KINDS[spec.kind]
  flags = contiguous and q_BLHK.shape[1] == k_BMGK.shape[1] and kind.dot_product_flags
  on_gpu = jax.default_backend() == "gpu"
  cudnn_ok = on_gpu and flags and q_BLHK.dtype in (jnp.bfloat16, jnp.float16) and q_BLHK.shape[-1] % 8 == 0
  if flags:
    window = (spec.window - 1, 0) if kind.size == "window" else None
    return jax.nn.dot_product_attention(
        q_BLHK, k_BMGK, v_BMGR, scale=scale, is_causal=kind.masks_later_keys, local_window_size=window,
        implementation="cudnn" if cudnn_ok else "xla")
  allowed_B1LM = spec(q_positions_BL, k_positions_BM, q_segment_ids_BL, k_segment_ids_BM)[:, None]
  return jax.nn.dot_product_attention(q_BLHK, k_BMGK, v_BMGR, mask=allowed_B1LM, scale=scale, implementation="xla")

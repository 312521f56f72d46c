"""Multi-head attention as the classic explanation draws it, with its three ablation axes as knobs.

Each head h computes queries q = W_q e and keys k = W_k e, scores q.k * scale, masks them, takes a
float32 softmax over keys, and mixes the values. The value map is either factored, value_down
(D -> R, one per key/value head) then value_up (R -> D, one per query head), or "full", one D x D
matrix per key/value head with no value_up. The heads' outputs are summed into the residual update,
which is the same as concatenating them and applying an output projection.

Letter key (the same in every file; the README's table has all of it): B batch, L query length, M key
length, D model width, H query heads, G key/value heads, K query/key head width, R value width (rank),
F MLP hidden width, V vocabulary, N layers; Q = H / G query heads per key/value head, C keys per block and
J key blocks of the chunked kernel, I the three stacked projections (query, key, value), U the frequencies
of a position encoding (one per pair of features). Einsum strings use these letters, so names and
contractions check each other.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer import kernels
from transformer.config import ModelConfig
from transformer.masks import MaskSpec
from transformer.ops import dense, dense_init, unstack_axis_2, zeros_init
from transformer.positions import apply_rope

# Logical axis names of every parameter: the runner's rules map them onto a device mesh.
EMBED, HEADS, KV_HEADS, HEAD_DIM, VALUE_RANK = "embed", "heads", "kv_heads", "head_dim", "value_rank"


class MultiHeadAttention(nn.Module):
  """Self-attention with H query heads, G key/value heads, a mask and a (factored) value map.

  Parameters (stable names: they are checkpoint paths and metric names):
    query [D,H,K], key [D,G,K]; value_down [D,G,R] and value_up [H,R,D] when factored, or
    value [D,G,D] when full; with biases, query_bias [H,K], key_bias [G,K], value_down_bias [G,R]
    and value_up_bias [D], or value_bias [G,D].
  With 'intermediates' mutable, the reference implementation sows `attention_weights` [B,H,L,M].
  With decode=True, keys and values go to a 'cache' collection and queries attend to the cache.
  """

  config: ModelConfig

  @nn.compact
  def __call__(
      self,
      x_BLD: jax.Array,
      positions_BL: jax.Array,
      segment_ids_BL: jax.Array | None = None,
      deterministic: bool = True,
      decode: bool = False,
  ) -> jax.Array:
    """Returns the residual update update_BLD (the heads' outputs summed).

    Args:
      x_BLD: the (normalized) residual stream.
      positions_BL: position of each token in its sequence or packed segment.
      segment_ids_BL: packed-sequence ids (a token attends only within its segment), or None.
      deterministic: False applies attention dropout (needs the 'dropout' RNG).
      decode: attend to (and extend) the key/value cache instead of to x alone.
    """
    c = self.config
    # Queries, keys and values (value-down). Self-attention: the keys are of the same tokens as the queries,
    # so M = L, until decoding replaces them by the whole cache.
    q_BLHK, k_BMGK, v_BMGR = self._queries_keys_values(x_BLD.astype(c.dtype))
    k_positions_BM, k_segment_ids_BM = positions_BL, segment_ids_BL
    if c.positions == "rope":
      q_BLHK = apply_rope(q_BLHK, positions_BL, c.rope_base)
      k_BMGK = apply_rope(k_BMGK, k_positions_BM, c.rope_base)
    spec = MaskSpec.from_config(c)
    contiguous = segment_ids_BL is None
    if decode:
      k_BMGK, v_BMGR, k_positions_BM = self._extend_cache(k_BMGK, v_BMGR, segment_ids_BL)
      contiguous = False

    # Scores, mask, float32 softmax and the mix of values: one of the kernels (kernels.py).
    rate = c.attention_dropout_rate
    dropout_rng = self.make_rng("dropout") if not deterministic and rate > 0.0 else None
    # Decoding attends to the cache (more keys than queries): one tile.
    query_tiles = 1 if decode else kernels.query_tiles_for(spec.kind, q_BLHK.shape[1])
    inputs = (q_BLHK, k_BMGK, v_BMGR, spec, positions_BL, k_positions_BM, segment_ids_BL, k_segment_ids_BM)
    options = dict(scale=c.scale, chunk_size=c.chunk_size, dropout_rate=rate, dropout_rng=dropout_rng,
                   query_tiles=query_tiles, contiguous=contiguous)
    if c.attention_impl == "reference" or decode:
      mixed_BLHR, weights_BHLM = kernels.reference_attention(*inputs, **options)
      if self.is_mutable_collection("intermediates"):
        self.sow("intermediates", "attention_weights", weights_BHLM)
    else:
      core = kernels.chunked_attention if c.attention_impl == "chunked" else kernels.auto_attention
      mixed_BLHR = core(*inputs, **options)

    # Value-up, and the heads summed.
    return self._value_up(mixed_BLHR)

  def _param(self, name, shape, names, std=None):
    init = zeros_init(names) if std is None else dense_init(std, names)
    return self.param(name, init, shape, jnp.float32)

  def _kernel(self, name, shape, names, bias_names, std):
    """The [D, heads, width] kernel `name` in the compute dtype, and its bias (None without biases)."""
    c = self.config
    kernel = self._param(name, shape, names, std).astype(c.dtype)
    bias = self._param(f"{name}_bias", shape[1:], bias_names).astype(c.dtype) if c.use_bias else None
    return kernel, bias

  def _residual_std(self) -> float:
    # GPT-2 scales the init of the maps that write into the residual stream by 1/sqrt(2N).
    return self.config.init_std / (2 * self.config.num_layers) ** 0.5

  def _queries_keys_values(self, x_BLD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(q_BLHK, k_BMGK, v_BMGR) of the tokens x_BLD: queries, keys, and values (value-down, or full)."""
    c = self.config
    d, h, g, k, r = c.d_model, c.num_heads, c.kv_heads, c.key_dim, c.value_dim
    value_name, value_std = ("value", self._residual_std()) if c.value_mode == "full" else ("value_down", c.init_std)
    query, query_bias = self._kernel("query", (d, h, k), (EMBED, HEADS, HEAD_DIM), (HEADS, HEAD_DIM), c.init_std)
    key, key_bias = self._kernel("key", (d, g, k), (EMBED, KV_HEADS, HEAD_DIM), (KV_HEADS, HEAD_DIM), c.init_std)
    value, value_bias = self._kernel(value_name, (d, g, r), (EMBED, KV_HEADS, VALUE_RANK), (KV_HEADS, VALUE_RANK),
                                     value_std)
    x_BMD = x_BLD  # the keys' tokens
    if h == g and k == r:
      # One matmul for the three projections when their kernels have one shape: a wider matmul uses
      # the CPU better than three narrow ones, and the backward pass has fewer ops (see docs/performance.md).
      qkv_BLIHK = dense(x_BLD, jnp.stack([query, key, value], axis=1), "BLD,DIHK->BLIHK")
      q_BLHK, k_BMGK, v_BMGR = unstack_axis_2(qkv_BLIHK)
    else:
      q_BLHK = dense(x_BLD, query, "BLD,DHK->BLHK")
      k_BMGK = dense(x_BMD, key, "BMD,DGK->BMGK")
      v_BMGR = dense(x_BMD, value, "BMD,DGR->BMGR")
    if c.use_bias:
      # Leading axes written out: the tests run with jax_numpy_rank_promotion="raise".
      q_BLHK = q_BLHK + query_bias[None, None]
      k_BMGK = k_BMGK + key_bias[None, None]
      v_BMGR = v_BMGR + value_bias[None, None]
    return q_BLHK, k_BMGK, v_BMGR

  def _value_up(self, mixed_BLHR: jax.Array) -> jax.Array:
    """update_BLD: each head's mixed values mapped back to D (value-up) and summed over the heads."""
    c = self.config
    if c.value_mode == "full":
      # Full values are already D wide: the heads' outputs are summed as they are.
      return mixed_BLHR.sum(axis=2)
    value_up = self._param("value_up", (c.num_heads, c.value_dim, c.d_model), (HEADS, VALUE_RANK, EMBED),
                           self._residual_std()).astype(c.dtype)
    update_BLD = dense(mixed_BLHR, value_up, "BLHR,HRD->BLD")
    if c.use_bias:
      update_BLD = update_BLD + self._param("value_up_bias", (c.d_model,), (EMBED,)).astype(c.dtype)[None, None]
    return update_BLD

  def _extend_cache(self, k_BLGK, v_BLGR, segment_ids_BL):
    """Writes this call's keys and values at the cache index; returns the whole cache and its key positions.

    Returns:
      (k_BMGK, v_BMGR, k_positions_BM), M the cache's length: as long as the sequence the cache was
      initialized with (see decoding.init_cache). Slots not yet written lie in the future of every query,
      so every mask that decoding allows (masks.MaskKind.decodable) excludes them.
    """
    if not self.config.is_causal:
      raise ValueError(f"decoding needs a mask under which no token sees a later one; mask is "
                       f"{self.config.mask!r}")
    if segment_ids_BL is not None:
      raise ValueError("decoding does not take segment ids: decode one sequence per row")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k_BLGK.shape, k_BLGK.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v_BLGR.shape, v_BLGR.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if self.is_initializing():
      # init() only shapes the cache: its length is the length of the sequence init was called with.
      return k_BLGK, v_BLGR, jnp.broadcast_to(jnp.arange(k_BLGK.shape[1]), k_BLGK.shape[:2])
    b, m = cached_k.value.shape[:2]
    start = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_BLGK, (0, start, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_BLGR, (0, start, 0, 0))
    index.value = start + k_BLGK.shape[1]
    return cached_k.value, cached_v.value, jnp.broadcast_to(jnp.arange(m), (b, m))

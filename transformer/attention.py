"""Multi-head attention as the classic explanation draws it, with its three ablation axes as knobs.

Each head h computes queries q = W_q e and keys k = W_k e, scores q.k * scale, masks them, takes a
float32 softmax over keys, and mixes the values. The value map is either factored, value_down
(D -> R, one per key/value head) then value_up (R -> D, one per query head), or "full", one D x D
matrix per key/value head with no value_up. The heads' outputs are summed into the residual update,
which is the same as concatenating them and applying an output projection.

Letter key (the same in every file): B batch, L query length, M key length, D model width,
H query heads, G key/value heads, K query/key head width, R value width (rank), F MLP hidden width,
V vocabulary, N layers. Einsum strings use these letters, so names and contractions check each other.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from transformer import kernels
from transformer.config import ModelConfig
from transformer.masks import MaskSpec
from transformer.positions import apply_rope

# Logical axis names of every parameter: the runner's rules map them onto a device mesh.
EMBED, HEADS, KV_HEADS, HEAD_DIM, VALUE_RANK = "embed", "heads", "kv_heads", "head_dim", "value_rank"
# The name of dense()'s outputs for rematerialization policies (a custom-VJP matmul is not a dot to them).
DENSE_OUTPUT = "dense_output"


def dense_init(std: float, names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def zeros_init(names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def dense(x: jax.Array, kernel: jax.Array, contracted: int = 1) -> jax.Array:
  """Contracts the last `contracted` axes of x with the first ones of kernel, as one matmul of 2-D x.

  The same as the einsum "...ab,abc->...c". Written with x's leading and contracted axes each merged
  into one, so that the matmuls of the backward pass read their operands in place: from einsums over
  3-D and 4-D operands XLA's CPU backend materialized transposed copies of activations and gradients,
  about half the CPU step time (see docs/performance.md). Merging keeps the sharding of the merged
  axes (the first of each is the major one); the kernel's output axes stay as they are.
  """
  inputs = x.shape[x.ndim - contracted:]
  if kernel.shape[:contracted] != inputs:
    raise ValueError(f"dense: kernel {kernel.shape} does not start with the contracted axes {inputs} of x")
  size = math.prod(inputs)
  y = checkpoint_name(_matmul(x.reshape(-1, size), kernel.reshape(size, *kernel.shape[contracted:])), DENSE_OUTPUT)
  return y.reshape(*x.shape[:x.ndim - contracted], *kernel.shape[contracted:])


@jax.custom_vjp
def _matmul(x_NI: jax.Array, kernel_IO: jax.Array) -> jax.Array:
  """x_NI [N, I] times kernel_IO [I, *O]: [N, *O]. Its VJP gives the input gradient an untransposed kernel."""
  return jax.lax.dot_general(x_NI, kernel_IO, (((1,), (0,)), ((), ())))


def _matmul_forward(x_NI, kernel_IO):
  return _matmul(x_NI, kernel_IO), (x_NI, kernel_IO)


def _matmul_backward(residuals, d_y_NO):
  x_NI, kernel_IO = residuals
  outputs = tuple(range(1, kernel_IO.ndim))
  # The gradient of x is d_y times the kernel transposed. Written as autodiff writes it, a matmul whose
  # right operand is read transposed, XLA's CPU matmuls ran it at about half the speed of the forward
  # one (the small Shakespeare model's MLP, in the step). So the transposed kernel (small: parameters,
  # not activations) is made an array of its own; the barrier stops XLA from folding the transpose back.
  kernel_OI = jax.lax.optimization_barrier(jnp.moveaxis(kernel_IO, 0, -1))
  d_x_NI = jax.lax.dot_general(d_y_NO, kernel_OI, ((outputs, tuple(range(len(outputs)))), ((), ())))
  d_kernel_IO = jax.lax.dot_general(x_NI, d_y_NO, (((0,), (0,)), ((), ())))
  return d_x_NI.astype(x_NI.dtype), d_kernel_IO.astype(kernel_IO.dtype)


_matmul.defvjp(_matmul_forward, _matmul_backward)


@jax.custom_vjp
def _unstack_axis_2(x):
  """The slices x[:, :, i], whose gradient is one stack of their cotangents. Autodiff's own (a padded
  copy per slice, then their sum) cost about 5% of the small CPU model's step."""
  return tuple(x[:, :, i] for i in range(x.shape[2]))


def _unstack_axis_2_forward(x):
  return _unstack_axis_2(x), None


def _unstack_axis_2_backward(_, cotangents):
  return (jnp.stack(cotangents, axis=2),)


_unstack_axis_2.defvjp(_unstack_axis_2_forward, _unstack_axis_2_backward)


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

  def _param(self, name, shape, names, std=None):
    init = zeros_init(names) if std is None else dense_init(std, names)
    return self.param(name, init, shape, jnp.float32)

  def _kernel(self, name, shape, names, bias_names, std):
    """The [D, heads, width] kernel `name` in the compute dtype, and its bias (None without biases)."""
    c = self.config
    kernel = self._param(name, shape, names, std).astype(c.dtype)
    bias = self._param(f"{name}_bias", shape[1:], bias_names).astype(c.dtype) if c.use_bias else None
    return kernel, bias

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
    d, h, g, k, r = c.d_model, c.num_heads, c.kv_heads, c.key_dim, c.value_dim
    x_BLD = x_BLD.astype(c.dtype)
    # GPT-2 scales the init of the maps that write into the residual stream by 1/sqrt(2N).
    residual_std = c.init_std / (2 * c.num_layers) ** 0.5
    value_name, value_std = ("value", residual_std) if c.value_mode == "full" else ("value_down", c.init_std)
    projections = (self._kernel("query", (d, h, k), (EMBED, HEADS, HEAD_DIM), (HEADS, HEAD_DIM), c.init_std),
               self._kernel("key", (d, g, k), (EMBED, KV_HEADS, HEAD_DIM), (KV_HEADS, HEAD_DIM), c.init_std),
               self._kernel(value_name, (d, g, r), (EMBED, KV_HEADS, VALUE_RANK), (KV_HEADS, VALUE_RANK), value_std))
    if h == g and k == r:
      # One matmul for the three projections when their kernels have one shape: a wider matmul uses
      # the CPU better than three narrow ones, and the backward pass has fewer ops.
      qkv_BL3HK = dense(x_BLD, jnp.stack([w for w, _ in projections], axis=1))
      q_BLHK, k_BLGK, v_BLGR = _unstack_axis_2(qkv_BL3HK)
    else:
      q_BLHK, k_BLGK, v_BLGR = (dense(x_BLD, w) for w, _ in projections)
    if c.use_bias:
      # Leading axes written out: the tests run with jax_numpy_rank_promotion="raise".
      q_BLHK, k_BLGK, v_BLGR = (y + b[None, None] for y, (_, b) in zip((q_BLHK, k_BLGK, v_BLGR), projections))
    if c.positions == "rope":
      q_BLHK = apply_rope(q_BLHK, positions_BL, c.rope_base)
      k_BLGK = apply_rope(k_BLGK, positions_BL, c.rope_base)

    spec = MaskSpec.from_config(c)
    k_positions_BM, k_segment_ids_BM = positions_BL, segment_ids_BL
    contiguous = segment_ids_BL is None
    if decode:
      k_BLGK, v_BLGR, k_positions_BM = self._extend_cache(k_BLGK, v_BLGR, segment_ids_BL)
      contiguous = False

    rate = c.attention_dropout_rate
    dropout_rng = self.make_rng("dropout") if not deterministic and rate > 0.0 else None
    # Decoding attends to the cache (more keys than queries): one tile.
    query_tiles = 1 if decode else kernels.query_tiles_for(spec.kind, q_BLHK.shape[1])
    if c.attention_impl == "reference" or decode:
      allowed_BLM = spec(positions_BL, k_positions_BM, segment_ids_BL, k_segment_ids_BM)
      mixed_BLHR, weights_BHLM = kernels.reference_attention(
          q_BLHK, k_BLGK, v_BLGR, allowed_BLM, scale=c.scale, dropout_rate=rate, dropout_rng=dropout_rng,
          query_tiles=query_tiles)
      if self.is_mutable_collection("intermediates"):
        self.sow("intermediates", "attention_weights", weights_BHLM)
    else:
      core = kernels.chunked_attention if c.attention_impl == "chunked" else kernels.auto_attention
      extra = {"contiguous": contiguous} if c.attention_impl == "auto" else {"query_tiles": query_tiles}
      mixed_BLHR = core(q_BLHK, k_BLGK, v_BLGR, spec, positions_BL, k_positions_BM, segment_ids_BL,
                        k_segment_ids_BM, scale=c.scale, chunk_size=c.chunk_size, dropout_rate=rate,
                        dropout_rng=dropout_rng, **extra)

    if c.value_mode == "full":
      # Full values are already D wide: the heads' outputs are summed as they are.
      update_BLD = mixed_BLHR.sum(axis=2)
    else:
      value_up = self._param("value_up", (h, r, d), (HEADS, VALUE_RANK, EMBED), residual_std).astype(c.dtype)
      update_BLD = dense(mixed_BLHR, value_up, contracted=2)  # BLHR,HRD->BLD
      if c.use_bias:
        update_BLD = update_BLD + self._param("value_up_bias", (d,), (EMBED,)).astype(c.dtype)[None, None]
    return update_BLD

  def _extend_cache(self, k_BLGK, v_BLGR, segment_ids_BL):
    """Writes this call's keys and values at the cache index; returns the whole cache and key positions.

    The cache is as long as the sequence the cache was initialized with (see decoding.init_cache).
    Slots not yet written lie in the future of every query, so the causal masks exclude them.
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

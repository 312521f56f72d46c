"""The language model: embeddings (plus positions), N blocks of attention and MLP, unembedding.

Letter key as in attention.py: B batch, L length, D width, F MLP hidden width, V vocabulary.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer.attention import EMBED, MultiHeadAttention
from transformer.config import ModelConfig
from transformer.ops import DENSE_OUTPUT, dense, dense_init, dropout_scale, zeros_init
from transformer.positions import sinusoidal_table

MLP, VOCAB, LAYERS = "mlp", "vocab", "layers"

_policies = jax.checkpoint_policies
# The projections (dense()) are custom-VJP matmuls that the dot policies do not see: their outputs are named.
REMAT_POLICIES = {
    "full": _policies.nothing_saveable,
    "dots": _policies.save_from_both_policies(_policies.checkpoint_dots, _policies.save_only_these_names(DENSE_OUTPUT)),
    "dots_no_batch": _policies.save_from_both_policies(_policies.dots_with_no_batch_dims_saveable,
                                                       _policies.save_only_these_names(DENSE_OUTPUT)),
}


class Dropout(nn.Module):
  """Zeroes each element with probability `rate` and scales the rest by 1 / (1 - rate), as nn.Dropout.

  Its masks come from ops.dropout_scale (a counter hash, much cheaper than nn.Dropout's threefry-2x32 on
  CPU: see docs/performance.md); each call draws a new key from the 'dropout' RNG stream.
  """

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    return x * dropout_scale(self.make_rng("dropout"), self.rate, x.shape).astype(x.dtype)


class LayerNorm(nn.Module):
  """LayerNorm in float32 (its variance of bfloat16 inputs is too coarse), with logical axis names."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    c = self.config
    x = x_BLD.astype(jnp.float32)
    mean = x.mean(axis=-1, keepdims=True)
    variance = jnp.square(x - mean).mean(axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(variance + c.layer_norm_epsilon)
    # Leading axes written out (here and below): the tests run with jax_numpy_rank_promotion="raise".
    y = y * self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (EMBED,)),
                       (c.d_model,), jnp.float32)[None, None]
    if c.use_bias:
      y = y + self.param("bias", zeros_init((EMBED,)), (c.d_model,), jnp.float32)[None, None]
    return y.astype(c.dtype)


class Mlp(nn.Module):
  """Two dense layers with a GELU between: D -> F -> D."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    c = self.config
    f = c.hidden_dim
    up = self.param("up", dense_init(c.init_std, (EMBED, MLP)), (c.d_model, f), jnp.float32)
    h_BLF = dense(x_BLD, up.astype(c.dtype), "BLD,DF->BLF")
    if c.use_bias:
      h_BLF = h_BLF + self.param("up_bias", zeros_init((MLP,)), (f,), jnp.float32).astype(c.dtype)[None, None]
    h_BLF = nn.gelu(h_BLF)
    # GPT-2 scales the init of the layers that write into the residual stream by 1/sqrt(2N).
    down_std = c.init_std / (2 * c.num_layers) ** 0.5
    down = self.param("down", dense_init(down_std, (MLP, EMBED)), (f, c.d_model), jnp.float32)
    y_BLD = dense(h_BLF, down.astype(c.dtype), "BLF,FD->BLD")
    if c.use_bias:
      y_BLD = y_BLD + self.param("down_bias", zeros_init((EMBED,)), (c.d_model,),
                                 jnp.float32).astype(c.dtype)[None, None]
    return y_BLD


class Block(nn.Module):
  """One residual block: attention then MLP, each normalized before (pre-LN) or after (post-LN)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BLD, positions_BL, segment_ids_BL=None, deterministic=True, decode=False):
    c = self.config
    dropout = Dropout(c.dropout_rate)
    attention = MultiHeadAttention(c, name="attention")
    mlp = Mlp(c, name="mlp")
    if c.post_ln:
      x_BLD = LayerNorm(c, name="attention_norm")(
          x_BLD + dropout(attention(x_BLD, positions_BL, segment_ids_BL, deterministic, decode), deterministic))
      x_BLD = LayerNorm(c, name="mlp_norm")(x_BLD + dropout(mlp(x_BLD), deterministic))
    else:
      x_BLD = x_BLD + dropout(attention(LayerNorm(c, name="attention_norm")(x_BLD), positions_BL, segment_ids_BL,
                                        deterministic, decode), deterministic)
      x_BLD = x_BLD + dropout(mlp(LayerNorm(c, name="mlp_norm")(x_BLD)), deterministic)
    # The residual stream after each block, for inspection (a no-op unless 'intermediates' is mutable).
    self.sow("intermediates", "residual", x_BLD)
    return x_BLD


class ScannedBlock(nn.Module):
  """Block with the (carry, output) signature nn.scan wants."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BLD, positions_BL, segment_ids_BL, deterministic, decode):
    block = Block
    if self.config.remat_policy != "none":
      block = nn.remat(Block, policy=REMAT_POLICIES[self.config.remat_policy], static_argnums=(4, 5))
    return block(self.config, name="block")(x_BLD, positions_BL, segment_ids_BL, deterministic, decode), None


class TransformerLM(nn.Module):
  """A decoder (or, with mask "none", encoder) language model returning next-token logits."""

  config: ModelConfig

  @nn.compact
  def __call__(
      self,
      tokens_BL: jax.Array,
      positions_BL: jax.Array | None = None,
      segment_ids_BL: jax.Array | None = None,
      deterministic: bool = True,
      decode: bool = False,
  ) -> jax.Array:
    """Returns logits_BLV in float32.

    Args:
      tokens_BL: token ids.
      positions_BL: position of each token in its sequence or packed segment (default 0..L-1).
      segment_ids_BL: packed-sequence ids; tokens attend only within their segment.
      deterministic: False applies dropout (needs the 'dropout' RNG).
      decode: use and extend the key/value cache (see decoding.py).
    """
    c = self.config
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)
    sinusoidal = c.positions == "sinusoidal"
    # Sinusoidal positions as the 2017 paper adds them: to embeddings multiplied by sqrt(D), initialized with std
    # 1/sqrt(D) (tensor2tensor's), so token entries of std 1 meet the table's RMS of 1/sqrt(2). The GPT-2 init
    # (std 0.02) times sqrt(D) would leave positions several times larger than tokens (sqrt(D/2) against 0.02 D),
    # and unscaled, ~35 times larger at D = 128: on a small recall task both stayed at chance where learned
    # positions and these left it (tests/test_positions.py).
    embed = nn.Embed(c.vocab_size, c.d_model,
                     embedding_init=dense_init(c.d_model ** -0.5 if sinusoidal else c.init_std, (VOCAB, EMBED)),
                     param_dtype=jnp.float32, dtype=c.dtype, name="embed")
    x_BLD = embed(tokens_BL)
    if c.positions == "learned":
      table = self.param("position_embedding", dense_init(c.init_std / 2, (None, EMBED)), (c.max_len, c.d_model),
                         jnp.float32)
      x_BLD = x_BLD + jnp.take(table, positions_BL, axis=0).astype(c.dtype)
    elif sinusoidal:
      # The tied unembedding reads the embedding unscaled, as in the paper.
      x_BLD = x_BLD * c.d_model ** 0.5 + jnp.take(jnp.asarray(sinusoidal_table(c.max_len, c.d_model)), positions_BL,
                                                   axis=0).astype(c.dtype)
    x_BLD = Dropout(c.dropout_rate)(x_BLD, deterministic)

    if c.scan_layers:
      blocks = nn.scan(
          ScannedBlock,
          variable_axes={"params": 0, "cache": 0, "intermediates": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
          length=c.num_layers,
          metadata_params={nn.PARTITION_NAME: LAYERS},
      )(c, name="blocks")
      x_BLD, _ = blocks(x_BLD, positions_BL, segment_ids_BL, deterministic, decode)
    else:
      for i in range(c.num_layers):
        x_BLD = Block(c, name=f"block_{i}")(x_BLD, positions_BL, segment_ids_BL, deterministic, decode)

    if not c.post_ln:
      x_BLD = LayerNorm(c, name="final_norm")(x_BLD)
    if c.tie_embeddings:
      logits_BLV = dense(x_BLD, embed.embedding.astype(c.dtype).T, "BLD,DV->BLV")
    else:
      unembed = self.param("unembed", dense_init(c.init_std, (EMBED, VOCAB)), (c.d_model, c.vocab_size), jnp.float32)
      logits_BLV = dense(x_BLD, unembed.astype(c.dtype), "BLD,DV->BLV")
    return logits_BLV.astype(jnp.float32)

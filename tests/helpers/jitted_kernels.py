"""The three attention kernels of transformer/kernels.py, jitted with their static arguments named, so that the
kernel tests call each with positional arrays and compile each configuration once."""

from __future__ import annotations

import functools

import jax

from transformer import kernels


@functools.partial(jax.jit, static_argnames=("spec", "scale"))
def reference(q, k, v, q_pos, k_pos, q_seg, k_seg, *, spec, scale):
  """kernels.reference_attention: (mixed_BLHR, weights_BHLM)."""
  return kernels.reference_attention(q, k, v, spec, q_pos, k_pos, q_seg, k_seg, scale=scale)


@functools.partial(jax.jit, static_argnames=("spec", "scale", "chunk_size", "dropout_rate"))
def chunked(q, k, v, q_pos, k_pos, q_seg, k_seg, rng=None, *, spec, scale, chunk_size, dropout_rate=0.0):
  """kernels.chunked_attention: mixed_BLHR."""
  return kernels.chunked_attention(q, k, v, spec, q_pos, k_pos, q_seg, k_seg, scale=scale, chunk_size=chunk_size,
                                   dropout_rate=dropout_rate, dropout_rng=rng)


@functools.partial(jax.jit, static_argnames=("spec", "scale", "chunk_size", "dropout_rate", "contiguous"))
def auto(q, k, v, q_pos, k_pos, q_seg, k_seg, rng=None, *, spec, scale, chunk_size=2, dropout_rate=0.0,
         contiguous=False):
  """kernels.auto_attention: mixed_BLHR."""
  return kernels.auto_attention(q, k, v, spec, q_pos, k_pos, q_seg, k_seg, scale=scale, chunk_size=chunk_size,
                                dropout_rate=dropout_rate, dropout_rng=rng, contiguous=contiguous)

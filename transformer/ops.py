"""The operations under the modules: parameter initializers, projections as 2-D matmuls, dropout masks.

They are written the long way for XLA's CPU backend: each says which faster form it replaces and why, so that
attention.py and model.py can read as the math.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

# The name of dense()'s outputs for rematerialization policies (a custom-VJP matmul is not a dot to them).
DENSE_OUTPUT = "dense_output"


def dense_init(std: float, names: tuple[str | None, ...]):
  """A normal(std) initializer whose parameter carries the logical axis `names`."""
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def zeros_init(names: tuple[str | None, ...]):
  """A zeros initializer whose parameter carries the logical axis `names`."""
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _contraction(spec: str, x: jax.Array, kernel: jax.Array) -> int:
  """How many trailing axes of x the einsum `spec` contracts with kernel's leading ones; checks the form."""
  operands, _, y_axes = spec.partition("->")
  x_axes, _, kernel_axes = operands.partition(",")
  if len(x_axes) != x.ndim or len(kernel_axes) != kernel.ndim:
    raise ValueError(f"dense: {spec!r} names {len(x_axes)} and {len(kernel_axes)} axes; x and kernel have "
                     f"{x.ndim} and {kernel.ndim}")
  contracted = sum(axis in x_axes for axis in kernel_axes)
  kept = x_axes[:len(x_axes) - contracted]
  letters = kept + kernel_axes
  if (not contracted or x_axes != kept + kernel_axes[:contracted] or y_axes != kept + kernel_axes[contracted:]
      or len(set(letters)) != len(letters) or not letters.isalpha()):
    raise ValueError(f"dense: {spec!r} is not of the form '<kept><contracted>,<contracted><outputs>-><kept><outputs>' "
                     "(x's leading axes kept, its trailing ones contracted with the kernel's leading ones)")
  return contracted


def dense(x: jax.Array, kernel: jax.Array, spec: str) -> jax.Array:
  """The einsum `spec` of x and kernel, e.g. "BLD,DHK->BLHK", computed as one matmul of 2-D x.

  Only einsums that keep x's leading axes and contract its trailing ones with kernel's leading ones are
  supported; the string is checked against that form and the operands' ranks. Written with x's leading
  and contracted axes each merged into one, so that the matmuls of the backward pass read their operands
  in place: from einsums over 3-D and 4-D operands XLA's CPU backend materialized transposed copies of
  activations and gradients (see docs/performance.md). Merging keeps the sharding of the merged axes (the
  first of each is the major one); the kernel's output axes stay as they are.

  Args:
    x: the activations.
    kernel: the weights; its leading axes are the contracted trailing axes of x.
    spec: the einsum, in the letter key.

  Returns:
    The einsum's result, of x's kept axes and kernel's output axes.
  """
  contracted = _contraction(spec, x, kernel)
  inputs = x.shape[x.ndim - contracted:]
  if kernel.shape[:contracted] != inputs:
    raise ValueError(f"dense: kernel {kernel.shape} does not start with the contracted axes {inputs} of x")
  size = math.prod(inputs)
  y = checkpoint_name(_matmul(x.reshape(-1, size), kernel.reshape(size, *kernel.shape[contracted:])), DENSE_OUTPUT)
  return y.reshape(*x.shape[:x.ndim - contracted], *kernel.shape[contracted:])


@jax.custom_vjp
def _matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [rows, inputs] times kernel [inputs, *outputs]. Its VJP gives the input gradient an untransposed kernel."""
  return jax.lax.dot_general(x, kernel, (((1,), (0,)), ((), ())))


def _matmul_forward(x, kernel):
  return _matmul(x, kernel), (x, kernel)


def _matmul_backward(residuals, d_y):
  x, kernel = residuals
  outputs = tuple(range(1, kernel.ndim))
  # The gradient of x is d_y times the kernel transposed. Written as autodiff writes it, a matmul whose
  # right operand is read transposed, XLA's CPU matmuls ran it much slower than the forward one (see
  # docs/performance.md). So the transposed kernel (small: parameters, not activations) is made an array
  # of its own; the barrier stops XLA from folding the transpose back.
  kernel_transposed = jax.lax.optimization_barrier(jnp.moveaxis(kernel, 0, -1))
  d_x = jax.lax.dot_general(d_y, kernel_transposed, ((outputs, tuple(range(len(outputs)))), ((), ())))
  d_kernel = jax.lax.dot_general(x, d_y, (((0,), (0,)), ((), ())))
  return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)


_matmul.defvjp(_matmul_forward, _matmul_backward)


@jax.custom_vjp
def unstack_axis_2(x: jax.Array) -> tuple[jax.Array, ...]:
  """The slices x[:, :, i], whose gradient is one stack of their cotangents.

  Autodiff's own gradient (a padded copy per slice, then their sum) cost a measurable part of the CPU step
  (see docs/performance.md).
  """
  return tuple(x[:, :, i] for i in range(x.shape[2]))


def _unstack_axis_2_forward(x):
  return unstack_axis_2(x), None


def _unstack_axis_2_backward(_, cotangents):
  return (jnp.stack(cotangents, axis=2),)


unstack_axis_2.defvjp(_unstack_axis_2_forward, _unstack_axis_2_backward)


# The generator of dropout masks. JAX's generators cost far more than a mask needs (see docs/performance.md):
# threefry2x32 is lowered on CPU as a loop that XLA does not fuse; threefry4x32 fuses into the mask's consumer
# but computes a whole 4-word block, some 340 integer operations, for every element it keeps one word of;
# philox4x32 cannot be compiled once the mask is sharded (JAX 0.10.2: chlo.mulhi, "Unable to convert MHLO to
# StableHLO"). A mask needs independent-looking bits, not a cryptographic stream, so each element hashes its
# own index with two rounds of murmur3's finalizer, keyed by 64 bits of the layer's key: some fifteen
# operations, with an index that is global, so the bits do not depend on the sharding.
_MIX_MULTIPLIERS = (0x85EBCA6B, 0xC2B2AE35)  # murmur3's fmix32 constants
_FLAT_INDEX_LIMIT = 2**32  # elements one uint32 index can number


def _mix32(h: jax.Array) -> jax.Array:
  """murmur3's fmix32: a bijection of uint32 in which every output bit depends on every input bit."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(_MIX_MULTIPLIERS[0])
  h = h ^ (h >> 13)
  h = h * jnp.uint32(_MIX_MULTIPLIERS[1])
  return h ^ (h >> 16)


def element_counters(shape: tuple[int, ...], flat_index_limit: int = _FLAT_INDEX_LIMIT) -> list[jax.Array]:
  """uint32 arrays of `shape` that together tell every element apart.

  One flat index over the trailing axes whose size fits in `flat_index_limit`, after the index along each
  leading axis (there are none below 2**32 elements, which is every mask in practice).
  """
  if any(size > flat_index_limit for size in shape):
    raise ValueError(f"dropout over an axis of more than {flat_index_limit} elements (shape {shape}) is not supported")
  first_flat, flat_size = len(shape), 1
  while first_flat > 0 and flat_size * shape[first_flat - 1] <= flat_index_limit:
    first_flat -= 1
    flat_size *= shape[first_flat]
  flat, stride = jnp.zeros(shape, jnp.uint32), 1
  for axis in reversed(range(first_flat, len(shape))):
    flat = flat + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  return [jax.lax.broadcasted_iota(jnp.uint32, shape, axis) for axis in range(first_flat)] + [flat]


def dropout_scale(rng: jax.Array, rate: float, shape, flat_index_limit: int = _FLAT_INDEX_LIMIT) -> jax.Array:
  """1 / (1 - rate) where an element is kept and 0 where dropped, each dropped with probability `rate`.

  The same key gives the same mask, however the mask is sharded (see the generator's note above).
  """
  shape = tuple(shape)
  seeds = jax.random.bits(rng, (2,), jnp.uint32)
  bits = seeds[0]
  for counter in element_counters(shape, flat_index_limit):
    bits = _mix32(bits ^ counter)
  bits = _mix32(bits + seeds[1])
  drop_below = jnp.uint32(min(round(rate * 2**32), 2**32 - 1))
  return jnp.where(bits >= drop_below, jnp.float32(1.0 / (1.0 - rate)), jnp.float32(0.0))

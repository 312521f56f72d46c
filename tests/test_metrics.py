"""Tests of experiments/metrics.py: the CPU matmul peak that MFU is measured against."""

import math

import jax.numpy as jnp

from experiments import metrics


def test_cpu_peak_is_measured_in_the_compute_dtype(monkeypatch):
  # A bfloat16 run measured against the float32 peak reported about twice its MFU on the project's CPU.
  operand_dtypes = []
  ones = jnp.ones

  def recording_ones(shape, dtype=None):
    operand_dtypes.append(jnp.dtype(dtype))
    return ones(shape, dtype)

  monkeypatch.setattr(metrics.jnp, "ones", recording_ones)
  for dtype in ("float32", "bfloat16"):
    operand_dtypes.clear()
    peak, source = metrics.device_peak_flops(dtype)
    assert source == f"measured {dtype} matmul"
    assert operand_dtypes == [jnp.dtype(dtype)]
    assert math.isfinite(peak) and peak > 0

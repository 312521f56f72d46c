"""Tests of experiments/metrics.py: the CPU matmul peak that MFU is measured against."""

import math

from experiments import metrics


def test_cpu_peak_is_measured_in_the_compute_dtype():
  # A bfloat16 run measured against the float32 peak reported about twice its MFU on the project's CPU.
  for dtype in ("float32", "bfloat16"):
    peak, source = metrics.device_peak_flops(dtype)
    assert source == f"measured {dtype} matmul"
    assert math.isfinite(peak) and peak > 0

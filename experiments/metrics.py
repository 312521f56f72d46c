"""Where metrics go: metrics.jsonl, TensorBoard event files, a progress bar, and summary.json.

Also the device peak that MFU divides by: a table for accelerators, a measured matmul peak on CPUs.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.files import METRICS_FILE

# Dense peak FLOP/s per device: (bfloat16, float32 as the default matmul precision runs it).
# On NVIDIA GPUs float32 matmuls use TF32 tensor cores by default in XLA.
ACCELERATOR_PEAKS = {
    "h200": (989e12, 494e12),
    "h100": (989e12, 494e12),
    "a100": (312e12, 156e12),
    "l4": (121e12, 60e12),
    "a10": (125e12, 62e12),
    "v100": (125e12, 15.7e12),
    "tpu v6": (918e12, 918e12),
    "tpu v5p": (459e12, 459e12),
    "tpu v5 lite": (197e12, 197e12),
    "tpu v5e": (197e12, 197e12),
    "tpu v4": (275e12, 275e12),
}


def measure_matmul_peak(dtype: str = "float32", size: int = 1024, repeats: int = 10) -> float:
  """FLOP/s of a jitted matmul in `dtype` on the default device: the CPU 'peak' MFU is measured against.

  The fastest of `repeats` runs: a peak is what the machine can do, and on a shared machine the median
  of a few runs moved by a fifth from one measurement to the next. In the compute dtype, accumulated in
  float32 as the model's matmuls are: on the project's CPU (AVX512-BF16) that ran at about twice the
  float32 matmul's FLOP/s.
  """
  a = jnp.ones((size, size), jnp.dtype(dtype))
  matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  matmul(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * size**3 / min(times)


def device_peak_flops(dtype: str) -> tuple[float, str]:
  """Peak FLOP/s of all devices together, and where the figure comes from."""
  device = jax.devices()[0]
  kind = device.device_kind.lower()
  if device.platform != "cpu":
    for name, (bf16, fp32) in ACCELERATOR_PEAKS.items():
      if name in kind:
        return (bf16 if dtype == "bfloat16" else fp32) * jax.device_count(), f"table ({device.device_kind})"
    return math.nan, f"unknown accelerator {device.device_kind!r}: no MFU"
  # One XLA CPU device runs on all of the host's cores, so a measured matmul is its peak.
  return measure_matmul_peak(dtype) * jax.process_count(), f"measured {dtype} matmul"


class MetricWriter:
  """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard.

  Only process 0 writes; other processes get a writer that does nothing.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tensorboard = None
    if enabled:
      self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a", encoding="utf-8")
      from tensorboardX import SummaryWriter  # imported here: only the writing process needs it

      self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    """Records scalar metrics of one step."""
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    self._jsonl.flush()
    for name, value in clean.items():
      self._tensorboard.add_scalar(name, value, int(step))

  def write_image(self, step: int, name: str, image_HWC: np.ndarray) -> None:
    """Records an RGB image (uint8 [H,W,3]) in TensorBoard."""
    if self.enabled:
      self._tensorboard.add_image(name, image_HWC, int(step), dataformats="HWC")

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tensorboard.close()

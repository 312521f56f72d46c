"""What every benchmark prints first: the machine and the library versions it ran with."""

from __future__ import annotations

import os
import platform

import jax


# Vector extensions that decide how fast XLA's and PyTorch's CPU kernels run, as /proc/cpuinfo names them.
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def cpu_model() -> str:
  """The CPU's model name as the kernel reports it, with its vector extensions (virtual machines may hide the model)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      lines = f.read().splitlines()
  except OSError:
    return platform.machine()
  names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
  flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
  isa = [flag for flag in _ISA_FLAGS if flag in flags]
  return (names[0] if names else platform.machine()) + (f" [{' '.join(isa)}]" if isa else "")


def machine_line() -> str:
  return (f"machine: {cpu_model()} ({platform.machine()}), {os.cpu_count()} CPUs, devices {jax.devices()}; "
          f"jax {jax.__version__}, Python {platform.python_version()}")


def recipe_line(config) -> str:
  """The sizes of a config's model and step that its timings depend on, as the benchmarks print them."""
  m, t = config.model, config.train
  return (f"recipe: {m.num_layers} layers, {m.num_heads} heads, width {m.d_model}, context {config.data.seq_len}, "
          f"batch {t.batch_size}, attention {m.attention_impl}, dtype {m.dtype}, dropout {m.dropout_rate}, "
          f"{t.steps_per_call} steps per call")

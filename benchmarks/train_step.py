r"""Train-step time, tokens/s, compile time, memory and MFU for a few model sizes and attention implementations.

  python -m benchmarks.train_step [--sizes=tiny,small] [--impls=reference,chunked,auto] [--steps=10]

Uses the runner's own Trainer (the general code path every ablation uses) on the associative-recall
task at each size's sequence length. Prints a Markdown table with the machine and library versions.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time

import jax
from absl import app, flags

from configs import base
from experiments import sharding, validation
from experiments.metrics import device_peak_flops
from experiments.runner import Trainer
from transformer.accounting import flops_per_token, parameter_counts

SIZES = {
    # name: (layers, d_model, heads, seq_len, batch)
    "tiny": (2, 64, 2, 64, 32),
    "small": (4, 128, 4, 64, 12),  # nanoGPT's CPU Shakespeare shape
    "medium": (6, 384, 6, 256, 8),
}

_SIZES = flags.DEFINE_list("sizes", ["tiny", "small"], f"Model sizes among {', '.join(SIZES)}.")
_IMPLS = flags.DEFINE_list("impls", ["reference", "chunked", "auto"], "Attention implementations.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per configuration (after one warm-up step).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype.")


def benchmark(size: str, impl: str, steps: int, dtype: str, data_dir: str) -> dict[str, float]:
  layers, width, heads, seq_len, batch = SIZES[size]
  c = base.get_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads = layers, width, heads
  c.model.attention_impl, c.model.dtype, c.model.chunk_size = impl, dtype, min(64, seq_len)
  c.data.seq_len, c.data.vocab_size, c.data.num_train, c.data.num_validation = seq_len, 64, 2048, 64
  c.data.data_dir = data_dir
  c.train.batch_size, c.train.steps, c.optimizer.warmup_steps = batch, steps + 1, 1
  config = validation.resolve(c)
  trainer = Trainer(config, data_dir)
  state = trainer.initial_state()
  iterator = trainer.new_train_iterator()
  batch_arrays = sharding.global_batch(next(iterator), trainer.mesh)
  start = time.perf_counter()
  compiled = trainer.train_step.lower(state, batch_arrays).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  peak_bytes = (memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
                if memory is not None else float("nan"))
  state, metrics = compiled(state, batch_arrays)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    batch_arrays = sharding.global_batch(next(iterator), trainer.mesh)
    start = time.perf_counter()
    state, metrics = compiled(state, batch_arrays)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  tokens_per_s = batch * seq_len / step_s
  return {"params": parameter_counts(trainer.model_config)["total"], "compile_s": compile_s, "step_ms": 1e3 * step_s,
          "spread_ms": 1e3 * (max(times) - min(times)), "tokens_per_s": tokens_per_s, "peak_mib": peak_bytes / 2**20,
          "flops_token": flops_per_token(trainer.model_config, seq_len)}


def main(argv):
  del argv
  peak, source = device_peak_flops(_DTYPE.value)
  print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
        f"devices {jax.devices()}; jax {jax.__version__}; {platform.python_version()}")
  print(f"peak: {peak / 1e9:,.1f} GFLOP/s ({source}); dtype {_DTYPE.value}; {_STEPS.value} timed steps, median\n")
  print("| size | impl | params | compile s | step ms (spread) | tokens/s | memory MiB | MFU |")
  print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
  with tempfile.TemporaryDirectory() as data_dir:
    for size in _SIZES.value:
      for impl in _IMPLS.value:
        r = benchmark(size, impl, _STEPS.value, _DTYPE.value, data_dir)
        mfu = r["flops_token"] * r["tokens_per_s"] / peak
        print(f"| {size} | {impl} | {r['params']:,} | {r['compile_s']:.1f} | {r['step_ms']:.1f} "
              f"({r['spread_ms']:.1f}) | {r['tokens_per_s']:,.0f} | {r['peak_mib']:.1f} | {100 * mfu:.1f}% |",
              flush=True)


if __name__ == "__main__":
  app.run(main)

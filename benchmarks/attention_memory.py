r"""Attention implementations against sequence length: peak memory and time of a training step's gradient.

  python -m benchmarks.attention_memory [--lengths=1024,8192,16384,32768] [--impls=reference,chunked,auto]
      [--timed_up_to=8192] [--repeats=5] [--dtype=bfloat16]

One layer of the :cpu Shakespeare shape (width 128, 4 heads), batch 1, causal mask: the gradient of the
mean next-token loss with respect to the parameters, jitted. Memory is XLA's own account of the compiled
program (arguments + outputs + temporaries, `compiled.memory_analysis()`), so it is known even where the
program would not fit in this machine's memory; time is the median of `--repeats` runs, measured only up
to `--timed_up_to` tokens. Prints a Markdown table with the machine and versions.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks.common import machine_line

from transformer import ModelConfig, TransformerLM

_LENGTHS = flags.DEFINE_list("lengths", ["1024", "8192", "16384", "32768"], "Sequence lengths T.")
_IMPLS = flags.DEFINE_list("impls", ["reference", "chunked"], "Attention implementations.")
_TIMED_UP_TO = flags.DEFINE_integer("timed_up_to", 8192, "Run (not only compile) lengths up to this.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per point (after one warm-up run).")
_CHUNK = flags.DEFINE_integer("chunk_size", 128, "Key block of the chunked implementation.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "model.dtype (cuDNN's flash attention, "
                           "which `auto` calls on GPUs, needs bfloat16).")


def gradient_fn(config: ModelConfig):
  model = TransformerLM(config)

  def loss(params, tokens_BL):
    logits_BLV = model.apply({"params": params}, tokens_BL[:, :-1])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits_BLV), tokens_BL[:, 1:, None], axis=-1))

  return jax.jit(jax.grad(loss))


def measure(impl: str, length: int, timed: bool) -> dict[str, float]:
  config = ModelConfig(vocab_size=66, max_len=length, num_layers=1, d_model=128, num_heads=4, use_bias=False,
                       attention_impl=impl, chunk_size=_CHUNK.value, dtype=_DTYPE.value)
  tokens = jnp.zeros((1, length + 1), jnp.int32)
  params = jax.eval_shape(lambda: TransformerLM(config).init(jax.random.key(0), tokens[:, :-1]))["params"]
  start = time.perf_counter()
  compiled = gradient_fn(config).lower(params, tokens).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  peak = memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
  result = {"peak_mib": peak / 2**20, "compile_s": compile_s, "ms": float("nan")}
  if timed:
    concrete = TransformerLM(config).init(jax.random.key(0), tokens[:, :-1])["params"]
    jax.block_until_ready(compiled(concrete, tokens))
    times = []
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      jax.block_until_ready(compiled(concrete, tokens))
      times.append(time.perf_counter() - start)
    result["ms"] = 1e3 * statistics.median(times)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  print(machine_line())
  print(f"one layer, width 128, 4 heads, batch 1, causal, {_DTYPE.value}; gradient of the loss; chunk {_CHUNK.value}; "
        f"median of {_REPEATS.value} runs up to T = {_TIMED_UP_TO.value}\n")
  print("| T | " + " | ".join(f"{impl} MiB | {impl} ms" for impl in _IMPLS.value) +
        " | chunked / reference memory | chunked / reference time |")
  print("| ---: |" + " ---: | ---: |" * len(_IMPLS.value) + " ---: | ---: |")
  for length in (int(n) for n in _LENGTHS.value):
    results = {impl: measure(impl, length, length <= _TIMED_UP_TO.value) for impl in _IMPLS.value}
    cells = " | ".join(f"{r['peak_mib']:,.1f} | {r['ms']:,.1f}" for r in results.values())
    ratios = "| |"
    if "reference" in results and "chunked" in results:
      ref, chunked = results["reference"], results["chunked"]
      ratios = f"| {chunked['peak_mib'] / ref['peak_mib']:.3f} | {chunked['ms'] / ref['ms']:.2f} |"
    print(f"| {length:,} | {cells} {ratios}", flush=True)


if __name__ == "__main__":
  app.run(main)

r"""Compile time of the runner's train step against depth, with and without `scan_layers`.

  python -m benchmarks.compile_time [--layers=4,12,48] [--scan=True,False] [--repeats=3]

The model is the :cpu Shakespeare shape (width 128, 4 heads, context 64, batch 12) at each depth; what is
compiled is the runner's own jitted train step (steps.train_steps: forward, backward, AdamW, one call of
train.steps_per_call steps), lowered and compiled from abstract values so no data is needed. Prints the
median of `--repeats` compilations (each in a fresh jit, so nothing is cached) and the ratio to the
shallowest depth.
"""

from __future__ import annotations

import functools
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks.common import machine_line

from configs import base
from experiments import validation
from experiments.optimizer import learning_rate_schedule, make_optimizer
from experiments.steps import TrainState, train_steps
from transformer import TransformerLM

_LAYERS = flags.DEFINE_list("layers", ["4", "12", "48"], "Depths to compile.")
_SCAN = flags.DEFINE_list("scan", ["True", "False"], "scan_layers settings.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Compilations per point.")
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", 10, "Steps in the compiled call.")


def abstract_inputs(config):
  """The train state and a call's stacked batches as ShapeDtypeStructs, with the step function."""
  model_config = validation.model_config(config)
  model = TransformerLM(model_config)
  tokens_BL = jnp.zeros((1, config.data.seq_len), jnp.int32)
  params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), tokens_BL))["params"])
  tx = make_optimizer(config.optimizer, config.train.steps, params)
  state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=jax.eval_shape(tx.init, params),
                     rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
  shape = (_STEPS_PER_CALL.value, config.train.batch_size, config.data.seq_len)
  batches = {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32), "targets": jax.ShapeDtypeStruct(shape, jnp.int32),
             "weights": jax.ShapeDtypeStruct(shape, jnp.float32)}
  step = functools.partial(train_steps, model=model, tx=tx, accumulation_steps=1,
                           schedule=learning_rate_schedule(config.optimizer, config.train.steps))
  return step, state, batches


def compile_seconds(layers: int, scan: bool) -> float:
  c = base.get_config()
  c.model.num_layers, c.model.num_heads, c.model.d_model, c.model.scan_layers = layers, 4, 128, scan
  c.model.use_bias = False
  c.data.seq_len, c.data.vocab_size, c.train.batch_size = 64, 66, 12
  config = validation.resolve(c)
  step, state, batches = abstract_inputs(config)
  times = []
  for _ in range(_REPEATS.value):
    jitted = jax.jit(lambda s, b: step(s, b))  # a new function each time: no cache hit
    start = time.perf_counter()
    jitted.lower(state, batches).compile()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  print(machine_line())
  print(f"train step of width 128, 4 heads, context 64, batch 12, {_STEPS_PER_CALL.value} steps per call; "
        f"median of {_REPEATS.value} compilations\n")
  print("| scan_layers | layers | compile s | ratio to the shallowest |")
  print("| --- | ---: | ---: | ---: |")
  for scan in (s.lower() == "true" for s in _SCAN.value):
    first = None
    for layers in (int(n) for n in _LAYERS.value):
      seconds = compile_seconds(layers, scan)
      first = first or seconds
      print(f"| {scan} | {layers} | {seconds:.2f} | {seconds / first:.2f}x |", flush=True)


if __name__ == "__main__":
  app.run(main)

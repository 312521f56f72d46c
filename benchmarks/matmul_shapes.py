r"""The products of the small Shakespeare recipe's step, one at a time: XLA against PyTorch, on all cores and one.

  python -m benchmarks.matmul_shapes [--rounds=3] [--repeats=30] [--torch_python=/path/to/python]

Each product of configs/shakespeare_char.py:cpu's train step (batch 12 x context 64 = 768 tokens, width 128,
4 heads of 32, MLP 512, 65 characters) is timed alone, float32. XLA runs it --products_per_call times in one
compiled loop (as the step runs its products: no dispatch between them; each result is summed into the
loop's carry, so none can be skipped, which adds a reduction of the output to each product), the median of
--repeats calls. With --torch_python, PyTorch eager runs the same product on arrays of the same shapes in that
interpreter (the median of 10 x --repeats calls; its step is eager too). Both are timed twice: on every core
of the machine, and on one (XLA in a process pinned to one CPU; PyTorch with one thread), which shows how much
each library gains from the second core at these sizes. Each column is timed in a process of its own, the
columns taking turns for --rounds rounds, and keeps its median: the machine's speed drifts.

The attention products are also timed in the layouts XLA could be given: the einsum the model writes (heads
after the sequence, [B, L, H, K]), heads before it ([B, H, L, K]: a plain batched matmul), and the 48
(batch x head) products as 48 unbatched dots in one program. Prints GFLOP/s (2 x M x N x K per product) in a
Markdown table with the machine and versions.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks.common import machine_line

_REPEATS = flags.DEFINE_integer("repeats", 30, "Timed calls per product (after a few warm-up calls).", lower_bound=1)
_PRODUCTS_PER_CALL = flags.DEFINE_integer("products_per_call", 50, "Products in each of XLA's timed calls.",
                                          lower_bound=1)
_TORCH_PYTHON = flags.DEFINE_string("torch_python", "", "A Python with torch: time the same products in PyTorch.")
_POINT = flags.DEFINE_enum("point", "", ["", "xla", "torch"], "Internal: time one library's products in this "
                           "process and print them as JSON.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds in which every column is timed once, in turn.", lower_bound=1)
_THREADS = flags.DEFINE_integer("threads", 0, "Internal: PyTorch's threads (0: its default).")
_PIN_CPU = flags.DEFINE_integer("pin_cpu", -1, "Internal: run on this CPU alone (-1: on all).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

B, L, D, H, K, F, V = 12, 64, 128, 4, 32, 512, 65
N = B * L
# name -> (einsum, shapes of the two operands); each is one product of the step (forward or backward).
PRODUCTS = {
    "projection [768,128] x [128,128]": ("nd,de->ne", (N, D), (D, D)),
    "its weight gradient [128,768] x [768,128]": ("dn,ne->de", (D, N), (N, D)),
    "MLP up [768,128] x [128,512]": ("nd,df->nf", (N, D), (D, F)),
    "MLP down [768,512] x [512,128]": ("nf,fd->nd", (N, F), (F, D)),
    "unembedding [768,128] x [128,65]": ("nd,dv->nv", (N, D), (D, V)),
    # Not in the step: the MLP's product at 4x its tokens, to show how the gain from more cores grows with size.
    "MLP up at 4x the tokens [3072,128] x [128,512]": ("nd,df->nf", (4 * N, D), (D, F)),
    "scores as the model writes them, BLHK,BMHK->BHLM": ("blhk,bmhk->bhlm", (B, L, H, K), (B, L, H, K)),
    "scores, heads first, BHLK,BHMK->BHLM": ("bhlk,bhmk->bhlm", (B, H, L, K), (B, H, L, K)),
    "mix as the model writes it, BHLM,BMHR->BLHR": ("bhlm,bmhr->blhr", (B, H, L, L), (B, L, H, K)),
    "mix, heads first, BHLM,BHMR->BHLR": ("bhlm,bhmr->bhlr", (B, H, L, L), (B, H, L, K)),
}
LOOPED = {  # the same attention products as 48 unbatched dots in one program
    "scores, 48 unbatched dots": ("lk,mk->lm", (B, H, L, K), (B, H, L, K)),
    "mix, 48 unbatched dots": ("lm,mr->lr", (B, H, L, L), (B, H, L, K)),
}


def flops(spec: str, a: tuple[int, ...], b: tuple[int, ...]) -> float:
  """2 x the product of every index size of the einsum (each output element sums over the contracted ones)."""
  inputs = spec.split("->")[0].split(",")
  sizes = dict(zip(inputs[0], a)) | dict(zip(inputs[1], b))
  return 2.0 * float(np.prod(list(sizes.values())))


def _median_seconds(call, repeats: int, warmup: int = 3) -> float:
  for _ in range(warmup):
    call()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _in_one_program(product, count: int):
  """A jitted program that computes `product` of its operands `count` times in a loop, each result consumed."""

  def looped(x, y):
    def body(carry, _):
      # The carry enters the operand, so the product cannot be hoisted out of the loop.
      return carry + product(x + carry, y).sum() * 1e-30, None

    return jax.lax.scan(body, jnp.float32(0), None, length=count)[0]

  return jax.jit(looped)


def time_xla(repeats: int, count: int) -> dict[str, float]:
  """GFLOP/s of each product jitted by XLA, `count` products per call."""
  rng = np.random.default_rng(0)
  rates = {}
  for name, (spec, a, b) in (PRODUCTS | LOOPED).items():
    x, y = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (a, b))
    if name in LOOPED:
      def product(p, q, spec=spec):
        return jnp.stack([jnp.stack([jnp.einsum(spec, p[i, h], q[i, h]) for h in range(H)]) for i in range(B)])

      total = flops(spec, a[2:], b[2:]) * B * H
    else:
      product, total = functools.partial(jnp.einsum, spec), flops(spec, a, b)
    program = _in_one_program(product, count)
    rates[name] = total * count / _median_seconds(lambda: program(x, y).block_until_ready(), repeats) / 1e9
  return rates


def time_torch_here(repeats: int, threads: int) -> dict[str, float]:
  """GFLOP/s of each product in PyTorch eager (run in an interpreter that has torch)."""
  import torch  # pylint: disable=import-outside-toplevel

  if threads:
    torch.set_num_threads(threads)
  rates = {}
  for name, (spec, a, b) in (PRODUCTS | LOOPED).items():
    x, y = torch.randn(a), torch.randn(b)
    if name in LOOPED:
      batched = "bh" + spec.split(",")[0] + ",bh" + spec.split(",")[1].replace("->", "->bh")
      total = flops(spec, a[2:], b[2:]) * B * H
    else:
      batched, total = spec, flops(spec, a, b)
    rates[name] = total / _median_seconds(lambda s=batched: torch.einsum(s, x, y), 10 * repeats, 10) / 1e9
  return rates


def _point(python: str, point: str, *flags_: str) -> dict[str, float]:
  """The rates a child process of this benchmark prints."""
  done = subprocess.run([python, "-m", "benchmarks.matmul_shapes", f"--point={point}", f"--repeats={_REPEATS.value}",
                         f"--products_per_call={_PRODUCTS_PER_CALL.value}", *flags_], capture_output=True, text=True,
                        check=True, cwd=REPO)
  return json.loads([x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _POINT.value:
    if _PIN_CPU.value >= 0:  # before XLA's CPU client starts its threads
      os.sched_setaffinity(0, {_PIN_CPU.value})
    rates = (time_xla(_REPEATS.value, _PRODUCTS_PER_CALL.value) if _POINT.value == "xla"
             else time_torch_here(_REPEATS.value, _THREADS.value))
    print("RESULT " + json.dumps(rates))
    return
  cpus = sorted(os.sched_getaffinity(0))
  # Each column is a child process; the columns take turns over --rounds rounds and each keeps its median,
  # so that a phase of the machine's drifting speed falls on all of them.
  columns = {f"XLA, {len(cpus)} core{'s' if len(cpus) > 1 else ''}": (sys.executable, "xla", ()),
             "XLA, 1 core": (sys.executable, "xla", (f"--pin_cpu={cpus[0]}",))}
  version = ""
  if _TORCH_PYTHON.value:
    found = subprocess.run([_TORCH_PYTHON.value, "-c", "import torch; print(torch.__version__, "
                            "torch.get_num_threads())"], capture_output=True, text=True, check=True).stdout.split()
    columns[f"PyTorch, {found[1]} threads"] = (_TORCH_PYTHON.value, "torch", ())
    columns["PyTorch, 1 thread"] = (_TORCH_PYTHON.value, "torch", ("--threads=1",))
    version = f"; torch {found[0]}"
  rounds = [{column: _point(python, point, *extra) for column, (python, point, extra) in columns.items()}
            for _ in range(_ROUNDS.value)]
  medians = {column: {name: statistics.median(r[column][name] for r in rounds) for name in PRODUCTS | LOOPED}
             for column in columns}
  print(f"{machine_line()}{version}")
  print(f"float32; GFLOP/s = 2 x M x N x K / time; XLA: median of {_REPEATS.value} calls of "
        f"{_PRODUCTS_PER_CALL.value} products in one program; PyTorch: eager torch.einsum, median of "
        f"{10 * _REPEATS.value} calls (its 'unbatched' rows are the batched einsum); median of {_ROUNDS.value} "
        "rounds, the columns taking turns\n")
  print("| product | " + " | ".join(columns) + " |")
  print("| --- |" + " ---: |" * len(columns))
  for name in PRODUCTS | LOOPED:
    print(f"| {name} | " + " | ".join(f"{medians[column][name]:,.0f}" for column in columns) + " |")
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)

r"""The products of the small Shakespeare recipe's step, one at a time: XLA against PyTorch, and attention layouts.

  python -m benchmarks.matmul_shapes [--repeats=200] [--torch_python=/path/to/python]

Each product of configs/shakespeare_char.py:cpu's train step (batch 12 x context 64 = 768 tokens, width 128,
4 heads of 32, MLP 512, 65 characters) is timed alone, float32: jitted by XLA (the median of --repeats calls,
each waited for) and, with --torch_python, as PyTorch eager runs the same product on arrays of the same shapes
in that interpreter. The attention products are also timed in the layouts XLA could be given, to find one its
CPU emitter runs near its GEMM rate: the einsum the model writes (heads after the sequence, [B, L, H, K]),
heads before it ([B, H, L, K]: a plain batched matmul), and the 48 (batch x head) products as 48 unbatched dots
in one program. Prints GFLOP/s (2 x M x N x K per product) in a Markdown table with the machine and versions.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks.common import machine_line

_REPEATS = flags.DEFINE_integer("repeats", 200, "Timed calls per product (after 10 warm-up calls).")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", "", "A Python with torch: time the same products in PyTorch.")
_POINT = flags.DEFINE_bool("torch_point", False, "Internal: time the products in PyTorch in this process.")

B, L, D, H, K, F, V = 12, 64, 128, 4, 32, 512, 65
N = B * L
# name -> (einsum, shapes of the two operands); each is one product of the step (forward or backward).
PRODUCTS = {
    "projection [768,128] x [128,128]": ("nd,de->ne", (N, D), (D, D)),
    "its weight gradient [128,768] x [768,128]": ("dn,ne->de", (D, N), (N, D)),
    "MLP up [768,128] x [128,512]": ("nd,df->nf", (N, D), (D, F)),
    "MLP down [768,512] x [512,128]": ("nf,fd->nd", (N, F), (F, D)),
    "unembedding [768,128] x [128,65]": ("nd,dv->nv", (N, D), (D, V)),
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


def _median_seconds(call, repeats: int) -> float:
  for _ in range(10):
    call()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def time_xla(repeats: int) -> dict[str, float]:
  """GFLOP/s of each product jitted by XLA."""
  rng = np.random.default_rng(0)
  rates = {}
  for name, (spec, a, b) in PRODUCTS.items():
    x, y = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (a, b))
    product = jax.jit(lambda p, q, spec=spec: jnp.einsum(spec, p, q))
    rates[name] = flops(spec, a, b) / _median_seconds(lambda: product(x, y).block_until_ready(), repeats) / 1e9
  for name, (spec, a, b) in LOOPED.items():
    x, y = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (a, b))

    def unrolled(p, q, spec=spec):
      return jnp.stack([jnp.stack([jnp.einsum(spec, p[i, h], q[i, h]) for h in range(H)]) for i in range(B)])

    product = jax.jit(unrolled)
    total = flops(spec, a[2:], b[2:]) * B * H
    rates[name] = total / _median_seconds(lambda: product(x, y).block_until_ready(), repeats) / 1e9
  return rates


def time_torch_here(repeats: int) -> dict[str, float]:
  """GFLOP/s of each product in PyTorch eager (run in an interpreter that has torch)."""
  import torch  # pylint: disable=import-outside-toplevel

  rates = {}
  for name, (spec, a, b) in (PRODUCTS | LOOPED).items():
    x, y = torch.randn(a), torch.randn(b)
    if name in LOOPED:
      batched = "bh" + spec.split(",")[0] + ",bh" + spec.split(",")[1].replace("->", "->bh")
      total = flops(spec, a[2:], b[2:]) * B * H
    else:
      batched, total = spec, flops(spec, a, b)
    rates[name] = total / _median_seconds(lambda s=batched: torch.einsum(s, x, y), repeats) / 1e9
  return rates


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _POINT.value:
    print("RESULT " + json.dumps(time_torch_here(_REPEATS.value)))
    return
  xla = time_xla(_REPEATS.value)
  torch_rates, version = {}, ""
  if _TORCH_PYTHON.value:
    done = subprocess.run([_TORCH_PYTHON.value, "-m", "benchmarks.matmul_shapes", "--torch_point",
                           f"--repeats={_REPEATS.value}"], capture_output=True, text=True, check=True)
    torch_rates = json.loads([x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])
    version = subprocess.run([_TORCH_PYTHON.value, "-c", "import torch; print(torch.__version__, "
                              "torch.get_num_threads())"], capture_output=True, text=True, check=True).stdout.split()
    version = f"; torch {version[0]} ({version[1]} threads)"
  print(f"{machine_line()}{version}")
  print(f"float32; median of {_REPEATS.value} calls; GFLOP/s = 2 x M x N x K / time (PyTorch: eager, with "
        "torch.einsum; its 'unbatched' rows are the batched einsum)\n")
  print("| product | XLA GFLOP/s | PyTorch GFLOP/s |")
  print("| --- | ---: | ---: |")
  for name, rate in xla.items():
    theirs = f"{torch_rates[name]:,.0f}" if name in torch_rates else ""
    print(f"| {name} | {rate:,.0f} | {theirs} |")
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)

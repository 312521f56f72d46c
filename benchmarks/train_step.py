r"""Speed of a recipe's train step through the runner: step time, tokens/s, MFU, data wait, compile, memory.

  python -m benchmarks.train_step --config=configs/shakespeare_char.py:cpu \
      --config.data.manual_dir=../shared/data/tinyshakespeare [--steps=300] [--torch_python=/path/to/python]
  python -m benchmarks.train_step --config=configs/shakespeare_char.py --steps=30 --log_every=10 \
      --config.data.manual_dir=../shared/data/tinyshakespeare [--torch_python=/path/to/python]   # big recipe

Trains `--steps` steps of the config with the runner itself (the code path every run uses), logging
every `--log_every` steps, then reads the step times the runner recorded. The first logged interval
holds the compilation and is left out of the medians. With --torch_python, the same number of steps of
benchmarks/torch_shakespeare_char.py (nanoGPT's recipe of the config's sizes, in PyTorch) runs in that
interpreter right after, so the ratio of the two is measured in one run. Prints a Markdown table with the machine,
library versions and settings.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from benchmarks import torch_twins
from benchmarks.common import machine_line, recipe_line
from experiments import host
from experiments.files import read_metrics
from experiments.metrics import device_peak_flops
from experiments.runner import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", "configs/shakespeare_char.py:cpu", "Config of the recipe.")
_STEPS = flags.DEFINE_integer("steps", 300, "Steps to train, rounded up to whole intervals (the recipe's schedule "
                              "length is kept).")
_LOG_EVERY = flags.DEFINE_integer("log_every", 10, "Steps per timed interval.")
_KEEP_FREED = flags.DEFINE_bool("keep_freed_memory", True, "Apply host.keep_freed_memory as the train command "
                                 "does (one heap for big steps).")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", "", "A Python with torch: also time the PyTorch recipe of the "
                                    "same sizes (configs/shakespeare_char.py:cpu or configs/shakespeare_char.py).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_recipe(config, steps: int, log_every: int) -> dict[str, float]:
  """Trains `steps` steps in a fresh workdir and summarizes the runner's perf metrics."""
  config = config.copy_and_resolve_references()
  t = config.train
  t.log_every, t.eval_every, t.checkpoint_every = log_every, 0, 0
  config.optimizer.decay_steps = config.optimizer.decay_steps or t.steps  # the recipe's schedule, whatever the steps
  # Whole intervals only: a shorter last one would be a call of another length, compiled when it comes.
  t.steps = -(-steps // log_every) * log_every
  config.eval.max_batches = 1  # the run evaluates once at the end; that is not what is timed
  with tempfile.TemporaryDirectory() as workdir:
    summary = train_and_evaluate(config, workdir)
    logged = [m for m in read_metrics(workdir) if "perf/step_time" in m]
  first, timed = logged[0], logged[1:]
  step_s = np.array([m["perf/step_time"] for m in timed])
  median = float(np.median(step_s))
  tokens = t.batch_size * config.data.seq_len
  return {
      "parameters": summary["parameters"], "flops_per_token": summary["flops_per_token"],
      "step_ms": 1e3 * median, "p10_ms": 1e3 * float(np.percentile(step_s, 10)),
      "p90_ms": 1e3 * float(np.percentile(step_s, 90)), "tokens_per_s": tokens / median,
      "data_wait": float(np.mean([m["perf/data_wait_fraction"] for m in timed])),
      # The first interval is compilation plus log_every steps.
      "compile_s": first["perf/step_time"] * log_every - log_every * median,
      "intervals": len(timed), "steps": t.steps,
  }


def time_torch(python: str, recipe: str, steps: int) -> tuple[float, str]:
  """Median step ms of the PyTorch recipe in another interpreter, and its version line."""
  out = subprocess.run([python, os.path.join(REPO, "benchmarks", "torch_shakespeare_char.py"), f"--recipe={recipe}",
                        f"--steps={steps}", "--time_only"], check=True, capture_output=True, text=True,
                       cwd=REPO).stdout
  row = [line for line in out.splitlines() if line.startswith("| nan")][0]
  step_ms = float(row.split("|")[3])
  return step_ms, re.search(r"torch [^,]+", out).group(0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  try:  # refused before anything is timed
    recipe = torch_twins.recipe_of(config) if _TORCH_PYTHON.value else None
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  one_heap = host.one_heap_pays(config)
  kept = host.keep_freed_memory(one_heap) if _KEEP_FREED.value else False
  # The peak is measured before and after the timed run and the higher kept: the machine's speed drifts,
  # and a slow phase under the short peak measurement alone once gave 111 GFLOP/s (and an MFU over 100%).
  peak_before, source = device_peak_flops(config.model.dtype)
  result = time_recipe(config, _STEPS.value, _LOG_EVERY.value)
  peak_after, _ = device_peak_flops(config.model.dtype)
  peak = max(peak_before, peak_after)
  peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  t = config.train
  print(f"{machine_line()}; malloc keeps freed memory: {kept}{' (one heap)' if kept and one_heap else ''}")
  print(f"{recipe_line(config)}; {result['steps']} steps, {result['intervals']} timed intervals of "
        f"{_LOG_EVERY.value}; peak {peak / 1e9:,.1f} GFLOP/s ({source}; {peak_before / 1e9:,.1f} before the "
        f"run, {peak_after / 1e9:,.1f} after)\n")
  print("| implementation | params | median step ms (p10-p90) | tokens/s | MFU | data wait | compile s "
        "| peak RSS GiB |")
  print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  mfu = result["flops_per_token"] * result["tokens_per_s"] / peak
  print(f"| this project | {result['parameters']:,} | {result['step_ms']:.1f} ({result['p10_ms']:.1f}-"
        f"{result['p90_ms']:.1f}) | {result['tokens_per_s']:,.0f} | {100 * mfu:.1f}% | "
        f"{100 * result['data_wait']:.1f}% | {result['compile_s']:.1f} | {peak_rss_gib:.2f} |", flush=True)
  if _TORCH_PYTHON.value:
    torch_ms, version = time_torch(_TORCH_PYTHON.value, recipe, _STEPS.value)
    tokens = t.batch_size * config.data.seq_len
    torch_mfu = result["flops_per_token"] * tokens / (torch_ms / 1e3) / peak
    print(f"| PyTorch recipe ({version}) | | {torch_ms:.1f} | {tokens / (torch_ms / 1e3):,.0f} | "
          f"{100 * torch_mfu:.1f}% | | | |")
    print(f"\nthroughput ratio, this project / PyTorch: {torch_ms / result['step_ms']:.2f}x")
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)

r"""Model-tokens/s of S members trained as one population against S sequential single runs, and peak memory.

  python -m benchmarks.population [--configs=configs/default.py,configs/shakespeare_char.py:cpu] \
      [--sizes=1,2,4,8,16] [--steps=100] [--manual_dir=../shared/data/tinyshakespeare] [--max_single_runs=2]

For each config and size S, trains `--steps` steps through the runner (the code path every run uses) once as a
population of S (population.size=S, seeds train.seed + i) and S times as a single run (seeds 0..S-1), each run in
a fresh Python process so that compilation is paid as a user pays it and the peak memory is that run's own. A
model-token is one token of one member's batch: S members make S x batch x context tokens a step.

"incl. compile" divides the tokens by the runner's whole wall time (data opened, compilation, training, the final
evaluation on eval.max_batches=1 batch and checkpoint); "excl." by the steps of the last logged interval (the
runner's perf/tokens_per_sec, whose first interval holds the compilation), so --steps should cover two logs at
least (logs come every steps/2). Peak memory is the process's maximum resident set on a CPU, and the device's
peak bytes in use where the backend reports it. Prints the machine, versions and settings, then a Markdown table.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax
from absl import app, flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from benchmarks.common import machine_line
from experiments.files import read_metrics
from experiments.runner import train_and_evaluate

_CONFIGS = flags.DEFINE_list("configs", ["configs/default.py", "configs/shakespeare_char.py:cpu"],
                             "Config files (with :variant) of the models to measure.")
_SIZES = flags.DEFINE_list("sizes", ["1", "2", "4", "8", "16"], "Population sizes S.")
_STEPS = flags.DEFINE_integer("steps", 100, "Steps per run (logged at steps/2 and at the end).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", "", "data.manual_dir for text configs (tiny_shakespeare offline).")
_MAX_SINGLE_RUNS = flags.DEFINE_integer(
    "max_single_runs", 0, "Train at most this many single runs per config (seeds 0.. up), shared by every S: S "
    "sequential runs cost S times one run, so their rates are those runs' (0: S single runs for each S).")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where the runs go (default: a temporary folder, removed after).")
_POINT = flags.DEFINE_string("point", "", "Internal: one run, as JSON, in this process (what the parent starts).")


def _config(spec: str, size: int, seed: int):
  """The config of one measured run: `spec` at --steps (its schedule as long as the recipe's) with one evaluation
  batch and no checkpoints before the end."""
  config = ConfigFileFlagParser(name="config").parse(spec)
  t = config.train
  # The recipe's schedule is kept (its warmup may be longer than the measured steps).
  config.optimizer.decay_steps = config.optimizer.decay_steps or t.steps
  t.steps, t.seed = _STEPS.value, seed
  t.log_every = max(_STEPS.value // 2, 1)
  t.eval_every, t.checkpoint_every, t.stop_when = 0, 0, ""
  config.eval.max_batches = 1
  if _MANUAL_DIR.value:
    config.data.manual_dir = os.path.abspath(_MANUAL_DIR.value)
  config.population.size = size
  return config


def _device_peak_bytes() -> int | None:
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def run_point(point: dict) -> dict:
  """Trains one run (a population of point["size"], or a single run of point["seed"]) and measures it."""
  config = _config(point["config"], point["size"], point["seed"])
  start = time.perf_counter()
  summary = train_and_evaluate(config, point["workdir"])
  wall = time.perf_counter() - start
  first = summary["member_dirs"][0] if point["size"] > 1 else point["workdir"]
  steady = [row["perf/tokens_per_sec"] for row in read_metrics(first) if "perf/tokens_per_sec" in row][-1]
  tokens = point["size"] * config.train.batch_size * config.data.seq_len * config.train.steps
  return {"wall_s": wall, "tokens": tokens, "steady_tokens_per_s": steady * point["size"],
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "device_peak_mib": (lambda b: None if b is None else b / 2**20)(_device_peak_bytes())}


def _spawn(point: dict) -> dict:
  """run_point in a fresh process (its own compilation, its own peak memory)."""
  argv = [sys.executable, "-m", "benchmarks.population", f"--point={json.dumps(point)}", f"--steps={_STEPS.value}",
          f"--manual_dir={_MANUAL_DIR.value}"]
  done = subprocess.run(argv, capture_output=True, text=True, check=False)
  lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
  if done.returncode or not lines:
    raise RuntimeError(f"the run {point} failed:\n{done.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def _peak(results: list[dict], key: str) -> str:
  values = [r[key] for r in results if r[key] is not None]
  return f"{max(values):,.0f}" if values else "-"


def measure(root: str) -> None:
  print("| config | S | population tok/s incl. compile | sequential | speed-up | population tok/s excl. | "
        "sequential | speed-up | peak MiB population | sequential | device MiB population | sequential |")
  print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  for spec in _CONFIGS.value:
    singles = {}  # seed -> the single run's measurement, when --max_single_runs shares them between sizes
    for size in map(int, _SIZES.value):
      name = f"{spec.replace('/', '_').replace(':', '_')}_S{size}"
      together = _spawn({"config": spec, "size": size, "seed": 0, "workdir": os.path.join(root, name)})
      if _MAX_SINGLE_RUNS.value:
        for seed in range(min(size, _MAX_SINGLE_RUNS.value)):
          if seed not in singles:
            singles[seed] = _spawn({"config": spec, "size": 1, "seed": seed,
                                    "workdir": os.path.join(root, f"{name}_run{seed}")})
        apart = list(singles.values())
      else:
        apart = [_spawn({"config": spec, "size": 1, "seed": seed,
                         "workdir": os.path.join(root, f"{name}_run{seed}")}) for seed in range(size)]
      apart_tokens = sum(r["tokens"] for r in apart)
      incl = (together["tokens"] / together["wall_s"], apart_tokens / sum(r["wall_s"] for r in apart))
      # Sequential runs go one after another: their steady rate is the tokens over the summed steady times.
      excl = (together["steady_tokens_per_s"],
              apart_tokens / sum(r["tokens"] / r["steady_tokens_per_s"] for r in apart))
      print(f"| {spec} | {size} | {incl[0]:,.0f} | {incl[1]:,.0f} | {incl[0] / incl[1]:.2f}x | {excl[0]:,.0f} | "
            f"{excl[1]:,.0f} | {excl[0] / excl[1]:.2f}x | {_peak([together], 'peak_rss_mib')} | "
            f"{_peak(apart, 'peak_rss_mib')} | {_peak([together], 'device_peak_mib')} | "
            f"{_peak(apart, 'device_peak_mib')} |", flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _POINT.value:
    print("RESULT " + json.dumps(run_point(json.loads(_POINT.value))), flush=True)
    return
  print(machine_line())
  shared = (f"; the sequential columns from at most {_MAX_SINGLE_RUNS.value} single runs per config, shared by "
            f"every S" if _MAX_SINGLE_RUNS.value else "")
  print(f"{_STEPS.value} steps a run, logged every {max(_STEPS.value // 2, 1)}; the final evaluation on 1 batch; "
        f"every run (a population, or one of the S sequential runs) in a fresh process{shared}\n")
  if _WORKDIR.value:
    measure(_WORKDIR.value)
  else:
    with tempfile.TemporaryDirectory() as root:
      measure(root)


if __name__ == "__main__":
  app.run(main)

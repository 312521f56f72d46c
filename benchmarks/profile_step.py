r"""Where a recipe's train step spends its time: per-op times from a jax.profiler trace, matched to the HLO.

  python -m benchmarks.profile_step --config=configs/shakespeare_char.py:cpu \
      --config.data.manual_dir=../shared/data/tinyshakespeare [--calls=5] [--top=15]

Builds the run's compiled train steps exactly as the runner does (build.Training: the same mesh, optimizer,
steps per call and donation), warms them up, times --calls untraced calls, then traces as many more with
jax.profiler and reads the trace's per-op events. Each event is matched by name to an instruction of the
compiled program, which says what the op is (a matmul: a dot, or a fusion around one; a reduction; anything
else) and, from its metadata, which part of the model it belongs to (forward or backward pass, and the
sublayer: attention, MLP, a LayerNorm; the loss, metrics and optimizer update are "update").

Prints, per step: the untraced wall time, the sum of the ops' thread times and the part of the wall they
cover (the difference is ops that ran side by side), a table by part and kind, the matmuls' FLOP rate, and
the slowest ops with their output shapes.

Written for the CPU backend, whose trace names each op after its HLO instruction; an accelerator's trace
names its kernels, which need not match, and its library matmuls are custom calls (counted here as "other").
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import math
import re
import statistics
import tempfile
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from benchmarks.common import machine_line, recipe_line
from experiments import build, host, population, sharding, validation

_CONFIG = config_flags.DEFINE_config_file("config", "configs/shakespeare_char.py:cpu", "Config of the recipe.")
_CALLS = flags.DEFINE_integer("calls", 5, "Calls of the compiled train steps timed, and as many traced.", lower_bound=1)
_TOP = flags.DEFINE_integer("top", 15, "Slowest ops listed.", lower_bound=0)

KINDS = ("matmul", "reduction", "other")
# Instructions that only hold others (their events span their body's ops) or move no data.
_CONTAINERS = {"while", "conditional", "call", "tuple", "get-tuple-element", "parameter", "constant", "bitcast"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s*=\s*(.+?)\s+([a-z][a-z0-9-]*)\((.*)$")
_LOOP_SCOPES = {"while", "body", "cond", "closed_call", "checkpoint", "remat"}
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%(\S+)\s+\(.*\{\s*$")


@dataclasses.dataclass(frozen=True)
class Op:
  """One instruction of the compiled program that runs as an op: what it computes and where it comes from."""

  kind: str  # one of KINDS
  part: str  # e.g. "backward block_N/mlp"; see part_of
  shape: str  # its output's shape
  flops: float  # of its dots: 2 per multiply-add (0 when it has none)


def part_of(op_name: str) -> str:
  """The part of the step an instruction's metadata op_name names: pass and module, blocks folded together.

  'jit(train_steps)/while/body/closed_call/transpose(jvp(TransformerLM))/block_1/mlp/dot_general' is
  'backward block_N/mlp' (a block's sublayer), '.../jvp(TransformerLM)/final_norm/mul' is 'forward final_norm';
  the model's own ops outside its modules (the unembedding) are 'forward top level'; anything outside the model
  (the loss, metrics, gradient clipping and the optimizer) is 'update'; no metadata is 'unattributed'.
  """
  if not op_name:
    return "unattributed"
  for marker, name in (("transpose(jvp(TransformerLM))/", "backward"), ("jvp(TransformerLM)/", "forward")):
    at = op_name.find(marker)
    if at >= 0:
      # The last name is the primitive the instruction lowers; jit(...) scopes are library functions, and
      # loops (scan_layers, micro-batches) add scopes of their own.
      scopes = [p for p in op_name[at + len(marker):].split("/")[:-1]
                if not p.startswith("jit(") and p not in _LOOP_SCOPES]
      if scopes[:1] == ["blocks"]:  # scan_layers: the stacked blocks, each one 'block'
        scopes = scopes[1:]
      if not scopes:
        return f"{name} top level"
      depth = 2 if re.fullmatch(r"block(_\d+)?", scopes[0]) else 1
      return f"{name} " + "/".join(re.sub(r"^block(_\d+)?$", "block_N", p) for p in scopes[:depth])
  return "update"


def _dims(shape: str) -> list[int]:
  inside = re.match(r"\w+\[([\d,]*)\]", shape)
  return [int(d) for d in inside.group(1).split(",") if d] if inside else []


def _dot_flops(shape: str, rest: str, shapes: dict[str, str]) -> float:
  """2 x the output's elements x the contracted size of a dot instruction (its operands' shapes looked up)."""
  lhs = re.match(r"\s*%([^\s,)]+)", rest)
  contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
  if not lhs or not contracting or lhs.group(1) not in shapes:
    return 0.0
  lhs_dims = _dims(shapes[lhs.group(1)])
  contracted = math.prod(lhs_dims[int(d)] for d in contracting.group(1).split(",") if d)
  return 2.0 * math.prod(_dims(shape)) * contracted


def compiled_ops(hlo_text: str) -> dict[str, Op]:
  """Every instruction of a compiled HLO module that runs as an op, by name (fusions classified by their body)."""
  bodies: dict[str, set[str]] = collections.defaultdict(set)
  body_flops: dict[str, float] = collections.defaultdict(float)
  shapes: dict[str, str] = {}
  instructions = []
  computation = None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      computation = header.group(1)
      continue
    found = _INSTRUCTION.match(line)
    if not found or computation is None:
      continue
    name, shape, opcode, rest = found.groups()
    shapes[name] = shape
    bodies[computation].add(opcode)
    instructions.append((computation, name, shape, opcode, rest))
  for computation, name, shape, opcode, rest in instructions:
    if opcode == "dot":  # names are unique in a module, so every operand's shape is known by now
      body_flops[computation] += _dot_flops(shape, rest, shapes)
  # The bodies of fusions and the reducers of reductions run inside their instruction, not as ops of their own.
  inner = {found for _, _, _, opcode, rest in instructions
           for found in re.findall(r"(?:calls|to_apply)=%([^\s,]+)" if opcode == "fusion" else r"to_apply=%([^\s,]+)",
                                   rest)}
  ops = {}
  for computation, name, shape, opcode, rest in instructions:
    if opcode in _CONTAINERS or computation in inner:
      continue
    inside, flops = {opcode}, (_dot_flops(shape, rest, shapes) if opcode == "dot" else 0.0)
    if opcode == "fusion":
      called = re.search(r"calls=%([^\s,]+)", rest)
      inside = bodies.get(called.group(1), set()) if called else set()
      flops = body_flops.get(called.group(1), 0.0) if called else 0.0
    kind = ("matmul" if inside & {"dot", "convolution"} else "reduction" if inside & {"reduce", "reduce-window"}
            else "other")
    op_name = re.search(r'op_name="([^"]*)"', rest)
    ops[name] = Op(kind, part_of(op_name.group(1) if op_name else ""), re.sub(r"\{[^}]*\}", "", shape), flops)
  return ops


def op_microseconds(events: list[dict], ops: dict[str, Op]) -> tuple[collections.Counter, collections.Counter, float]:
  """Summed duration (us) of each op's trace events, their number, and the wall time one or more ops covered."""
  spans = [e for e in events if e.get("ph") == "X" and e.get("name") in ops and "dur" in e]
  total, runs = collections.Counter(), collections.Counter()
  for event in spans:
    total[event["name"]] += float(event["dur"])
    runs[event["name"]] += 1
  covered, end = 0.0, float("-inf")
  for start, stop in sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in spans):
    covered += max(0.0, stop - max(start, end))
    end = max(end, stop)
  return total, runs, covered


def trace_events(trace_dir: str) -> list[dict]:
  """The events of the Perfetto trace jax.profiler wrote under trace_dir."""
  paths = glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)
  if not paths:
    raise RuntimeError(f"jax.profiler wrote no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(paths[0], "rt") as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def by_part(micros: collections.Counter, ops: dict[str, Op]) -> dict[str, dict[str, float]]:
  """Summed microseconds per part and kind."""
  table: dict[str, dict[str, float]] = collections.defaultdict(lambda: dict.fromkeys(KINDS, 0.0))
  for name, us in micros.items():
    table[ops[name].part][ops[name].kind] += us
  return dict(table)


def _timed_calls(train_steps, state, batches, calls: int) -> tuple[object, list[float]]:
  """Runs `calls` calls (the state is donated, so each call continues from the last); returns seconds of each."""
  seconds = []
  for _ in range(calls):
    start = time.perf_counter()
    state, metrics = train_steps(state, batches)
    jax.block_until_ready(metrics)
    seconds.append(time.perf_counter() - start)
  return state, seconds


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  errors = validation.validate(config)
  if errors:
    raise app.UsageError("\n".join(errors), exitcode=2)
  if population.size_of(config) > 1:
    raise app.UsageError("profile_step profiles one run's step: give a config without a population", exitcode=2)
  host.keep_freed_memory(host.one_heap_pays(config))
  try:
    data = build.load_data(config)
  except validation.ConfigError as error:  # one line naming the data field, as the train command says it
    raise app.UsageError(str(error), exitcode=2) from None
  config = validation.resolve(config, data.vocab_size)
  sharded = build.ShardedModel(config)
  training = build.Training(config, sharded, data)
  per_call = config.train.steps_per_call
  iterator = training.new_iterator()
  batches = sharding.global_batches([next(iterator) for _ in range(per_call)], sharded.mesh)
  state = training.initial_state()
  # The program whose instructions are read is the one that runs.
  compiled = training.train_steps.lower(state, batches).compile()
  ops = compiled_ops(compiled.as_text())
  state, _ = _timed_calls(compiled, state, batches, 3)
  state, seconds = _timed_calls(compiled, state, batches, _CALLS.value)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      state, _ = _timed_calls(compiled, state, batches, _CALLS.value)
    events = trace_events(trace_dir)
  micros, runs, covered = op_microseconds(events, ops)
  steps = _CALLS.value * per_call

  def ms(us: float) -> float:  # microseconds over the traced calls -> milliseconds a step
    return us / steps / 1e3

  print(machine_line())
  print(f"{recipe_line(config)}; {_CALLS.value} calls timed, {_CALLS.value} traced")
  print(f"wall {1e3 * statistics.median(seconds) / per_call:.2f} ms a step (median untraced call); traced ops "
        f"{ms(sum(micros.values())):.2f} ms of thread time, covering {ms(covered):.2f} ms of the traced wall\n")
  print("| part | " + " | ".join(f"{k} ms" for k in KINDS) + " | total ms |")
  print("| --- |" + " ---: |" * (len(KINDS) + 1))
  table = by_part(micros, ops)
  for part, kinds in sorted(table.items(), key=lambda item: -sum(item[1].values())):
    print(f"| {part} | " + " | ".join(f"{ms(kinds[k]):.2f}" for k in KINDS) + f" | {ms(sum(kinds.values())):.2f} |")
  totals = {k: sum(kinds[k] for kinds in table.values()) for k in KINDS}
  print("| all | " + " | ".join(f"{ms(totals[k]):.2f}" for k in KINDS) + f" | {ms(sum(totals.values())):.2f} |")
  matmul_flops = sum(ops[name].flops * runs[name] for name in micros)
  if totals["matmul"]:
    print(f"\nmatmuls: {matmul_flops / steps / 1e9:.2f} GFLOP a step at {matmul_flops / totals['matmul'] / 1e3:.0f} "
          f"GFLOP/s of their thread time")
  print("\n| slowest ops | kind | part | output | ms a step | GFLOP/s |\n| --- | --- | --- | --- | ---: | ---: |")
  for name, us in micros.most_common(_TOP.value):
    op = ops[name]
    rate = f"{op.flops * runs[name] / us / 1e3:.0f}" if op.flops else ""
    print(f"| {name} | {op.kind} | {op.part} | {op.shape} | {ms(us):.3f} | {rate} |")


if __name__ == "__main__":
  app.run(main)

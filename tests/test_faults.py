"""Fault injection: `kill -9` at seeded moments of a tiny training run, each followed by the documented rerun.

One chain of attempts in one workdir runs `python -m experiments.train` with the same command each time. Ten of
them are killed with SIGKILL: during start-up (imports, data, building the run), during compilation,
mid-interval (the first interval after a resume, where no save is in flight), during an asynchronous save, and
after the summary is written; the last attempt, on the finished run, must leave its summary.json as it was.
Where a kill landed is read from the workdir the dead process left (see `landed_phase`), not assumed. A straight
run of the same command, never interrupted, is the reference: every checkpoint left behind after any kill must
restore and equal the straight run's at that step, bitwise (params, optimizer state, step, RNG, data position),
and so must the final one; every logged loss must equal the straight run's at its step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from experiments import build, checkpoint
from experiments.files import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 28, 4
SEED = 23
# The kills before the last, which lands after the summary (the run must reach its end first). Start-up,
# compile and mid-interval kills make no progress and a save kill at most two intervals (3 * 2 * EVERY < STEPS):
# the run is never over early. "startup" kills at a drawn fraction of the fastest start-up seen, "compile" once
# the attempt has written config.json (its data, model and train state are built: compiling the step is left).
PLANNED = ["startup"] * 2 + ["compile"] + ["mid-interval"] * 3 + ["async save"] * 3
PHASES = ("startup", "compile", "mid-interval", "async save", "after summary")
POLL_SEC = 0.003
TIMEOUT_SEC = 120


def train_command(workdir: str, data_dir: str, keep: int) -> list[str]:
  """The issue's tiny recall run with asynchronous saves every EVERY steps, dropout (its RNG must resume too)."""
  return [sys.executable, "-m", "experiments.train", "--config=configs/default.py", f"--workdir={workdir}",
          "--noprogress", f"--config.data.data_dir={data_dir}", "--config.model.d_model=32",
          "--config.model.num_heads=2", "--config.model.dropout_rate=0.1", "--config.data.num_train=512",
          "--config.data.num_validation=64", "--config.data.seq_len=24", "--config.data.vocab_size=32",
          "--config.train.batch_size=8", f"--config.train.steps={STEPS}", f"--config.train.checkpoint_every={EVERY}",
          "--config.train.log_every=1", "--config.train.eval_every=0", "--config.eval.max_batches=1",
          "--config.optimizer.warmup_steps=2", "--config.checkpoint.async_save=True",
          "--config.inspect.default_probe=False",
          f"--config.checkpoint.keep={keep}"]


class Watch:
  """What one attempt has done so far, read from its workdir: new train steps logged, saves begun, the summary."""

  def __init__(self, workdir: str):
    self.workdir, self.started = workdir, time.time()
    self.metrics = os.path.join(workdir, METRICS_FILE)
    self.offset = os.path.getsize(self.metrics) if os.path.exists(self.metrics) else 0
    self.steps: list[int] = []  # train steps this attempt logged

  def poll(self) -> None:
    if not os.path.exists(self.metrics) or os.path.getsize(self.metrics) <= self.offset:
      return
    with open(self.metrics, "rb") as f:
      f.seek(self.offset)
      chunk = f.read()
    whole = chunk[:chunk.rfind(b"\n") + 1]  # a line being written is read at the next poll
    self.offset += len(whole)
    self.steps += [row["step"] for row in map(json.loads, whole.splitlines()) if "train/loss" in row]

  def new_saves(self) -> list[int]:
    """Steps whose save this attempt began and has not committed (orbax's temporary directories)."""
    directory = os.path.join(self.workdir, checkpoint.CHECKPOINTS)
    names = os.listdir(directory) if os.path.isdir(directory) else []
    saves = []
    for name in names:
      if ".orbax-checkpoint-tmp" in name:
        try:
          if os.stat(os.path.join(directory, name)).st_mtime >= self.started:
            saves.append(int(name.split(".")[0]))
        except FileNotFoundError:  # committed (renamed) since the listing
          pass
    return saves

  def written(self, name: str) -> bool:
    """Whether this attempt wrote the workdir's file `name` (atomically: a new file replaces the old)."""
    path = os.path.join(self.workdir, name)
    try:
      return os.stat(path).st_mtime >= self.started
    except FileNotFoundError:
      return False


def landed_phase(watch: Watch) -> str:
  """Where a kill landed, from what the dead process left: a summary of its own, an uncommitted save it began,
  train steps it logged, its config.json but no step (compiling), or none of these (imports, data, building)."""
  watch.poll()
  if watch.written(SUMMARY_FILE):
    return "after summary"
  if watch.new_saves():
    return "async save"
  if watch.steps:
    return "mid-interval"
  return "compile" if watch.written(CONFIG_FILE) else "startup"


@dataclasses.dataclass
class Attempt:
  planned: str  # the phase the kill aimed at, or "rerun" for an attempt left to finish
  landed: str  # where the kill landed (landed_phase), or "exited" when the process ended by itself
  returncode: int
  start_step: int  # the latest checkpoint when it started
  seconds: float
  past_save: bool = False  # killed with a save uncommitted and a later step logged: the save was asynchronous


def latest_step(workdir: str) -> int:
  if not os.path.isdir(os.path.join(workdir, checkpoint.CHECKPOINTS)):
    return 0
  manager = checkpoint.make_manager(workdir, read_only=True)
  step = manager.latest_step() or 0
  manager.close()
  return step


def run_attempt(command: list[str], workdir: str, planned: str, rng: random.Random,
                timings: dict[str, float], env: dict[str, str]) -> Attempt:
  """Starts the command and kills it with SIGKILL at the moment `planned` says (never, for "rerun").

  `timings` holds the fastest "startup" (start to first step) and "compile" (config.json to first step)
  seen so far, in seconds; this attempt lowers them with its own.
  """
  start_step = latest_step(workdir)
  watch = Watch(workdir)
  # The moment to kill, drawn before the process starts so that the seed alone chooses it.
  startup_delay = rng.uniform(0.1, 0.9) * timings["startup"]
  compile_delay = rng.uniform(0.0, 0.8) * timings["compile"]
  target_step = start_step + rng.randint(1, EVERY - 1)  # in the first interval: no save is in flight there
  target_save = start_step + EVERY * rng.randint(1, 2)
  save_delay = rng.uniform(0.05, 0.2)  # a save takes some 0.25 s here
  # stderr to a file, not a pipe: orbax logs much, and an undrained pipe would stall the run once full.
  log = tempfile.TemporaryFile()
  process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
  config_sec, stepped, kill_at = None, False, None
  try:
    while process.poll() is None and time.time() - watch.started < TIMEOUT_SEC:
      watch.poll()
      now = time.time() - watch.started
      if config_sec is None and watch.written(CONFIG_FILE):
        config_sec = now
      if not stepped and watch.steps:
        stepped = True
        timings["startup"] = min(timings["startup"], now)
        timings["compile"] = min(timings["compile"], now - (config_sec or 0.0))
      if kill_at is None:
        if planned == "startup":
          kill_at = startup_delay
        elif planned == "compile" and config_sec is not None:
          kill_at = now + compile_delay
        elif planned == "mid-interval" and watch.steps and watch.steps[-1] >= target_step:
          kill_at = now
        elif planned == "async save" and any(s >= target_save for s in watch.new_saves()):
          kill_at = now + save_delay
        elif planned == "after summary" and watch.written(SUMMARY_FILE):
          kill_at = now
      if kill_at is not None and now >= kill_at:
        process.send_signal(signal.SIGKILL)
        process.wait()
        landed, saves = landed_phase(watch), watch.new_saves()
        past_save = bool(saves and watch.steps and max(watch.steps) > min(saves))
        return Attempt(planned, landed, process.returncode, start_step, now, past_save)
      time.sleep(POLL_SEC)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
    log.seek(0)
    stderr = log.read().decode(errors="replace")
    log.close()
  assert process.returncode == 0, f"{planned!r} from step {start_step}: rc {process.returncode}\n{stderr[-3000:]}"
  return Attempt(planned, "exited", process.returncode, start_step, time.time() - watch.started)


class Restorer:
  """Restores every checkpoint of a workdir in full with experiments.checkpoint, as numpy leaves and data position."""

  def __init__(self, workdir: str):
    config = checkpoint.read_config(workdir)  # resolved when saved: it builds the run as it trained
    self.training = build.Training(config, build.ShardedModel(config), build.load_data(config))

  def restore_all(self, workdir: str) -> dict[int, tuple[list[np.ndarray], dict]]:
    manager = checkpoint.make_manager(workdir, read_only=True)
    states = {}
    for step in manager.all_steps():
      iterator = self.training.new_iterator()
      state = checkpoint.restore(manager, step, self.training.abstract_state, iterator)
      leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
      states[step] = (leaves, iterator.get_state())
    manager.close()
    return states


def train_losses(workdir: str) -> list[tuple[int, float]]:
  with open(os.path.join(workdir, METRICS_FILE), encoding="utf-8") as f:
    return [(row["step"], row["train/loss"]) for row in map(json.loads, f) if "train/loss" in row]


@dataclasses.dataclass
class Chain:
  attempts: list[Attempt]
  straight: dict[int, tuple[list[np.ndarray], dict]]  # every checkpoint of the straight run
  left_behind: list[dict[int, tuple[list[np.ndarray], dict]]]  # the checkpoints restored after each attempt
  straight_losses: dict[int, float]
  losses: list[tuple[int, float]]  # every train loss the chain logged, re-run steps included
  summary_before_rerun: bytes  # summary.json as the attempt killed after writing it left it
  summary_after_rerun: bytes
  seconds: float


@pytest.fixture(scope="module")
def chain(tfds_data_dir, tmp_path_factory) -> Chain:
  """Runs the straight run, then the chain of killed attempts and the reruns that finish it."""
  began = time.time()
  root = tmp_path_factory.mktemp("faults")
  straight_dir, workdir = str(root / "straight"), str(root / "killed")
  # The straight run compiles without the persistent compilation cache the chain uses (conftest.py), so
  # equality below also shows that executables read from the cache compute bitwise what fresh ones do.
  uncached = dict(os.environ, JAX_COMPILATION_CACHE_DIR="")  # empty: the commands turn the cache off
  timings = {"startup": float("inf"), "compile": float("inf")}
  run_attempt(train_command(straight_dir, tfds_data_dir, keep=STEPS), straight_dir, "rerun", random.Random(0),
              timings, uncached)
  restorer = Restorer(straight_dir)
  straight = restorer.restore_all(straight_dir)
  assert sorted(straight) == list(range(EVERY, STEPS + 1, EVERY))

  rng = random.Random(SEED)
  # A mid-interval kill first: the start-up kills then draw from the timings of a rerun that reads its
  # executables from the cache, not from the straight run's longer compilation.
  rest = list(PLANNED)
  rest.remove("mid-interval")
  plan = ["mid-interval"] + rng.sample(rest, len(rest)) + ["after summary"]
  command, env = train_command(workdir, tfds_data_dir, keep=2), dict(os.environ)
  attempts, left_behind, summary_before = [], [], b""
  for planned in plan + ["rerun"]:
    attempts.append(run_attempt(command, workdir, planned, rng, timings, env))
    if os.path.isdir(os.path.join(workdir, checkpoint.CHECKPOINTS)):
      left_behind.append(restorer.restore_all(workdir))
    if planned == "after summary":
      with open(os.path.join(workdir, SUMMARY_FILE), "rb") as f:
        summary_before = f.read()
  with open(os.path.join(workdir, SUMMARY_FILE), "rb") as f:
    summary_after = f.read()
  return Chain(attempts, straight, left_behind, dict(train_losses(straight_dir)), train_losses(workdir),
               summary_before, summary_after, time.time() - began)


def test_kills_land_in_every_phase_and_the_rerun_finishes(chain):
  counts = {phase: sum(a.landed == phase for a in chain.attempts) for phase in PHASES}
  each = ", ".join(f"{a.planned}->{a.landed}@{a.start_step} {a.seconds:.1f}s{' past' * a.past_save}"
                   for a in chain.attempts)
  print(f"\nkills landed: {counts}; attempts {len(chain.attempts)} (reruns {len(chain.attempts) - 1}); "
        f"{chain.seconds:.0f} s in all; {each}")
  assert sum(counts.values()) == len(PLANNED) + 1, counts
  assert all(counts[phase] for phase in PHASES), counts
  assert any(a.past_save for a in chain.attempts), "no kill found training past an uncommitted save"
  assert chain.attempts[-1].landed == "exited" and chain.attempts[-1].returncode == 0
  summary = json.loads(chain.summary_after_rerun)
  assert summary["status"] == "completed" and summary["step"] == STEPS


def assert_state_equal(got: tuple[list[np.ndarray], dict], want: tuple[list[np.ndarray], dict], what: str) -> None:
  assert len(got[0]) == len(want[0]), what
  for i, (x, y) in enumerate(zip(got[0], want[0])):
    np.testing.assert_array_equal(x, y, err_msg=f"{what}: leaf {i}")
  assert got[1] == want[1], f"{what}: data iterator position {got[1]} != {want[1]}"


def test_final_state_equals_the_straight_run_bitwise(chain):
  final = chain.left_behind[-1]
  assert max(final) == STEPS
  assert_state_equal(final[STEPS], chain.straight[STEPS], f"final checkpoint (step {STEPS})")


def test_every_checkpoint_left_behind_restores_to_the_straight_runs_state(chain):
  checked = 0
  for i, states in enumerate(chain.left_behind):
    for step, state in states.items():
      assert_state_equal(state, chain.straight[step], f"after attempt {i}: checkpoint {step}")
      checked += 1
  assert checked


def test_every_logged_loss_equals_the_straight_runs(chain):
  assert {step for step, _ in chain.losses} == set(chain.straight_losses)
  for step, loss in chain.losses:
    assert loss == chain.straight_losses[step], (step, loss, chain.straight_losses[step])


def test_rerun_after_the_summary_keeps_it_byte_for_byte(chain):
  assert chain.summary_before_rerun
  unchanged = chain.summary_after_rerun == chain.summary_before_rerun  # a bool: pytest's diff of bytes is slow
  assert unchanged, f"summary.json rewritten: {chain.summary_after_rerun.decode()[:300]}"

"""Mistakes and faults as a user meets them: one line on stderr naming the flag, key or path and the fix.

Each command-line or config mistake, in a subprocess of the command, exits with status 2 before anything is
built; a workdir the file system refuses (read-only, a file, under a file, not writable) too; a disk that
fills mid-run exits with status 1 and says which checkpoints are complete. The validator reports root causes
only, and a changed data section is refused before the data are prepared.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
from ml_collections import ConfigDict

from experiments import build, checkpoint, runner, validation
from experiments.files import CONFIG_FILE, write_json
from experiments.validation import ConfigError
from experiments.workdir import resume_conflict
from tests.helpers.tiny_config import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# absl's INFO lines (JAX's "Unable to initialize backend 'tpu'") are the log, not the command's message.
_INFO_LOG = re.compile(r"^I\d{4} ")
# The tiny recall run, as a user types it.
TINY = ["--config=configs/default.py", "--noprogress", "--config.model.d_model=32", "--config.model.num_heads=2",
        "--config.data.num_train=512", "--config.data.num_validation=64", "--config.data.seq_len=24",
        "--config.data.vocab_size=32", "--config.train.batch_size=8", "--config.train.steps=20",
        "--config.optimizer.warmup_steps=0", "--config.inspect.default_probe=False"]
SYNTAX_ERROR = "def get_config():\n  return {'model': }\n"


def run(module: str, *args: str, timeout: int = 120, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
  return subprocess.run([*prefix, sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, check=False)


def message_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.strip() and not _INFO_LOG.match(line)]


def assert_one_line(result: subprocess.CompletedProcess, *named: str, status: int = 2) -> str:
  """The command exited with `status` and said one line, naming each of `named`; returns the line."""
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = message_lines(result.stderr)
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
  assert result.returncode == status, (result.returncode, lines)
  for name in named:
    assert name in lines[0], (name, lines[0])
  return lines[0]


# (id, module, arguments, what the line names); {W} is an empty folder, {F} a regular file, {S} a config file with a
# syntax error on line 2. Every command is here. A command that imports JAX costs ~2 s of CPU before it parses its
# flags, so the fast tier keeps two mistakes of `train` and one required flag; the rest are SLOW.
SLOW = pytest.mark.slow
FLAG_CASES = [
    pytest.param("experiments.train", ["--config=configs/default.py", "--workdir={W}", "--config.model.num_headz=4"],
                 ["--config.model.num_headz", "did you mean --config.model.num_heads"], id="train-unknown-key"),
    pytest.param("experiments.train", ["--config=configs/default.py", "--workdir={W}", "--config.train.steps=abc"],
                 ["--config.train.steps=abc", "int"], id="train-bad-type", marks=SLOW),
    pytest.param("experiments.train", ["--config=configs/nope.py", "--workdir={W}"],
                 ["--config=configs/nope.py", "no such file"], id="train-missing-config-file"),
    pytest.param("experiments.train", ["--config={S}", "--workdir={W}"], ["--config=", "syntax error", "line 2"],
                 id="train-config-syntax-error", marks=SLOW),
    pytest.param("experiments.evaluate", [], ["--workdir is required"], id="evaluate-no-workdir"),
    pytest.param("experiments.train", ["--config=configs/default.py"], ["--workdir", "required"],
                 id="train-no-workdir", marks=SLOW),
    pytest.param("experiments.evaluate", ["--workdir={W}"], ["config.json", "does not exist"], id="evaluate-not-a-run",
                 marks=SLOW),
    pytest.param("experiments.sample", [], ["--workdir is required"], id="sample-no-workdir", marks=SLOW),
    pytest.param("experiments.import_hf", ["--checkpoint={F}", "--workdir={W}"], ["--checkpoint={F}", "is a file"],
                 id="import_hf-checkpoint-is-a-file", marks=SLOW),
    pytest.param("experiments.inspect", ["heads"], ["--workdir is required"], id="inspect-no-workdir", marks=SLOW),
    pytest.param("experiments.params", ["--config=configs/base.py", "--config.modl.vocab_size=3"],
                 ["--config.modl.vocab_size", "did you mean --config.model"], id="params-unknown-key", marks=SLOW),
    pytest.param("experiments.params", ["--config=configs/gpt3.py:bogus"], ["--config=configs/gpt3.py:bogus", "175b"],
                 id="params-get-config-fails", marks=SLOW),
    pytest.param("experiments.params", [], ["exactly one of --config", "--workdir"], id="params-neither", marks=SLOW),
    # The sweep and the report import no JAX: a fraction of a second each.
    pytest.param("experiments.sweep", ["--config=configs/sweeps/heads.py", "--workdir={W}", "--config.num_trialz=3"],
                 ["--config.num_trialz", "did you mean --config.num_trials"], id="sweep-unknown-key"),
    pytest.param("experiments.sweep", ["--config=configs/sweeps/nope.py", "--config.num_trials=3", "--workdir={W}"],
                 ["configs/sweeps/nope.py", "no such file"], id="sweep-missing-config-with-override"),
    pytest.param("experiments.sweep", ["--config={S}", "--workdir={W}"], ["syntax error", "line 2"],
                 id="sweep-config-syntax-error"),
    pytest.param("experiments.sweep", ["--workdir={W}"], ["--config and --workdir are required"], id="sweep-no-config"),
    pytest.param("experiments.report", [], ["--workdir is required"], id="report-no-workdir"),
    pytest.param("experiments.report", ["--workdir={F}"], ["{F}", "not a folder"], id="report-workdir-is-a-file"),
    pytest.param("experiments.report", ["--workdirr=x"], ["workdirr"], id="report-unknown-flag"),
]


@pytest.mark.parametrize("module, args, named", FLAG_CASES)
def test_a_command_line_mistake_is_one_line_and_status_2(module, args, named, tmp_path):
  places = {"W": str(tmp_path / "work"), "F": str(tmp_path / "file"), "S": str(tmp_path / "syntax_error.py")}
  os.mkdir(places["W"])
  (tmp_path / "file").write_text("not a folder")
  (tmp_path / "syntax_error.py").write_text(SYNTAX_ERROR)
  result = run(module, *(a.format(**places) for a in args))
  assert_one_line(result, *(n.format(**places) for n in named))
  assert os.listdir(places["W"]) == []  # nothing was written


@contextlib.contextmanager
def tmpfs(path: str, options: str) -> Iterator[str]:
  """A tmpfs mounted at `path` for the block (skips the test where mounting is not permitted)."""
  os.makedirs(path, exist_ok=True)
  if shutil.which("mount") is None:
    pytest.skip("no mount command: cannot make a read-only or a small file system")
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], capture_output=True, text=True,
                           check=False)
  if mounted.returncode != 0:
    pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", path], check=False)


def _no_write_permission() -> tuple[str, ...]:
  """A command prefix that runs without the power to write where permissions forbid it (root has it)."""
  if os.geteuid() != 0:
    return ()
  if shutil.which("setpriv") is None:
    pytest.skip("running as root without setpriv: permissions do not stop root from writing")
  return ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


@pytest.mark.slow  # each starts the train command up to its workdir (JAX, the config validated): ~3 s of CPU
@pytest.mark.parametrize("fault", ["read-only", "workdir-is-a-file", "under-a-file", "permission-denied"])
def test_a_workdir_the_file_system_refuses_is_one_line_and_status_2(fault, tmp_path):
  prefix: tuple[str, ...] = ()
  with contextlib.ExitStack() as stack:
    if fault == "read-only":
      workdir = os.path.join(stack.enter_context(tmpfs(str(tmp_path / "ro"), "ro,size=64k")), "run")
      named = [workdir, "read-only"]
    elif fault == "workdir-is-a-file":
      workdir = str(tmp_path / "file")
      (tmp_path / "file").write_text("results of something else")
      named = [workdir, "not a folder"]
    elif fault == "under-a-file":
      (tmp_path / "file").write_text("results of something else")
      workdir = str(tmp_path / "file" / "run")
      named = [workdir, "is a file, not a folder"]
    else:
      prefix = _no_write_permission()
      (tmp_path / "locked").mkdir(mode=0o555)
      workdir = str(tmp_path / "locked" / "run")
      named = [workdir, "permission denied"]
    result = run("experiments.train", *TINY, f"--config.data.data_dir={tmp_path / 'data'}", f"--workdir={workdir}",
                 prefix=prefix)
    assert_one_line(result, *named, "no checkpoint of this run")
  assert not (tmp_path / "data").exists()  # refused before the data were prepared
  if fault in ("workdir-is-a-file", "under-a-file"):
    assert (tmp_path / "file").read_text() == "results of something else"


@pytest.mark.slow  # trains a tiny model until its disk is full
def test_a_full_disk_mid_run_says_which_checkpoints_are_complete(tfds_data_dir, tmp_path):
  with tmpfs(str(tmp_path / "small"), "size=2m") as small:
    workdir = os.path.join(small, "run")
    # Every checkpoint is kept (~0.5 MB each), so the disk fills after a few, whatever their exact size.
    result = run("experiments.train", *TINY, f"--config.data.data_dir={tfds_data_dir}", f"--workdir={workdir}",
                 "--config.train.steps=200", "--config.train.checkpoint_every=2", "--config.checkpoint.keep=1000",
                 timeout=600)
    folder = os.path.join(workdir, checkpoint.CHECKPOINTS)
    complete = sorted(int(name) for name in os.listdir(folder) if name.isdigit())
    assert complete and complete[-1] < 200, complete
    assert result.returncode == 1, result.stderr[-3000:]
    # The one line, and no traceback of any thread: orbax's writers, TensorBoard's, grain's.
    lines = [line for line in message_lines(result.stderr) if not line.startswith("preparing the ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr, result.stderr[-3000:]
    assert "no space left" in lines[0] and f"up to step {complete[-1]} in {folder}" in lines[0], lines
    assert lines[0].startswith(f"error: {workdir}"), lines  # the path at fault (tensorstore may name none)
    _, _, step = checkpoint.load_model(workdir, complete[-1])  # what the line promises restores
    assert step == complete[-1]


# (override, the key of the one line reported); each would also fail a check of a value derived from it.
ROOT_CAUSES = [
    ({"optimizer.learning_rate": -1.0}, "optimizer.learning_rate="),
    ({"train.steps": 0}, "train.steps="),
    ({"optimizer.decay_steps": -5}, "optimizer.decay_steps="),
    ({"data.seq_len": 0}, "data.seq_len="),
    ({"data.vocab_size": -3}, "data.vocab_size="),
    ({"eval.batch_size": -1}, "eval.batch_size="),
    ({"train.batch_size": 6, "optimizer.accumulation_steps": 4}, "train.batch_size=6 is not divisible by optimizer"),
    ({"train.batch_size": 3}, "train.batch_size=3 (micro-batch 3)"),
]


@pytest.mark.parametrize("overrides, key", ROOT_CAUSES, ids=[k for _, k in ROOT_CAUSES])
def test_the_validator_reports_only_the_root_cause(overrides, key, tmp_path):
  config = tiny_config(str(tmp_path), {"train.steps": 20, **overrides})
  errors = validation.validate(config, device_count=2, process_count=1)
  assert len(errors) == 1 and errors[0].startswith(key), errors


def test_a_second_root_cause_is_still_reported(tmp_path):
  config = tiny_config(str(tmp_path), {"train.steps": 20, "optimizer.learning_rate": -1.0,
                                       "optimizer.end_learning_rate": -1.0, "train.batch_size": 3})
  errors = validation.validate(config, device_count=2, process_count=1)
  assert [e.split("=")[0] for e in errors] == ["optimizer.learning_rate", "optimizer.end_learning_rate",
                                               "train.batch_size"], errors


class _DataPrepared(Exception):
  """Raised in place of preparing the data: the run got past every check that comes first."""


def _saved_run(workdir: str, config) -> None:
  """A workdir as a run leaves it: its resolved config (vocab_size and max_len from the data) in config.json."""
  os.makedirs(workdir)
  write_json(os.path.join(workdir, CONFIG_FILE), validation.resolve(config).to_dict())


def test_a_data_change_is_refused_before_the_data_are_prepared(tmp_path, monkeypatch):
  config = tiny_config(str(tmp_path / "data"), {"train.steps": 20})
  _saved_run(str(tmp_path / "run"), config)
  monkeypatch.setattr(build, "load_data", lambda c: pytest.fail("the new data were prepared"))
  changed = tiny_config(str(tmp_path / "data"), {"train.steps": 20, "data.num_pairs": 5})
  with pytest.raises(ConfigError, match=r"data\.num_pairs=5 differs from 4"):
    runner.train_and_evaluate(changed, str(tmp_path / "run"))
  assert not (tmp_path / "data").exists()


def _population(data_dir: str, size: int, learning_rates: list[float] | None = None):
  config = tiny_config(data_dir, {"train.steps": 20, "population.size": size})
  if learning_rates:
    config.population.member_values = ConfigDict({"optimizer": {"learning_rate": learning_rates}}, type_safe=False)
  return config


# (saved population, the one resumed with, the key the line names); each used to read as an unreadable checkpoint.
POPULATION_CHANGES = [
    ((2, None), (3, None), "population.size=3 differs from 2"),
    ((2, [1e-3, 3e-3]), (2, (1e-3, 1e-2)), "population.member_values="),
]


@pytest.mark.parametrize("saved, resumed, named", POPULATION_CHANGES, ids=["size", "member_values"])
def test_a_population_change_is_refused_before_the_data_are_prepared(tmp_path, monkeypatch, saved, resumed, named):
  _saved_run(str(tmp_path / "run"), _population(str(tmp_path / "data"), *saved))
  monkeypatch.setattr(build, "load_data", lambda c: pytest.fail("the data were prepared"))
  with pytest.raises(ConfigError, match=rf"^{re.escape(named)}.*: use a new --workdir, or the saved value") as error:
    runner.train_and_evaluate(_population(str(tmp_path / "data"), *resumed), str(tmp_path / "run"))
  assert "\n" not in str(error.value)


def test_a_population_resumes_its_own_values_and_a_run_saved_before_populations_resumes(tmp_path):
  """member_values given as a tuple match the list saved; a config.json without a population section is a single
  run's."""
  _saved_run(str(tmp_path / "pop"), _population(str(tmp_path / "data"), 2, [1e-3, 3e-3]))
  assert resume_conflict(str(tmp_path / "pop"), _population(str(tmp_path / "data"), 2, (1e-3, 3e-3))) is None
  single = tiny_config(str(tmp_path / "data"), {"train.steps": 20})
  saved = validation.resolve(single).to_dict()
  del saved["population"]
  os.makedirs(tmp_path / "old")
  write_json(str(tmp_path / "old" / CONFIG_FILE), saved)
  assert resume_conflict(str(tmp_path / "old"), single) is None


def test_an_unchanged_resume_passes_the_check_whatever_the_data_resolve(tmp_path, monkeypatch):
  config = tiny_config(str(tmp_path / "data"), {"train.steps": 20})
  _saved_run(str(tmp_path / "run"), config)
  with open(tmp_path / "run" / CONFIG_FILE) as f:
    saved = json.load(f)["model"]
  assert config.model.vocab_size == 0 and config.model.max_len == 0  # "from the data", as given
  assert saved["vocab_size"] == 32 and saved["max_len"] == 24  # as saved, resolved
  assert resume_conflict(str(tmp_path / "run"), config) is None

  def prepared(c):
    raise _DataPrepared

  monkeypatch.setattr(build, "load_data", prepared)
  with pytest.raises(_DataPrepared):
    runner.train_and_evaluate(config, str(tmp_path / "run"))


def test_a_run_older_than_a_config_key_resumes_while_the_key_stays_empty(tmp_path):
  config = tiny_config(str(tmp_path / "data"), {"train.steps": 20})
  _saved_run(str(tmp_path / "run"), config)
  with open(tmp_path / "run" / CONFIG_FILE) as f:
    saved = json.load(f)
  del saved["data"]["tokenizer_dir"]  # as a run saved it before data.tokenizer_dir existed
  write_json(str(tmp_path / "run" / CONFIG_FILE), saved)
  assert resume_conflict(str(tmp_path / "run"), config) is None
  config.data.tokenizer_dir = "gpt2_tokenizer"
  assert "data.tokenizer_dir='gpt2_tokenizer' differs from None" in resume_conflict(str(tmp_path / "run"), config)


def test_a_broken_saved_config_refuses_the_resume_in_one_line(tfds_data_dir, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"model": {"num_heads": 2}')  # cut short
  config = tiny_config(tfds_data_dir, {"train.steps": 2})
  with pytest.raises(ConfigError) as raised:
    runner.train_and_evaluate(config, str(workdir))
  assert "config.json is not valid JSON" in str(raised.value) and "\n" not in str(raised.value)
  assert sorted(p.name for p in workdir.iterdir()) == ["config.json"]


def untrained_run(workdir: str, data_dir: str, scale: float = 1.0) -> None:
  """A run's workdir as training leaves it, made without training: config.json and the parameters at step 1.

  The tiny config (2 layers, 2 heads, ids below 32); `scale` multiplies the parameters (NaN: a diverged run).
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from transformer import TransformerLM, model_config_from  # pylint: disable=g-import-not-at-top

  config = tiny_config(data_dir)
  _saved_run(workdir, config)
  model = TransformerLM(model_config_from(validation.resolve(config).model))
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 24), jnp.int32))["params"])
  params = jax.tree.map(lambda p: p * scale, params)
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, checkpoint.CHECKPOINTS)))
  manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
  manager.wait_until_finished()
  manager.close()


def run_cases(module: str, cases: list[list[str]]) -> list[subprocess.CompletedProcess]:
  """Each command line of `module`, run one after the other in one process (tests/helpers/command_cases.py)."""
  driver = subprocess.run([sys.executable, "-m", "tests.helpers.command_cases", module], cwd=REPO, input=json.dumps(
      cases), capture_output=True, text=True, timeout=300, check=False)
  assert driver.returncode == 0, driver.stderr[-3000:]
  outcomes = json.loads(driver.stdout.strip().splitlines()[-1])
  return [subprocess.CompletedProcess([module, *args], o["status"], o["stdout"], o["stderr"])
          for args, o in zip(cases, outcomes)]


# The mistakes of the commands that read a run, as (arguments, what the one line names). {R}: a run saved at
# step 1 (2 layers, 2 heads); {E}: a run that has saved no checkpoint; {N}: no such folder; {W}: an empty folder.
RUN_MISTAKES = {
    "experiments.inspect": [
        (["atention", "--workdir={R}"], ["inspect atention", "did you mean attention?"]),
        (["--workdir={R}"], ["inspect with no command", "attention, heads, context"]),
        (["attention", "--workdir={R}", "--prompt=3 5", "--heads=7"], ["--heads='7'", "out of range 0..1"]),
        (["attention", "--workdir={R}", "--prompt=3 5", "--layers=0,2"], ["--layers='0,2'", "out of range 0..1"]),
        (["attention", "--workdir={R}"], ["one --prompt"]),
        (["heads", "--workdir={N}"], ["--workdir={N}", "no such folder"]),
        (["heads", "--workdir={E}"], ["--workdir={E}", "no checkpoint yet", "experiments.train"]),
        (["heads", "--workdir={R}", "--step=7"], ["--step=7", "saved steps: [1]"]),
        (["heads"], ["--workdir is required"]),
    ],
    "experiments.sample": [
        ([], ["--workdir is required"]),
        (["--workdir={N}"], ["--workdir={N}", "no such folder"]),
        (["--workdir={E}"], ["--workdir={E}", "no checkpoint yet"]),
        (["--workdir={R}", "--step=7"], ["--step=7", "saved steps: [1]"]),
        (["--workdir={R}", "--prompt=3 99"], ["token id 99", "[0, 32)"]),
    ],
    "experiments.evaluate": [
        (["--workdir={N}"], ["--workdir={N}", "no such folder"]),
        (["--workdir={E}"], ["--workdir={E}", "no checkpoint yet"]),
        (["--workdir={R}", "--config.eval.max_batches=1"], ["takes no --config", "--max_batches sets its eval"]),
        (["--workdir={R}", "--stepp=1"], ["--stepp", "did you mean --step?"]),
    ],
    "experiments.params": [
        (["--workdir={N}"], ["--workdir={N}", "no such folder"]),
        (["--workdir={W}"], ["--workdir={W}", "no config.json"]),
    ],
    "experiments.report": [
        (["--workdir={W}"], ["--workdir={W}", "neither a sweep", "nor a run"]),
        (["--workdir={R}", "--config.x=1"], ["--config.x", "takes no --config"]),
    ],
}


# What the commands print when they work, run in the same processes as their mistakes ({Z}: a diverged run).
RUN_RESULTS = {
    "experiments.sample": [["--workdir={R}", "--prompt=3 17 5", "--max_new_tokens=2", "--temperature=0"]],
    "experiments.evaluate": [["--workdir={R}"], ["--workdir={Z}"]],
}


@pytest.fixture(scope="module")
def outcomes(tfds_data_dir, tmp_path_factory) -> dict[str, tuple[dict[str, str], list[subprocess.CompletedProcess]]]:
  """Every case of RUN_MISTAKES and then RUN_RESULTS, by module, on the workdirs they name."""
  root = tmp_path_factory.mktemp("runs")
  places = {name: str(root / name) for name in "REZNW"}
  untrained_run(places["R"], tfds_data_dir)
  untrained_run(places["Z"], tfds_data_dir, scale=float("nan"))
  _saved_run(places["E"], tiny_config(tfds_data_dir))
  os.mkdir(places["W"])
  by_module = {}
  for module in sorted(RUN_MISTAKES):
    cases = [args for args, _ in RUN_MISTAKES[module]] + RUN_RESULTS.get(module, [])
    by_module[module] = run_cases(module, [[a.format(**places) for a in args] for args in cases])
  return places, by_module


@pytest.mark.slow  # one process per command (JAX imported once for all its cases): ~3 s of CPU each
@pytest.mark.parametrize("module", sorted(RUN_MISTAKES))
def test_the_mistakes_of_a_command_that_reads_a_run_are_one_line_and_status_2(module, outcomes):
  places, by_module = outcomes
  for result, (_, named) in zip(by_module[module], RUN_MISTAKES[module]):
    assert "flags:" not in result.stdout + result.stderr, result  # no --help text
    assert_one_line(result, *(n.format(**places) for n in named))


@pytest.mark.slow  # shares the processes above; evaluating prepares the tiny task's validation split
def test_sample_and_evaluate_print_what_they_promise(outcomes):
  _, by_module = outcomes
  [sampled] = by_module["experiments.sample"][len(RUN_MISTAKES["experiments.sample"]):]
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert re.fullmatch(r"3 17 5 \d+ \d+\n", sampled.stdout), sampled.stdout  # the first new id after a space

  def strict(constant: str):
    raise AssertionError(f"{constant} is not JSON")

  finite, diverged = by_module["experiments.evaluate"][len(RUN_MISTAKES["experiments.evaluate"]):]
  assert finite.returncode == 0 and diverged.returncode == 0, (finite.stderr[-3000:], diverged.stderr[-3000:])
  # Preparing the data (the first of the two may) says one line on stderr, none of TFDS's prints on stdout.
  metrics = json.loads(finite.stdout, parse_constant=strict)
  told = [line for line in finite.stderr.splitlines() if line.strip()]
  assert all(line.startswith("preparing the attn_associative_recall data in ") for line in told), told
  assert len(told) <= 1 and not diverged.stderr.strip(), (told, diverged.stderr[-3000:])
  assert metrics["step"] == 1 and 0 < metrics["eval/loss"] < 10
  nans = json.loads(diverged.stdout, parse_constant=strict)
  assert nans["step"] == 1 and nans["eval/loss"] is None and nans.keys() == metrics.keys()


def test_a_reader_that_stops_reading_ends_the_command_quietly():
  read_end, write_end = os.pipe()
  os.close(read_end)  # gone before the command writes: its first write fails with EPIPE
  result = subprocess.run([sys.executable, "-m", "experiments.report", "--help"], cwd=REPO, stdout=write_end,
                          stderr=subprocess.PIPE, text=True, timeout=60, check=False)
  os.close(write_end)
  assert result.stderr == "" and result.returncode == 141, (result.returncode, result.stderr[-3000:])


def test_an_unknown_inspect_command_names_the_nearest_one():
  from absl import app  # pylint: disable=g-import-not-at-top

  from experiments import inspect  # pylint: disable=g-import-not-at-top

  with pytest.raises(app.UsageError, match=r"inspect hedas: did you mean heads\? give one command, one of"):
    inspect.main(["inspect", "hedas"])  # refused before any flag is read


def test_a_run_that_does_not_load_is_told_with_the_flag_and_the_fix(tmp_path):
  from experiments import cli  # pylint: disable=g-import-not-at-top

  nope, empty, unsaved = tmp_path / "nope", tmp_path / "empty", tmp_path / "unsaved"
  empty.mkdir()
  unsaved.mkdir()
  (unsaved / CONFIG_FILE).write_text("{}")
  missing = FileNotFoundError(f"no checkpoint in {unsaved}/checkpoints")
  assert cli.run_error_line(FileNotFoundError("x"), str(nope)).startswith(f"--workdir={nope}: no such folder")
  assert cli.run_error_line(FileNotFoundError("no config"), str(empty)) == f"--workdir={empty}: no config"
  assert cli.run_error_line(missing, str(unsaved)).startswith(f"--workdir={unsaved}: the run has saved no checkpoint")
  at_step = FileNotFoundError(f"no checkpoint at step 5 in {unsaved}; saved steps: [1]")
  assert cli.run_error_line(at_step, str(unsaved), 5) == f"--step=5: {at_step}"


def test_evaluate_prints_strict_json_with_null_for_what_is_not_finite():
  from experiments import evaluate  # pylint: disable=g-import-not-at-top

  printed = evaluate.metrics_json({"step": 3, "eval/loss": float("nan"), "eval/perplexity": float("inf"),
                                   "eval/accuracy": 0.25})
  assert json.loads(printed) == {"step": 3, "eval/loss": None, "eval/perplexity": None, "eval/accuracy": 0.25}


def _commands() -> list[str]:
  """The files of experiments/ that run as commands (through cli.run), by name."""
  folder = os.path.join(REPO, "experiments")
  found = []
  for name in sorted(os.listdir(folder)):
    if name.endswith(".py"):
      with open(os.path.join(folder, name), encoding="utf-8") as f:
        if "cli.run(main)" in f.read():
          found.append(name[:-len(".py")])
  return found


COMMANDS = _commands()
_ABSL_FLAGS = {"help", "helpfull", "verbosity"}  # defined by absl for every command


def _defined_flags(path: str) -> tuple[set[str], set[str]]:
  """(every flag a command's file defines, the config-file flags among them), read from its DEFINE_* calls."""
  import ast  # pylint: disable=g-import-not-at-top

  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  names, config_files = set(), set()
  for node in ast.walk(tree):
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("DEFINE_")
        and node.args and isinstance(node.args[0], ast.Constant)):
      names.add(node.args[0].value)
      if node.func.attr == "DEFINE_config_file":
        config_files.add(node.args[0].value)
  return names, config_files


@pytest.mark.parametrize("command", COMMANDS)
def test_the_usage_of_a_command_shows_only_flags_it_has(command):
  """--help prints the module's docstring: every flag written there must parse (a --config.KEY override only where
  the command has a --config file flag)."""
  import ast  # pylint: disable=g-import-not-at-top

  path = os.path.join(REPO, "experiments", f"{command}.py")
  with open(path, encoding="utf-8") as f:
    usage = ast.get_docstring(ast.parse(f.read())) or ""
  names, config_files = _defined_flags(path)
  shown = re.findall(r"(?<![\w-])--(\w+)((?:\.\w+)*)", usage)
  assert shown, f"{command}'s usage shows no flag"
  for name, override in shown:
    flag = name[2:] if name.startswith("no") and name[2:] in names else name
    assert flag in names | _ABSL_FLAGS, f"{command}'s usage shows --{name}{override}, which it does not define"
    assert not override or flag in config_files, f"{command}'s usage shows --{name}{override}: no such override"

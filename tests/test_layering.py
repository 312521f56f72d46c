"""The import layering: the model library below the experiments, inspection and sweeps as leaves, light commands.

The package rules read every file's import statements with `ast` (an import inside a function counts too), so
they take milliseconds and need nothing installed. The heavy-library rules import a command in a fresh
interpreter and look at sys.modules, which holds exactly what importing it runs (imports inside functions wait
until the function is called).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_COMMANDS = ("experiments/sweep.py", "experiments/report.py")
PACKAGES = ("transformer", "experiments", "configs", "benchmarks", "tests")


def _python_files() -> list[str]:
  """Every .py file of the repository, as a path relative to it with '/' separators (virtualenvs left out)."""
  found = []
  for root, dirs, files in os.walk(REPO):
    dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__"))
                     and not os.path.exists(os.path.join(root, d, "pyvenv.cfg")))
    found += [os.path.relpath(os.path.join(root, f), REPO).replace(os.sep, "/") for f in sorted(files)
              if f.endswith(".py")]
  return found


FILES = _python_files()


def _imports(path: str) -> list[tuple[ast.stmt, set[str]]]:
  """Each import statement of the file with the modules it may name (`from a import b` names a and a.b)."""
  with open(os.path.join(REPO, path), encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  package = path[:-len(".py")].split("/")[:-1]  # the package a relative import starts from
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.append((node, {alias.name for alias in node.names}))
    elif isinstance(node, ast.ImportFrom):
      base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]) if node.level else node.module
      base = base.strip(".")
      found.append((node, {base} | {f"{base}.{alias.name}" for alias in node.names}))
  return found


def _offences(paths: list[str], forbidden: tuple[str, ...]) -> list[str]:
  """`file:line: statement` for each import in the files that names a forbidden module or one inside it."""
  offences = []
  for path in paths:
    for node, names in _imports(path):
      if any(name == f or name.startswith(f + ".") for name in names for f in forbidden):
        offences.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
  return offences


def _under(folder: str) -> list[str]:
  return [p for p in FILES if p.startswith(folder + "/")]


def _package(folder: str) -> list[str]:
  """The files of a package the layout promises; it must exist, or its rules would pass on nothing."""
  files = _under(folder)
  assert f"{folder}/__init__.py" in files, f"{folder}/ is not a package of this repository"
  return files


def test_the_walk_sees_the_repository():
  assert {"transformer/attention.py", "experiments/runner.py", "tests/test_layering.py"} <= set(FILES)


def test_transformer_imports_nothing_of_the_experiments():
  """transformer/ is the model library: what builds on it (experiments, configs, benchmarks, tests) stays above."""
  offences = _offences(_under("transformer"), ("experiments", "configs", "benchmarks", "tests"))
  assert not offences, "transformer/ imports from above it:\n" + "\n".join(offences)


def test_inspection_is_a_leaf():
  """Inspection reads checkpoints and draws; it needs neither the sweeps nor the training loop."""
  forbidden = ("experiments.sweeps", "experiments.runner", "experiments.steps", "experiments.optimizer")
  offences = _offences(_package("experiments/inspection"), forbidden)
  assert not offences, "experiments/inspection/ imports a sweep or training module:\n" + "\n".join(offences)


def test_sweeps_import_nothing_of_the_inspection():
  offences = _offences(_package("experiments/sweeps"), ("experiments.inspection",))
  assert not offences, "experiments/sweeps/ imports from experiments/inspection/:\n" + "\n".join(offences)


def test_only_the_sweep_code_imports_the_sweeps():
  """Training, evaluation and inspection run without the sweeps; only they and their commands import them."""
  _package("experiments/sweeps")
  others = [p for p in _under("experiments") if not p.startswith("experiments/sweeps/") and p not in SWEEP_COMMANDS]
  offences = _offences(others, ("experiments.sweeps",))
  assert not offences, "outside the sweeps and their commands, experiments/ imports them:\n" + "\n".join(offences)


def test_data_imports_neither_inspection_nor_sweeps():
  _package("experiments/inspection")
  _package("experiments/sweeps")
  offences = _offences(_under("experiments/data"), ("experiments.inspection", "experiments.sweeps"))
  assert not offences, "experiments/data/ imports inspection or sweeps:\n" + "\n".join(offences)


def test_the_project_runs_without_torch_and_transformers():
  """Hugging Face checkpoints are read without them (experiments/hugging_face.py): only tests and benchmarks (a
  PyTorch baseline) use them."""
  project = _under("transformer") + _under("experiments") + _under("configs")
  offences = _offences(project, ("torch", "transformers"))
  assert not offences, "transformer/, experiments/ or configs/ import torch or transformers:\n" + "\n".join(offences)


# Imports one module and prints, for each heavy library it loaded, the modules being imported when the library
# was first asked for: the chain from the module down to the file that imports the library.
PROBE = """
import importlib, json, sys
module, heavy = sys.argv[1], sys.argv[2:]
chains = {}
class Watch:
  def find_spec(self, name, path=None, target=None):
    if name in heavy and name not in chains:
      frame, chain = sys._getframe(1), []
      while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") != "__main__":
          chain.append(frame.f_globals["__name__"])
        frame = frame.f_back
      chains[name] = chain[::-1]
sys.meta_path.insert(0, Watch())
importlib.import_module(module)
print(json.dumps({name: chains[name] for name in heavy if name in sys.modules}))
"""


def _heavy_imports(modules: tuple[str, ...], heavy: tuple[str, ...]) -> list[str]:
  """One line per heavy library that importing a module alone, in a fresh interpreter, loads (with the chain)."""
  processes = {module: subprocess.Popen([sys.executable, "-c", PROBE, module, *heavy], cwd=REPO, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for module in modules}
  lines = []
  for module, process in processes.items():  # side by side: each spends seconds importing
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, f"importing {module} failed:\n{stderr[-2000:]}"
    for library, chain in json.loads(stdout.strip().splitlines()[-1]).items():
      # The repository's modules down to the first outside one: the import to change is at that step.
      ours = next((i for i, name in enumerate(chain) if name.split(".")[0] not in PACKAGES), len(chain) - 1)
      shown = chain[:ours + 1] + (["..."] if ours + 1 < len(chain) else [])
      lines.append(f"importing {module} imports {library}: {' -> '.join(shown + [library])}")
  return lines


@pytest.mark.parametrize("modules, heavy", [
    # A training run draws nothing: matplotlib is for the inspection commands and the report.
    (("experiments.train", "experiments.runner"), ("matplotlib",)),
    # The sweep and the report start in a second; a worker or a plot imports JAX when it needs it.
    (("experiments.sweep", "experiments.report"), ("jax", "flax")),
], ids=["training-without-matplotlib", "sweep-and-report-without-jax"])
def test_commands_import_no_heavy_library_they_do_not_use(modules, heavy):
  lines = _heavy_imports(modules, heavy)
  assert not lines, "\n".join(lines)

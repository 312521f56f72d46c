"""Every ```python block of the README runs as written, each in a fresh namespace, from the repository root.

A block that loads a trained run names the README's main job, `runs/default`: the test trains a tiny run
(tests/helpers/tiny_config.py, a few steps) and puts its workdir in place of that path, so the block runs
without the two-minute job. Every block is slow-marked: run eagerly, as a reader would paste it, each
operation compiles on its first use (the model snippet takes 3-9 s on a 2-core machine).
"""

from __future__ import annotations

import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PLACEHOLDER = "runs/default"  # the README's main job: a block naming it gets the tiny run's workdir
pytestmark = pytest.mark.usefixtures("fast_compilation")  # the blocks' programs are tiny: compiling dominates
_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks(markdown: str) -> list[tuple[int, str]]:
  """(line number, code) of each ```python block of a Markdown text."""
  return [(markdown.count("\n", 0, found.start()) + 1, found.group(1)) for found in _BLOCK.finditer(markdown)]


with open(os.path.join(REPO, "README.md"), encoding="utf-8") as _readme:
  BLOCKS = python_blocks(_readme.read())


def test_the_blocks_are_found():
  """The extraction itself: a block in a list of other fences, and the README's model snippet."""
  text = "intro\n```bash\nls\n```\n```python\nx = 1\n```\ntext\n```python\ny = 2\n```\n"
  assert python_blocks(text) == [(5, "x = 1\n"), (9, "y = 2\n")]
  assert any("TransformerLM(config)" in code for _, code in BLOCKS)


@pytest.fixture(scope="module")
def tiny_run(tfds_data_dir, tmp_path_factory) -> str:
  from experiments.runner import train_and_evaluate  # pylint: disable=g-import-not-at-top
  from tests.helpers.tiny_config import tiny_config  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path_factory.mktemp("readme_run"))
  train_and_evaluate(tiny_config(tfds_data_dir, {"train.steps": 4, "eval.max_batches": 1}), workdir)
  return workdir


@pytest.mark.parametrize("line, code", [
    pytest.param(line, code, id=f"README.md:{line}", marks=pytest.mark.slow) for line, code in BLOCKS])
def test_a_python_block_of_the_readme_runs(line, code, request, monkeypatch):
  monkeypatch.chdir(REPO)
  if RUN_PLACEHOLDER in code:
    code = code.replace(RUN_PLACEHOLDER, request.getfixturevalue("tiny_run"))
  exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})  # pylint: disable=exec-used

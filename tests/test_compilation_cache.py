"""Tests of experiments/compilation_cache.py: the commands keep compiled programs on disk unless told not to.

Each case runs in a fresh interpreter: the cache directory is process-wide JAX state, and the test session's
own (conftest.py) must stay as it is.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A command's main, run through the CLI's entry as every command is: it compiles one program that takes
# longer than nothing to compile, and tells where JAX would keep it and what its children would inherit.
_PROBE = """
import json, os, sys
import jax, jax.numpy as jnp
from experiments import cli

def main(argv):
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.jit(lambda x: jnp.tanh(x @ x) + 1)(jnp.ones((32, 32))).block_until_ready()
  print(json.dumps({"jax": jax.config.jax_compilation_cache_dir,
                    "child": os.environ.get("JAX_COMPILATION_CACHE_DIR")}))

sys.argv = ["probe"]
cli.run(main)
"""


def _probe(tmp_path, **env_changes) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")}
  env.update(XDG_CACHE_HOME=str(tmp_path / "user-cache"), **env_changes)
  done = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def _files(folder) -> list[str]:
  return [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]


def test_on_by_default_in_the_user_cache_dir(tmp_path):
  expected = str(tmp_path / "user-cache" / "attention-measured" / "xla")
  seen = _probe(tmp_path)
  assert seen == {"jax": expected, "child": expected}  # a sweep's spawned workers inherit it
  assert _files(expected), "the compiled program was not written to the default cache"


def test_the_environment_names_the_directory(tmp_path):
  chosen = str(tmp_path / "chosen")
  assert _probe(tmp_path, JAX_COMPILATION_CACHE_DIR=chosen) == {"jax": chosen, "child": chosen}
  assert _files(chosen)
  assert not os.path.exists(tmp_path / "user-cache")


def test_an_empty_directory_turns_it_off(tmp_path):
  seen = _probe(tmp_path, JAX_COMPILATION_CACHE_DIR="")
  assert not seen["jax"] and seen["child"] == ""
  assert not os.path.exists(tmp_path / "user-cache")


@pytest.mark.parametrize("xdg", ["", None])
def test_default_dir_without_xdg_is_under_home(monkeypatch, xdg):
  from experiments import compilation_cache  # pylint: disable=import-outside-toplevel

  if xdg is None:
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
  else:
    monkeypatch.setenv("XDG_CACHE_HOME", xdg)
  monkeypatch.setenv("HOME", "/home/someone")
  assert compilation_cache.default_dir() == "/home/someone/.cache/attention-measured/xla"

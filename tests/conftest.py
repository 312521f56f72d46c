"""Fixtures shared by the test files."""

import os
import tempfile

import pytest

# One persistent XLA compilation cache for the whole test session, inherited by subprocesses: many
# tests compile the same tiny programs, and on a 2-core machine compiling dominates their time.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "attention-tests-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_configure(config):
  # `-m "not slow"` is the fast tier, for a change to transformer/ or a helper; CI runs everything.
  config.addinivalue_line("markers", "slow: trains end to end, runs a command that trains, starts a server "
                          "(PostgreSQL, Chromium, jax.distributed) or takes over ~5 s of CPU on a 2-core machine")


# Modules whose module-scoped fixtures train a run, start processes or import torch. Under `-n 2`, xdist's default
# (`--dist load`) hands tests out one by one, so both workers would each build such a fixture once; these modules
# go to one worker whole, every other test still on its own.
SHARED_FIXTURE_MODULES = frozenset(f"test_{name}.py" for name in (
    "checkpoints", "cli_errors", "faults", "import_hf", "inspect", "inspect_html", "multidevice", "multihost",
    "notebook", "population", "readme_snippets", "report", "report_points", "safety", "text_runs"))


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown to pytest without it
def pytest_xdist_make_scheduler(config, log):
  """`--dist load` (what `-n` means alone), except that each module of SHARED_FIXTURE_MODULES is one unit of work."""
  if config.getvalue("dist") != "load":
    return None
  from xdist.scheduler import LoadScopeScheduling  # pylint: disable=g-import-not-at-top  (only under xdist)

  class ModuleFixtureScheduling(LoadScopeScheduling):
    """Units of work are single tests, or whole modules of SHARED_FIXTURE_MODULES (handed out first: larger)."""

    def _split_scope(self, nodeid: str) -> str:
      module = nodeid.split("::", 1)[0]
      return module if os.path.basename(module) in SHARED_FIXTURE_MODULES else nodeid

  return ModuleFixtureScheduling(config, log)


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir for the whole session, so each task and size is prepared once."""
  return str(tmp_path_factory.mktemp("tfds_data"))


# Strict rank promotion in every test: an implicit broadcast between arrays of different ranks is an error.
import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


# Hypothesis profiles. "dev" (the default) keeps the suite fast on a laptop; HYPOTHESIS_PROFILE=thorough
# runs many more examples. No deadline: the first example of a shape includes JAX's compilation.
# Tests that set their own max_examples or deadline keep them.
from hypothesis import settings  # noqa: E402

settings.register_profile("dev", max_examples=10, deadline=None, print_blob=True)
settings.register_profile("thorough", max_examples=200, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="module")
def fast_compilation():
  """Skips most XLA optimizations while a test module runs: its programs are tiny, so compiling dominates.

  Opt in with `pytestmark = pytest.mark.usefixtures("fast_compilation")`. Results still compare with tolerances.
  """
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)

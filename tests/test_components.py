"""The CI policy for real components (tests/helpers/components.py): a skip with its reason, in CI a failure."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helpers import components, postgres

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("value", ["true", "TRUE"])
def test_ci_fails_a_test_whose_component_is_missing(monkeypatch, value):
  monkeypatch.setenv("CI", value)
  with pytest.raises(BaseException) as raised:  # pytest's skip and fail are BaseExceptions; a skip must not pass
    components.unavailable("no chromedriver on PATH")
  assert raised.type is pytest.fail.Exception and str(raised.value).startswith("no chromedriver on PATH (CI=true: ")


@pytest.mark.parametrize("value", [None, "", "false", "1"])
def test_outside_ci_a_missing_component_skips_with_the_reason(monkeypatch, value):
  if value is None:
    monkeypatch.delenv("CI", raising=False)
  else:
    monkeypatch.setenv("CI", value)
  with pytest.raises(BaseException) as raised:
    components.unavailable("no chromedriver on PATH")
  assert raised.type is pytest.skip.Exception and str(raised.value) == "no chromedriver on PATH"


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("false", pytest.skip.Exception)])
def test_the_postgresql_server_is_a_skip_or_in_ci_a_failure_where_postgresql_is_missing(monkeypatch, ci, outcome):
  monkeypatch.setenv("CI", ci)
  monkeypatch.setattr(postgres, "binaries", lambda: None)
  with pytest.raises(BaseException) as raised:
    with postgres.server():
      pass
  assert raised.type is outcome and str(raised.value).startswith("PostgreSQL is not installed")


@pytest.mark.parametrize("ci", ["true", ""])
def test_ci_run_stops_where_chromium_cannot_be_installed_in_ci_and_warns_outside(tmp_path, ci):
  """.ci/run with no chromium and no apt-get on PATH: with CI=true it exits 1 before building anything."""
  (tmp_path / ".ci").mkdir()
  shutil.copy(os.path.join(REPO, ".ci", "run"), tmp_path / ".ci" / "run")
  bin_dir = tmp_path / "bin"  # the few commands the check uses; no apt-get, chromium or python3
  bin_dir.mkdir()
  for name in ("dirname", "id", "ls"):
    (bin_dir / name).symlink_to(shutil.which(name))
  result = subprocess.run(["/bin/bash", str(tmp_path / ".ci" / "run")], env={"PATH": str(bin_dir), "CI": ci},
                          capture_output=True, text=True, timeout=30)
  if ci:
    assert result.returncode == 1 and "CI=true tests them all, so this run stops" in result.stderr, result.stderr
  else:
    assert "chromium missing and no apt-get as root: the tests that need them will skip" in result.stderr, result
    assert "python3" in result.stderr  # it went on, to the virtual environment (absent from this PATH)


def test_the_readme_gives_ci_s_test_command_which_prints_skip_reasons():
  with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
    command = f.read().splitlines()[-1]
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    assert f"\n{command}\n" in f.read()
  assert " -m pytest -q -rs " in command  # -rs: every skip says why

"""Real components some tests need (PostgreSQL, Chromium, two JAX processes): a skip without them, in CI a failure.

Outside CI a missing component skips its tests, with the reason (`pytest -rs` prints it). CI must test them
all, so there the same test fails: a green CI run means the browser, the database and two processes were used.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
  """Whether this is a CI run: CI=true, as GitHub Actions, GitLab CI and most others set it (and .ci/run reads)."""
  return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
  """Skips the calling test because a real component is missing; fails it instead in CI.

  Args:
    reason: what is missing and how to get it, e.g. "no chromedriver on PATH (apt-get install chromium-driver)".
  """
  if in_ci():
    pytest.fail(f"{reason} (CI=true: in CI a missing component fails its tests instead of skipping them)",
                pytrace=False)
  pytest.skip(reason)

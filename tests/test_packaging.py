"""pyproject.toml: the wheel `pip install .` builds holds the three packages whole and requirements.txt's dependencies.

The wheel is built from a copy of the files it needs (pyproject.toml, requirements.txt, README.md and the
packages), so the build's own folders never land in the repository; an editable install reads the same
configuration.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("transformer", "experiments", "configs")
BUILD = "from setuptools import build_meta; import sys; print(build_meta.build_wheel(sys.argv[1]))"


def _requirements() -> list[str]:
  """requirements.txt's requirements as written, comments and blank lines left out."""
  with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as f:
    return [line.split("#", 1)[0].strip() for line in f if line.split("#", 1)[0].strip()]


def _sources(package: str) -> set[str]:
  """Every .py file of a package folder of the repository, as a path inside the wheel."""
  found = set()
  for root, dirs, files in os.walk(os.path.join(REPO, package)):
    dirs[:] = [d for d in dirs if d != "__pycache__"]
    found |= {os.path.relpath(os.path.join(root, f), REPO).replace(os.sep, "/") for f in files if f.endswith(".py")}
  return found


def test_the_wheel_holds_the_packages_and_the_requirements(tmp_path):
  source = tmp_path / "source"
  for name in ("pyproject.toml", "requirements.txt", "README.md"):
    os.makedirs(source, exist_ok=True)
    shutil.copy(os.path.join(REPO, name), source / name)
  for package in PACKAGES:
    shutil.copytree(os.path.join(REPO, package), source / package, ignore=shutil.ignore_patterns("__pycache__"))
  built = subprocess.run([sys.executable, "-c", BUILD, str(tmp_path / "dist")], cwd=source, capture_output=True,
                         text=True, timeout=120, check=False)
  assert built.returncode == 0, built.stderr[-3000:]
  with zipfile.ZipFile(tmp_path / "dist" / built.stdout.strip().splitlines()[-1]) as wheel:
    names = set(wheel.namelist())
    [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
    fields = [line.split(": ", 1) for line in wheel.read(metadata).decode().splitlines() if ": " in line]
  assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == set(PACKAGES)
  for package in PACKAGES:
    assert _sources(package) <= names, sorted(_sources(package) - names)
  assert [value for key, value in fields if key == "Requires-Dist"] == _requirements()
  assert ("Requires-Python", ">=3.11") in [tuple(f) for f in fields]

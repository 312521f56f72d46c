"""A throwaway PostgreSQL server on 127.0.0.1 for tests: initdb into a temp dir, a free port, pg_ctl.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user (or `nobody`). Without
PostgreSQL or psycopg2 the test skips, and fails in CI (tests/helpers/components.py).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

from tests.helpers import components


def binaries() -> str | None:
  """The directory holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
  found = shutil.which("initdb")
  if found and shutil.which("pg_ctl"):
    return os.path.dirname(os.path.realpath(found))
  for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
    if os.path.exists(os.path.join(bindir, "initdb")) and os.path.exists(os.path.join(bindir, "pg_ctl")):
      return bindir
  return None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _server_user() -> str | None:
  """The user to run the server as: None (ourselves) unless we are root."""
  if os.geteuid() != 0:
    return None
  for name in ("postgres", "nobody"):
    try:
      pwd.getpwnam(name)
      return name
    except KeyError:
      continue
  raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


@contextlib.contextmanager
def server():
  """Yields the SQLAlchemy URL of a fresh PostgreSQL server, stopped and deleted afterwards.

  Skips the calling test (fails it in CI) where psycopg2 or PostgreSQL is not installed.
  """
  if importlib.util.find_spec("psycopg2") is None:  # optuna's PostgreSQL storage needs it
    components.unavailable("psycopg2 (requirements-dev.txt) is not installed")
  bindir = binaries()
  if bindir is None:
    components.unavailable("PostgreSQL is not installed (initdb, pg_ctl; Debian: apt-get install postgresql)")
  user = _server_user()
  root = tempfile.mkdtemp(prefix="pg-test-")
  data, sockets = os.path.join(root, "data"), os.path.join(root, "sockets")
  os.makedirs(sockets)
  prefix: list[str] = []
  if user is not None:
    entry = pwd.getpwnam(user)
    os.chmod(root, 0o755)
    for path in (root, sockets):
      os.chown(path, entry.pw_uid, entry.pw_gid)
    prefix = ["runuser", "-u", user, "--"]
  port = _free_port()

  def call(*args):
    subprocess.run(prefix + list(args), check=True, capture_output=True, text=True, timeout=120, cwd=root)

  call(os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
  options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
  call(os.path.join(bindir, "pg_ctl"), "-D", data, "-o", options, "-l", os.path.join(root, "log"), "-w", "start")
  try:
    yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
  finally:
    with contextlib.suppress(subprocess.SubprocessError):
      call(os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop")
    shutil.rmtree(root, ignore_errors=True)

"""host.keep_freed_memory: a freed block, allocated again, is served without new page faults.

Each case runs in a fresh interpreter: the arena setting only governs threads that have not allocated
yet, and pytest's process already has threads of its own. The block is allocated on a second thread, as
XLA's runtime threads allocate, and is larger than the 64 MiB heaps glibc gives such threads, so with the
default settings it is a fresh mapping each time (a fault per page touched).
"""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys

import pytest

REPO = __file__.rsplit("/tests/", 1)[0]
BLOCK_BYTES = 256 << 20
PAGES = BLOCK_BYTES // 4096

PROBE = """
import ctypes, ctypes.util, json, resource, sys, threading
from experiments import host
applied = host.keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = []
def allocate_touch_free():
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(int(sys.argv[2]))
  ctypes.memset(block, 1, int(sys.argv[2]))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  libc.free(block)
for _ in range(2):
  thread = threading.Thread(target=allocate_touch_free)
  thread.start()
  thread.join()
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _second_allocation_faults(mode: str) -> tuple[bool | None, int]:
  result = subprocess.run([sys.executable, "-c", PROBE, mode, str(BLOCK_BYTES)], cwd=REPO, capture_output=True,
                          text=True, check=True, timeout=120)
  report = json.loads(result.stdout.strip().splitlines()[-1])
  return report["applied"], report["faults"][1]


@pytest.mark.skipif(not (ctypes.util.find_library("c") or "").startswith("libc.so"), reason="glibc only")
def test_freed_block_is_reused_without_faults():
  applied, faults = _second_allocation_faults("keep")
  assert applied is True
  assert faults < PAGES // 100, f"{faults} page faults touching a reused {BLOCK_BYTES >> 20} MiB block"


@pytest.mark.skipif(not (ctypes.util.find_library("c") or "").startswith("libc.so"), reason="glibc only")
def test_default_malloc_faults_the_block_in_again():
  """The probe's control: without the settings the same block costs a fault per page (or per huge page)."""
  _, faults = _second_allocation_faults("default")
  assert faults >= BLOCK_BYTES // (2 << 20)

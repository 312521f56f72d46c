"""host.keep_freed_memory: a freed block, allocated again, is served without new page faults.

Each case runs in a fresh interpreter: the arena setting only governs threads that have not allocated
yet, and pytest's process already has threads of its own. The 256 MiB block is larger than the 64 MiB
heaps glibc gives threads other than the first, so a thread's block is a fresh mapping each time unless
every thread shares the main heap (one_heap); the main thread's block is kept by either setting.
"""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys

import pytest

from configs import default, shakespeare_char
from experiments import host

REPO = __file__.rsplit("/tests/", 1)[0]
BLOCK_BYTES = 256 << 20
PAGES = BLOCK_BYTES // 4096

PROBE = """
import ctypes, ctypes.util, json, resource, sys, threading
from experiments import host
mode, where, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
applied = None if mode == "none" else host.keep_freed_memory(one_heap=mode == "one_heap")
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = []
def allocate_touch_free():
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(size)
  ctypes.memset(block, 1, size)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  libc.free(block)
for _ in range(2):
  if where == "thread":
    thread = threading.Thread(target=allocate_touch_free)
    thread.start()
    thread.join()
  else:
    allocate_touch_free()
print(json.dumps({"applied": applied, "faults": faults}))
"""
glibc_only = pytest.mark.skipif(not (ctypes.util.find_library("c") or "").startswith("libc.so"), reason="glibc only")


def _second_allocation(mode: str, where: str) -> tuple[bool | None, int]:
  result = subprocess.run([sys.executable, "-c", PROBE, mode, where, str(BLOCK_BYTES)], cwd=REPO,
                          capture_output=True, text=True, check=True, timeout=120)
  report = json.loads(result.stdout.strip().splitlines()[-1])
  return report["applied"], report["faults"][1]


@glibc_only
@pytest.mark.parametrize("mode, where", [("one_heap", "thread"), ("one_heap", "main"), ("thresholds", "main")])
def test_freed_block_is_reused_without_faults(mode, where):
  applied, faults = _second_allocation(mode, where)
  assert applied is True
  assert faults < PAGES // 100, f"{faults} page faults touching a reused {BLOCK_BYTES >> 20} MiB block"


@glibc_only
@pytest.mark.parametrize("mode", ["none", "thresholds"])
def test_a_threads_large_block_is_mapped_afresh_without_one_heap(mode):
  """The probe's control: a fault per page (or per huge page) touching the block again."""
  _, faults = _second_allocation(mode, "thread")
  assert faults >= BLOCK_BYTES // (2 << 20)


def test_one_heap_for_the_big_recipe_only():
  assert host.one_heap_pays(shakespeare_char.get_config("gpu"))
  assert not host.one_heap_pays(shakespeare_char.get_config("cpu"))
  assert not host.one_heap_pays(default.get_config())
  chunked = shakespeare_char.get_config("gpu")
  chunked.model.attention_impl = "chunked"
  assert host.estimated_step_temporaries(chunked) < host.estimated_step_temporaries(shakespeare_char.get_config("gpu"))


GROWTH_PROBE = """
import ctypes, ctypes.util, json, sys
from experiments import host
size = int(sys.argv[1])
host.keep_freed_memory(one_heap=True)
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
guard = host.HeapGuard(slack_bytes=size // 4)
guard.settle()
block = libc.malloc(size)
ctypes.memset(block, 1, size)
later = libc.malloc(4096)  # keeps the freed block inside the heap rather than at its top
libc.free(block)
grown = host.resident_bytes() - guard.settled_bytes
trimmed = guard.check()
after = host.resident_bytes() - guard.settled_bytes
print(json.dumps({"grown": grown, "trimmed": trimmed, "after": after, "again": guard.check()}))
"""


@glibc_only
def test_heap_guard_gives_back_a_grown_heap():
  # One heap keeps a freed block resident; the guard's check finds the process grown past its settled
  # size and releases the block's pages, then finds nothing more to do.
  result = subprocess.run([sys.executable, "-c", GROWTH_PROBE, str(BLOCK_BYTES)], cwd=REPO, capture_output=True,
                          text=True, check=True, timeout=120)
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["grown"] > BLOCK_BYTES * 0.9
  assert report["trimmed"] is True
  assert report["after"] < BLOCK_BYTES // 4
  assert report["again"] is False


def test_heap_guard_does_nothing_before_it_settles():
  assert host.HeapGuard(slack_bytes=0).check() is False

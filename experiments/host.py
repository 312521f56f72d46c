"""The host process of a run: malloc settings applied once at start-up, the heap guard, preemption signals, and a
sweep worker's tie to its parent.

Light on purpose (no JAX at import): the sweep imports it before its workers start JAX.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
from typing import Any, Callable

from ml_collections import ConfigDict

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8
KEEP_UP_TO_BYTES = 1 << 30
# Blocks up to 1 GiB from the heaps, which keep up to 1 GiB of freed memory.
_THRESHOLDS = ((_M_MMAP_THRESHOLD, KEEP_UP_TO_BYTES), (_M_TRIM_THRESHOLD, KEEP_UP_TO_BYTES))
# One heap for every thread, no mapped blocks, never trimmed.
_ONE_HEAP = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
# Estimated step temporaries above which one heap pays (see keep_freed_memory).
ONE_HEAP_ABOVE_BYTES = 1 << 30


def keep_freed_memory(one_heap: bool = False) -> bool:
  """Makes glibc's malloc keep freed memory for reuse instead of giving it back to the system.

  XLA's CPU runtime allocates every call's outputs and temporaries afresh. With glibc's defaults, large
  blocks are fresh mappings, unmapped when freed, so each call of a train step faults its pages in again
  and the kernel zeroes them. By default this raises the mmap and trim thresholds to 1 GiB, so that freed
  blocks are reused.

  That is not enough for a big step: the thresholds are C ints, and threads other than the first get
  arenas of at most 64 MiB that map anything larger whatever the threshold, as the temporaries of the big
  Shakespeare recipe were. `one_heap` serves every thread from the main heap with no mappings and no
  trimming. It is not the default because it slows small steps (likely the lock that every thread then
  shares). Either way the process keeps its peak heap. Call it before other threads allocate: arenas
  already made stay in use. What each setting did: docs/performance.md, "Figures behind the code's choices".

  Returns:
    True if the settings were applied; False where the C library is not glibc (nothing changes).
  """
  name = ctypes.util.find_library("c")
  try:
    mallopt = ctypes.CDLL(name).mallopt
  except (OSError, AttributeError, TypeError):
    return False
  refused = [parameter for parameter, value in (_ONE_HEAP if one_heap else _THRESHOLDS)
             if not mallopt(parameter, value)]
  if refused:
    logging.info("malloc settings not all applied (mallopt refused parameters %s)", refused)
  return not refused


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> bool:
  """Asks the kernel to send `sig` to this process when its parent dies (Linux prctl PR_SET_PDEATHSIG).

  A sweep's worker calls it first thing, so that a parent killed with SIGKILL, which cannot pass the signal
  on, still stops its workers: SIGTERM makes a training worker save a checkpoint and requeue its trial. If the
  parent died before the call, the process sends itself `sig` at once.

  Args:
    parent_pid: the pid of the parent that started this process (os.getppid() no longer tells once it died).
    sig: the signal to receive.

  Returns:
    True if armed; False where prctl is missing (not Linux): there a worker outlives a killed parent.
  """
  try:
    prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
  except (OSError, AttributeError, TypeError):
    return False
  if prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
    return False
  if os.getppid() != parent_pid:  # the parent died before the call: the kernel will not send it now
    os.kill(os.getpid(), sig)
  return True


def estimated_step_temporaries(config: ConfigDict) -> int:
  """A rough size in bytes of the float32 activations a train step of `config` keeps for its backward pass.

  Per layer and token: about ten vectors of width D, three of the MLP width, and, unless attention is
  chunked, the weights and their dropout of every head over the context. Within 2x of XLA's own account
  for the Shakespeare recipes (docs/performance.md): enough to choose a malloc setting.
  """
  m = config.model
  mlp_dim = m.mlp_dim or 4 * m.d_model
  pattern = 0 if m.attention_impl == "chunked" else 2 * m.num_heads * config.data.seq_len
  per_token_layer = 10 * m.d_model + 3 * mlp_dim + pattern
  return 4 * config.train.batch_size * config.data.seq_len * m.num_layers * per_token_layer


def one_heap_pays(config: ConfigDict) -> bool:
  """Whether keep_freed_memory should use one heap for runs of `config` (its step's temporaries > 1 GiB)."""
  return estimated_step_temporaries(config) > ONE_HEAP_ABOVE_BYTES


def resident_bytes() -> int | None:
  """The process's resident memory in bytes (Linux /proc), or None where that is not available."""
  try:
    with open("/proc/self/statm") as statm:
      return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    return None


class HeapGuard:
  """Hands the heap's free pages back to the system when the process grows past its settled size.

  One heap (keep_freed_memory(one_heap=True)) never gives memory back, so a call whose temporaries cannot
  reuse the block the previous call freed (both alive at once, or the block split by small allocations in
  between) grows the heap by a whole block for good. It happens at random, and it compounds until the
  process is killed for memory (docs/performance.md). The train loop calls `after_call` after each call:
  the first settles the size, and a later one that finds the process more than `slack_bytes` above it
  runs malloc_trim, which releases every free page of the heap: the next call faults its temporaries in
  again, once.
  """

  def __init__(self, slack_bytes: int):
    self.slack_bytes = slack_bytes
    self.settled_bytes: int | None = None

  def settle(self) -> None:
    self.settled_bytes = resident_bytes()

  def after_call(self, wait_for_call: Callable[[], Any]) -> None:
    """Settles after the first call, once `wait_for_call` returns (it has compiled and run, its temporaries
    resident); checks after every later call."""
    if self.settled_bytes is None:
      wait_for_call()
      self.settle()
    else:
      self.check()

  def check(self) -> bool:
    """Trims the heap if the process has grown past its settled size; returns whether it did."""
    resident = resident_bytes()
    if resident is None or self.settled_bytes is None or resident <= self.settled_bytes + self.slack_bytes:
      return False
    try:
      malloc_trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
      return False
    malloc_trim(0)
    logging.warning("heap grew to %.1f GB resident (settled at %.1f GB): free pages given back, now %.1f GB",
                    resident / 1e9, self.settled_bytes / 1e9, (resident_bytes() or 0) / 1e9)
    return True


class Preemption:
  """Turns SIGTERM and SIGINT into a flag the loop checks, so that it can save and exit cleanly.

  `process_count` is the job's (`jax.process_count()`). On several processes SIGTERM is left to JAX's
  coordination service, which agrees on one step for all of them to stop at (see `reached`).
  """

  def __init__(self, process_count: int):
    self.process_count = process_count
    self.signal_name = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      if sig == signal.SIGTERM and self.process_count > 1:
        continue
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name

  def reached(self, step: int) -> bool:
    """True once a signal asks the run to stop; on several hosts, at the same step on all of them."""
    if self.process_count > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = self.signal_name or "SIGTERM"
        return True
    return self.signal_name is not None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

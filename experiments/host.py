"""Settings of the host process that the training commands apply once at start-up."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# One heap, no mapped blocks, never trimmed: see keep_freed_memory.
_KEEP_ALL = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))


def keep_freed_memory() -> bool:
  """Makes glibc's malloc serve every block from one heap that it never gives back to the system.

  XLA's CPU runtime allocates every call's outputs and temporaries afresh. With glibc's defaults, large
  blocks are fresh mappings, unmapped when freed, so each call of a train step faults its pages in again
  and the kernel zeroes them: 62 -> 44 ms a step of the small Shakespeare model, and 2.4 million faults
  (11 s of system time) per call of the big one, when measured (docs/performance.md). Raising the mmap
  threshold is not enough: it is a C int, below the big model's 6 GiB of temporaries, and threads other
  than the first get arenas of at most 64 MiB that map anything larger whatever the threshold. Hence one
  arena, no mappings and no trimming. The cost: the process keeps its peak heap. Call it before other
  threads allocate, since arenas already made stay in use.

  Returns:
    True if the settings were applied; False where the C library is not glibc (nothing changes).
  """
  name = ctypes.util.find_library("c")
  try:
    mallopt = ctypes.CDLL(name).mallopt
  except (OSError, AttributeError, TypeError):
    return False
  refused = [parameter for parameter, value in _KEEP_ALL if not mallopt(parameter, value)]
  if refused:
    logging.info("malloc settings not all applied (mallopt refused parameters %s)", refused)
  return not refused

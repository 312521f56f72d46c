"""Settings of the host process that the training commands apply once at start-up."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_UP_TO_BYTES = 1 << 30


def keep_freed_memory(limit_bytes: int = KEEP_UP_TO_BYTES) -> bool:
  """Makes glibc's malloc serve blocks up to `limit_bytes` from its heap and keep freed memory.

  XLA's CPU runtime allocates every call's outputs and temporaries afresh. With glibc's defaults,
  blocks above the mmap threshold are fresh mappings, unmapped when freed, so each call of a train
  step faults its pages in again: 62 -> 44 ms a step of the small Shakespeare model when this was
  measured (docs/performance.md). The cost: the process keeps its peak heap instead of returning it.

  Returns:
    True if the settings were applied; False where the C library is not glibc (nothing changes).
  """
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):
    return False
  applied = bool(mallopt(_M_MMAP_THRESHOLD, limit_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, limit_bytes))
  if not applied:
    logging.info("malloc settings not applied (mallopt refused %d bytes)", limit_bytes)
  return applied

"""What every benchmark prints first: the machine and the library versions it ran with."""

from __future__ import annotations

import os
import platform

import jax


def machine_line() -> str:
  return (f"machine: {platform.machine()}, {os.cpu_count()} CPUs, devices {jax.devices()}; jax {jax.__version__}, "
          f"Python {platform.python_version()}")

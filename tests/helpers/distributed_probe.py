r"""Checks that jax.distributed and gloo CPU collectives work here: prints OK after a cross-process all-gather.

  python tests/helpers/distributed_probe.py COORDINATOR_ADDRESS PROCESS_ID   (run twice, ids 0 and 1)

tests/test_multihost.py runs it first (launch.probe_distributed), so that its tests skip, naming the reason, on
a machine that cannot run the job, and fail on anything else. This script recognises one such condition, a jax
without gloo CPU collectives: it prints "UNSUPPORTED: <reason>" and exits with launch.UNSUPPORTED (3). Any other
error is a traceback and exit status 1: a failure of the test.
"""

import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

UNSUPPORTED = 3  # launch.UNSUPPORTED: this script runs alone, so it cannot import the test helpers

if __name__ == "__main__":
  address, process_id = sys.argv[1], int(sys.argv[2])
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError) as error:  # a jax without the option, or without gloo among its values
    print(f"UNSUPPORTED: this jax has no gloo CPU collectives ({error})", flush=True)
    sys.exit(UNSUPPORTED)
  # The trainer's call (experiments/train.py initialize_distributed), with a shorter wait for the other process.
  jax.distributed.initialize(coordinator_address=address, num_processes=2, process_id=process_id,
                             initialization_timeout=60)
  gathered = multihost_utils.process_allgather(np.array([process_id + 1]))
  assert gathered.ravel().tolist() == [1, 2], gathered
  print("OK", flush=True)
  jax.distributed.shutdown()

r"""Checks that jax.distributed and gloo CPU collectives work here: prints OK after a cross-process all-gather.

  python tests/helpers/distributed_probe.py COORDINATOR_ADDRESS PROCESS_ID   (run twice, ids 0 and 1)

tests/test_multihost.py runs it first, so that the tests skip, naming the reason, on a machine where
processes cannot join (no loopback networking, no gloo), and fail only on problems of the trainer itself.
"""

import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

if __name__ == "__main__":
  address, process_id = sys.argv[1], int(sys.argv[2])
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=address, num_processes=2, process_id=process_id,
                             initialization_timeout=60)
  gathered = multihost_utils.process_allgather(np.array([process_id + 1]))
  assert gathered.ravel().tolist() == [1, 2], gathered
  print("OK", flush=True)
  jax.distributed.shutdown()

"""What the test modules share: the tiny run config, the config files, a tiny sweep, the scripts and servers that
the subprocess tests start (see tests/test_multi*.py and tests/test_sweep.py), and the builders of the model-library
tests (attention configs and parameters, the float64 reference, the kernels' inputs and jitted calls)."""

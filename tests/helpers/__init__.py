"""What the test modules share: the tiny run config, the config files, a tiny sweep, and the scripts and servers
that the subprocess tests start (see tests/test_multi*.py and tests/test_sweep.py)."""

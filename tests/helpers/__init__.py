"""Helper scripts and modules of the tests that start subprocesses (see tests/test_multi*.py)."""

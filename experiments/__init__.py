"""The run, the commands and what they share; `experiments.load_run` loads a trained run (see notebook.py).

Importing the package stays light (no JAX): the sweep and the report import it before they know they need JAX,
so load_run is imported on first use.
"""


def __getattr__(name: str):
  if name == "load_run":
    from experiments.notebook import load_run  # pylint: disable=g-import-not-at-top

    return load_run
  raise AttributeError(f"module 'experiments' has no attribute {name!r}")

"""Inspection of a model: the inspected forward pass, per-head scores, the context comparison, figures, the HTML page.

Used by `experiments/inspect.py` (the commands) and by the runner (`training_probes`). A leaf: it imports the
model library, never the runner, its steps or its optimizer; only `plots` imports matplotlib.
"""

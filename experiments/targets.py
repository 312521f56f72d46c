"""A run's target, `train.stop_when`: a metric, a comparison and a threshold, such as "eval/accuracy>=0.99".

Pure and light (no JAX): the training loop checks evaluations against it, validation parses it, and a sweep or a
report may read it back from a summary. Which metrics a run produces is validation's to say (validation.eval_metrics).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re

OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
# METRIC OP NUMBER, spaces allowed around OP; OP is any run of comparison characters, so a wrong one ("=>", "==")
# is named in the message rather than read as part of the metric or the number.
_TARGET = re.compile(r"\s*(?P<metric>[^\s<>=!]+)\s*(?P<operator>[<>=!]+)\s*(?P<threshold>\S+)\s*")
EXAMPLE = "eval/accuracy>=0.99"


@dataclasses.dataclass(frozen=True)
class Target:
  """The run ends at the first evaluation whose `metric` compares to `threshold` as `operator` says."""

  metric: str
  operator: str
  threshold: float

  def met(self, metrics: dict[str, float]) -> bool:
    """Whether these metrics (one evaluation's) meet the target; False when they lack its metric."""
    return self.metric in metrics and OPERATORS[self.operator](metrics[self.metric], self.threshold)

  def __str__(self) -> str:
    # repr is the shortest text that reads back as the same float; "2.0" is written "2", as a person would.
    return f"{self.metric}{self.operator}{repr(self.threshold).removesuffix('.0')}"


def parse_target(text: str) -> Target | None:
  """The target a `train.stop_when` text describes, or None for "" (no target).

  Raises:
    ValueError: the text is not METRIC OP NUMBER with a known OP and a finite NUMBER (one line, without the key:
      the caller names it).
  """
  if not text.strip():
    return None
  match = _TARGET.fullmatch(text)
  if match is None:
    raise ValueError(f"expected METRIC OP NUMBER with OP one of {', '.join(OPERATORS)} (e.g. {EXAMPLE!r}), "
                     f"or '' for none")
  metric, op, threshold_text = match.group("metric", "operator", "threshold")
  if op not in OPERATORS:
    raise ValueError(f"the operator {op!r} is unknown: expected one of {', '.join(OPERATORS)} (e.g. {EXAMPLE!r})")
  try:
    threshold = float(threshold_text)
  except ValueError:
    raise ValueError(f"the threshold {threshold_text!r} is not a number: give one such as 0.99") from None
  if not math.isfinite(threshold):
    raise ValueError(f"the threshold {threshold_text!r} must be a finite number")
  return Target(metric, op, threshold)


def canonical(text: str) -> str:
  """The canonical text of a (valid) train.stop_when, "" without a target: what summaries record and compare."""
  target = parse_target(text)
  return "" if target is None else str(target)

"""From the user's text to what inspection reads: layer and head indices, probe prompts, encoded prompts.

Light on purpose (no JAX, no matplotlib): the config's validation uses it before anything is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def parse_indices(text: str, count: int, name: str) -> list[int]:
  """Indices from a comma list such as "0,2" ("" = all of range(count)); a ValueError names `name` and the value."""
  if not text.strip():
    return list(range(count))
  indices = []
  for part in text.split(","):
    try:
      index = int(part)
    except ValueError:
      raise ValueError(f"{name}={text!r}: {part.strip()!r} is not an integer") from None
    if not 0 <= index < count:
      raise ValueError(f"{name}={text!r}: {index} is out of range 0..{count - 1} of this model")
    indices.append(index)
  return indices


def prompt_list(value: Any) -> list[str]:
  """The prompts of `inspect.probe_prompts`: a string is one prompt ("" none), a sequence several."""
  if isinstance(value, str):
    return [value] if value.strip() else []
  if isinstance(value, Sequence) and all(isinstance(p, str) for p in value):
    return [p for p in value if p.strip()]
  raise ValueError(f"inspect.probe_prompts={value!r} must be a string or a tuple of strings")


def encode(tokenizer: Any, prompt: str, max_len: int) -> tuple[np.ndarray, str]:
  """The prompt's ids, cut to the model's max_len, and a note saying so when cut ("" otherwise)."""
  ids = np.asarray(tokenizer.encode(prompt), np.int32)
  if len(ids) == 0:
    raise ValueError(f"the prompt {prompt!r} encodes to no tokens")
  if len(ids) > max_len:
    return ids[:max_len], f"prompt truncated to the model's {max_len} tokens (of {len(ids)})"
  return ids, ""

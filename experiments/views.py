"""From a model and text to what inspection shows: encoded prompts, attention figures and pages, tables.

Shared by the `experiments.inspect` commands and the runner's probes during training (no flags here).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from experiments import plots

# Tokens drawn in a PNG panel: beyond this, labels become unreadable; the HTML page shows more (it scrolls).
PNG_MAX_TOKENS = 64
# The HTML page carries every weight it shows as text: at most this many cells (about 30 MB), and at most
# HTML_MAX_TOKENS tokens (a table of 512 x 512 cells is already slow to draw).
HTML_MAX_CELLS = 4_000_000
HTML_MAX_TOKENS = 512


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


def encode(tokenizer: Any, prompt: str, max_len: int) -> tuple[np.ndarray, str]:
  """The prompt's ids, cut to the model's max_len, and a note saying so when cut ("" otherwise)."""
  ids = np.asarray(tokenizer.encode(prompt), np.int32)
  if len(ids) == 0:
    raise ValueError(f"the prompt {prompt!r} encodes to no tokens")
  if len(ids) > max_len:
    return ids[:max_len], f"prompt truncated to the model's {max_len} tokens (of {len(ids)})"
  return ids, ""


def html_tokens(length: int, panels: int) -> int:
  """How many first tokens of a sequence the HTML page shows for `panels` layer-head pairs."""
  return max(1, min(length, HTML_MAX_TOKENS, int((HTML_MAX_CELLS / max(panels, 1)) ** 0.5)))


def attention_figure(weights_NHLM: np.ndarray, allowed_LM: np.ndarray, labels: list[str], layers: list[int],
                    heads: list[int], title: str, note: str = "", png_max_tokens: int = PNG_MAX_TOKENS):
  """The attention-pattern grid of one sequence, cut to its first png_max_tokens tokens with a note.

  Args:
    weights_NHLM: the sequence's attention, all layers and heads (probes.forward).
    allowed_LM: the model's mask for the sequence (probes.allowed_matrix).
    labels: one label per token (the tokenizer's token_strings).
    layers: the layers to show.
    heads: the heads to show.
    title: heading of both views.
    note: a line under the heading.
    png_max_tokens: the figure shows at most this many first tokens (labels beyond are unreadable).
  """
  length = len(labels)
  shown = min(length, png_max_tokens)
  png_note = note
  if shown < length:
    png_note = "; ".join(filter(None, [note, f"first {shown} of {length} tokens shown"]))
  return plots.attention_grid(weights_NHLM[:, :, :shown, :shown], allowed_LM[:shown, :shown], labels[:shown],
                              layers, heads, title, png_note)


def score_table(scores: dict[str, np.ndarray]) -> str:
  """A text table with one row per layer and head and one column per score."""
  names = list(scores)
  n, h = scores[names[0]].shape
  lines = ["layer  head  " + "  ".join(f"{name:>14}" for name in names)]
  for layer in range(n):
    for head in range(h):
      lines.append(f"{layer:>5}  {head:>4}  " + "  ".join(f"{scores[name][layer, head]:>14.4f}" for name in names))
  return "\n".join(lines)


def context_table(similarity_NCC: np.ndarray, drift_NC: np.ndarray) -> str:
  """A text table, one row per layer: cosine between every two contexts, then each one's to the embedding."""
  n, c = drift_NC.shape
  pairs = [(i, j) for i in range(c) for j in range(i + 1, c)]
  header = ["layer   "] + [f"cos({i},{j})" for i, j in pairs] + [f"to_emb({i})" for i in range(c)]
  lines = ["  ".join(f"{x:>10}" for x in header)]
  for layer in range(n):
    name = "embed" if layer == 0 else f"block {layer - 1}"
    values = [similarity_NCC[layer, i, j] for i, j in pairs] + list(drift_NC[layer])
    lines.append("  ".join([f"{name:>10}"] + [f"{v:>10.4f}" for v in values]))
  return "\n".join(lines)

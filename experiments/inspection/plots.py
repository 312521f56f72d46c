"""Figures of what inspection measures: attention-pattern grids, per-head score maps, context similarity.

Each function returns a matplotlib Figure (drawn with the Agg backend: no display needed); `save` writes a
PNG and `to_image` gives the RGB array TensorBoard takes. Panels carry a label (`Axes.get_label()`) naming
what they show, so tests can find them and read back the numbers drawn.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, never a window: inspection runs on servers and in tests
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from experiments.inspection.head_scores import SCORE_TITLES  # noqa: E402

# Tokens drawn in a PNG panel: beyond this, labels become unreadable; the HTML page shows more (it scrolls).
PNG_MAX_TOKENS = 64
PANEL_INCHES = 3.2  # a panel of up to 24 tokens; longer sequences get bigger panels, up to 2.5 times
FIGURE_MAX_INCHES = 40.0  # many panels shrink to fit: 4,000 pixels a side at the 100 dpi of `save`
# Masked cells are not drawn by the colour map (transparent) and show a grey hatch beneath instead, so a
# masked cell never looks like a weight of 0.
MASKED_FACE, MASKED_HATCH = "0.85", "///"


def panel_label(layer: int, head: int) -> str:
  """The label of the panel of one layer and head (what tests look for)."""
  return f"attention layer {layer} head {head}"


def attention_grid(weights_NHLM: np.ndarray, allowed_LM: np.ndarray, tokens: list[str], layers: list[int],
                   heads: list[int], title: str, note: str = "") -> Figure:
  """One panel per chosen layer (rows) and head (columns): queries down, keys across, tokens on the axes.

  Args:
    weights_NHLM: attention weights of one sequence, all layers and heads.
    allowed_LM: the mask, False where a key is masked (drawn hatched, not as a weight).
    tokens: one label per token.
    layers: the layers to draw (indices into N).
    heads: the heads to draw (indices into H).
    title: the figure's title.
    note: a line under the title (e.g. that the prompt was truncated).

  Returns:
    The figure; panel (layer, head) has label `panel_label(layer, head)` and shows exactly
    weights_NHLM[layer, head] where allowed.
  """
  length = len(tokens)
  side = PANEL_INCHES * min(max(1.0, length / 24), 2.5)
  side = max(1.5, min(side, FIGURE_MAX_INCHES / max(len(layers), len(heads))))
  fig, axes = plt.subplots(len(layers), len(heads), figsize=(side * len(heads) + 1.2, side * len(layers) + 1.0),
                           squeeze=False, layout="constrained")
  cmap = plt.get_cmap("viridis").with_extremes(bad=(0, 0, 0, 0))
  font = max(4.0, min(9.0, 220.0 / max(length, 1)))
  image = None
  for row, layer in enumerate(layers):
    for col, head in enumerate(heads):
      ax = axes[row, col]
      ax.set_label(panel_label(layer, head))
      ax.add_patch(Rectangle((-0.5, -0.5), length, length, facecolor=MASKED_FACE, hatch=MASKED_HATCH,
                             edgecolor="0.6", linewidth=0, zorder=0))
      shown = np.ma.masked_array(weights_NHLM[layer, head], mask=~allowed_LM)
      image = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", zorder=1)
      ax.set_title(f"layer {layer}, head {head}", fontsize=10)
      ax.set_xticks(range(length), tokens, rotation=90, fontsize=font)
      ax.set_yticks(range(length), tokens, fontsize=font)
      ax.set_xlabel("key")
      ax.set_ylabel("query")
  fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight (hatched: masked)")
  fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=11)
  return fig


def attention_figure(weights_NHLM: np.ndarray, allowed_LM: np.ndarray, labels: list[str], layers: list[int],
                     heads: list[int], title: str, note: str = "", png_max_tokens: int = PNG_MAX_TOKENS) -> Figure:
  """The attention-pattern grid of one sequence, cut to its first png_max_tokens tokens with a note.

  Args:
    weights_NHLM: the sequence's attention, all layers and heads (forward_pass.forward).
    allowed_LM: the model's mask for the sequence (forward_pass.allowed_matrix).
    labels: one label per token (the tokenizer's token_strings).
    layers: the layers to show.
    heads: the heads to show.
    title: the figure's title.
    note: a line under the title.
    png_max_tokens: the figure shows at most this many first tokens (labels beyond are unreadable).
  """
  length = len(labels)
  shown = min(length, png_max_tokens)
  png_note = note
  if shown < length:
    png_note = "; ".join(filter(None, [note, f"first {shown} of {length} tokens shown"]))
  return attention_grid(weights_NHLM[:, :, :shown, :shown], allowed_LM[:shown, :shown], labels[:shown], layers,
                        heads, title, png_note)


def score_maps(scores: dict[str, np.ndarray], title: str, induction_heads_NH: np.ndarray | None = None) -> Figure:
  """A layer x head heat map per score, each cell annotated with its value.

  Args:
    scores: {score name: scores_NH}, names from head_scores.SCORE_TITLES.
    title: the figure's title.
    induction_heads_NH: heads outlined in the `induction` map (head_scores.induction_heads), or None.
  """
  n, h = next(iter(scores.values())).shape
  fig, axes = plt.subplots(1, len(scores), figsize=(len(scores) * max(3.0, 0.6 * h + 1.5), max(2.5, 0.5 * n + 1.5)),
                           squeeze=False, layout="constrained")
  for ax, (name, scores_NH) in zip(axes[0], scores.items()):
    ax.set_label(f"scores {name}")
    image = ax.imshow(scores_NH, cmap="magma", aspect="auto", interpolation="nearest")
    if n * h <= 256:  # numbers stay legible up to about 16 x 16 cells
      for (layer, head), value in np.ndenumerate(scores_NH):
        ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="white" if value < np.mean(scores_NH) else "black")
    ax.set_title(SCORE_TITLES.get(name, name), fontsize=10)
    if name == "induction" and induction_heads_NH is not None:
      for layer, head in zip(*np.nonzero(induction_heads_NH)):
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="cyan", linewidth=2.5,
                               label=f"induction head {layer} {head}"))
      ax.set_title(f"{SCORE_TITLES[name]}\n(outlined: clearly above its control)", fontsize=10)
    ax.set_xticks(range(h))
    ax.set_yticks(range(n))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, shrink=0.8)
  fig.suptitle(title, fontsize=11)
  return fig


def context_plot(similarity_NXX: np.ndarray, drift_NX: np.ndarray, names: list[str], title: str) -> Figure:
  """Cosine similarity between contexts (left) and to the token's embedding (right), layer by layer.

  Args:
    similarity_NXX: cosine between every two contexts at every layer (row 0: the token embedding).
    drift_NX: cosine between each context's vector and the token embedding.
    names: a short name per context.
    title: the figure's title.
  """
  n, x = drift_NX.shape
  layers = ["embed"] + [f"block {i}" for i in range(n - 1)]
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
  for i in range(x):
    for j in range(i + 1, x):
      left.plot(range(n), similarity_NXX[:, i, j], marker="o", label=f"{names[i]} vs {names[j]}")
    right.plot(range(n), drift_NX[:, i], marker="o", label=names[i])
  for ax, what in ((left, "cosine between contexts"), (right, "cosine to the token embedding")):
    ax.set_label(what)
    ax.set_xticks(range(n), layers)
    ax.set_xlabel("residual stream after")
    ax.set_ylabel(what)
    ax.set_ylim(min(-0.05, float(np.min(similarity_NXX)) - 0.05, float(np.min(drift_NX)) - 0.05), 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=11)
  return fig


def save(fig: Figure, path: str) -> None:
  """Writes the figure as a PNG and frees it."""
  fig.savefig(path, dpi=100)
  plt.close(fig)


def to_image(fig: Figure) -> np.ndarray:
  """The figure as uint8 RGB, pixel rows x pixel columns x 3 (for TensorBoard), and frees it."""
  fig.canvas.draw()
  rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return rgb

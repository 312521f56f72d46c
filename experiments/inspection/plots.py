"""Figures of what inspection measures: attention-pattern grids, per-head score maps, context similarity.

Each function returns matplotlib Figures (drawn with the Agg backend: no display needed); `save` writes a
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
# The layout keeps labels legible however many panels are asked for: the panel's size and its labels' size depend on
# the token count only, never on the panel count; a figure holds the panels that fit FIGURE_MAX_INCHES a side and
# further panels go to further figures (several files). Shrinking panels to fit one figure, as this module did
# before, drew 16 panels of 64 tokens with 4-pixel labels.
LABEL_POINTS = 7.0  # tick labels (about 10 pixels at the 100 dpi of `save`)
TOKEN_POINTS = 9.0  # panel side per token: a label and a gap
PANEL_MIN_INCHES = 3.2  # short prompts: room for the title and axis names
FIGURE_MAX_INCHES = 20.0  # 2,000 pixels a side at the 100 dpi of `save`
_MARGIN_INCHES = 1.2  # around the panels: the title, the colour bar
# Masked cells are not drawn by the colour map (transparent) and show a grey hatch beneath instead, so a
# masked cell never looks like a weight of 0.
MASKED_FACE, MASKED_HATCH = "0.85", "///"


def panel_label(layer: int, head: int) -> str:
  """The label of the panel of one layer and head (what tests look for)."""
  return f"attention layer {layer} head {head}"


def panel_inches(length: int) -> float:
  """The side of a panel of `length` tokens: TOKEN_POINTS per token, at least PANEL_MIN_INCHES."""
  return max(PANEL_MIN_INCHES, length * TOKEN_POINTS / 72)


def figure_rows(layers: list[int], heads: list[int], length: int) -> list[list[list[tuple[int, int]]]]:
  """The panels (layer, head) of each figure, row by row: a row per layer, wrapped where its heads do not fit.

  Every figure is at most FIGURE_MAX_INCHES a side (unless one panel is bigger: over 150 tokens); each
  (layer, head) pair appears in exactly one figure.
  """
  fit = max(1, int((FIGURE_MAX_INCHES - _MARGIN_INCHES) // panel_inches(length)))  # panels across, and down
  rows = [[(layer, head) for head in heads[start:start + fit]]
          for layer in layers for start in range(0, len(heads), fit)]
  return [rows[start:start + fit] for start in range(0, len(rows), fit)]


def attention_grids(weights_NHLM: np.ndarray, allowed_LM: np.ndarray, tokens: list[str], layers: list[int],
                    heads: list[int], title: str, note: str = "") -> list[Figure]:
  """Panels of the chosen layers and heads, a row per layer: queries down, keys across, tokens on the axes.

  Panels and labels keep their size as the panel count grows (the module's LABEL_POINTS, TOKEN_POINTS): what does
  not fit one figure of FIGURE_MAX_INCHES goes to the next (figure_rows), each titled "part i of n".

  Args:
    weights_NHLM: attention weights of one sequence, all layers and heads.
    allowed_LM: the mask, False where a key is masked (drawn hatched, not as a weight).
    tokens: one label per token.
    layers: the layers to draw (indices into N).
    heads: the heads to draw (indices into H).
    title: the figures' title.
    note: a line under the title (e.g. that the prompt was truncated).

  Returns:
    The figures; panel (layer, head) has label `panel_label(layer, head)` and shows exactly
    weights_NHLM[layer, head] where allowed.
  """
  length = len(tokens)
  side = panel_inches(length)
  cmap = plt.get_cmap("viridis").with_extremes(bad=(0, 0, 0, 0))
  parts = figure_rows(layers, heads, length)
  figures = []
  for part, rows in enumerate(parts):
    columns = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(side * columns + _MARGIN_INCHES, side * len(rows) + 1.0),
                             squeeze=False, layout="constrained")
    image = None
    for r, row in enumerate(rows):
      for c in range(len(row), columns):
        axes[r, c].set_axis_off()  # a wrapped row shorter than the others
      for c, (layer, head) in enumerate(row):
        ax = axes[r, c]
        ax.set_label(panel_label(layer, head))
        ax.add_patch(Rectangle((-0.5, -0.5), length, length, facecolor=MASKED_FACE, hatch=MASKED_HATCH,
                               edgecolor="0.6", linewidth=0, zorder=0))
        shown = np.ma.masked_array(weights_NHLM[layer, head], mask=~allowed_LM)
        image = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", zorder=1)
        ax.set_title(f"layer {layer}, head {head}", fontsize=10)
        ax.set_xticks(range(length), tokens, rotation=90, fontsize=LABEL_POINTS)
        ax.set_yticks(range(length), tokens, fontsize=LABEL_POINTS)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight (hatched: masked)")
    heading = title if len(parts) == 1 else f"{title} (part {part + 1} of {len(parts)})"
    fig.suptitle(heading + (f"\n{note}" if note else ""), fontsize=11)
    figures.append(fig)
  return figures


def attention_figures(weights_NHLM: np.ndarray, allowed_LM: np.ndarray, labels: list[str], layers: list[int],
                      heads: list[int], title: str, note: str = "",
                      png_max_tokens: int = PNG_MAX_TOKENS) -> list[Figure]:
  """The attention-pattern grids of one sequence (attention_grids), cut to its first png_max_tokens tokens with a note.

  Args:
    weights_NHLM: the sequence's attention, all layers and heads (forward_pass.forward).
    allowed_LM: the model's mask for the sequence (forward_pass.allowed_matrix).
    labels: one label per token (the tokenizer's token_strings).
    layers: the layers to show.
    heads: the heads to show.
    title: the figures' title.
    note: a line under the title.
    png_max_tokens: the figures show at most this many first tokens (labels beyond are unreadable).
  """
  length = len(labels)
  shown = min(length, png_max_tokens)
  png_note = note
  if shown < length:
    png_note = "; ".join(filter(None, [note, f"first {shown} of {length} tokens shown"]))
  return attention_grids(weights_NHLM[:, :, :shown, :shown], allowed_LM[:shown, :shown], labels[:shown], layers,
                         heads, title, png_note)


def score_scale(name: str, length: int) -> tuple[float, float, str, str]:
  """(vmin, vmax, colour map, colour bar label) of a score's heat map: the range the score can take, not its data's.

  A fixed range per score, the same for every layer and head: a map scaled to its own data colours 0.34 and 0.19
  alike as its maximum. The induction score and its control share the weight scale, so their maps compare cell by
  cell. `length` is L of the sequences the entropy and distance were measured on.
  """
  if name == "entropy":
    uniform = float(np.log(max(length, 2)))
    return 0.0, uniform, "magma", f"nats: 0 one key, {uniform:.2f} uniform over {max(length, 2)} keys"
  if name == "distance":
    return 0.0, float(max(length - 1, 1)), "magma", f"tokens from query to key, 0 to {max(length - 1, 1)}"
  if name == "copying":
    return -1.0, 1.0, "RdBu_r", "-1 lowers, 1 raises the attended token's logit"
  keys = {"previous_token": "the previous token", "induction": "keys after earlier copies",
          "induction_control": "the same keys, fresh tokens"}
  return 0.0, 1.0, "magma", f"weight on {keys.get(name, 'the scored keys')}, 0 to 1"


def score_maps(scores: dict[str, np.ndarray], title: str, length: int,
               induction_heads_NH: np.ndarray | None = None) -> Figure:
  """A layer x head heat map per score, each cell annotated with its value, each score on its fixed scale.

  Args:
    scores: {score name: scores_NH}, names from head_scores.SCORE_TITLES.
    title: the figure's title.
    length: L of the sequences the entropy and distance scores were measured on (their scales' upper ends).
    induction_heads_NH: heads outlined in the `induction` map (head_scores.induction_heads), or None.
  """
  n, h = next(iter(scores.values())).shape
  fig, axes = plt.subplots(1, len(scores), figsize=(len(scores) * max(3.0, 0.6 * h + 1.5), max(3.2, 0.5 * n + 2.2)),
                           squeeze=False, layout="constrained")
  for ax, (name, scores_NH) in zip(axes[0], scores.items()):
    vmin, vmax, cmap, meaning = score_scale(name, length)
    ax.set_label(f"scores {name}")
    image = ax.imshow(scores_NH, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    if n * h <= 256:  # numbers stay legible up to about 16 x 16 cells
      for (layer, head), value in np.ndenumerate(scores_NH):
        red, green, blue, _ = image.to_rgba(value)
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
        ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
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
    # Below the map: a horizontal bar has the map's width for the label saying what the colours mean.
    fig.colorbar(image, ax=ax, location="bottom", shrink=0.9).set_label(meaning, fontsize=8)
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

"""A self-contained HTML page to browse attention patterns: pick a layer and head, hover a cell to read its weight.

One file with its data, script and style inline (no network, no CDN), so it opens from disk anywhere and can
be mailed around. Element ids the page keeps stable (tests and users' scripts read them): `#layer` and `#head`
(selects), `#grid` (the table; cells `td.cell` with `data-query`, `data-key` and `data-weight`, masked cells
also `.masked`), `#tooltip` (the hovered cell's weight), `#top-keys` (the hovered query's strongest keys).
"""

from __future__ import annotations

import html
import json

import numpy as np

TOP_KEYS = 5
# The page carries every weight it shows as text: at most this many cells (about 30 MB), and at most
# HTML_MAX_TOKENS tokens (a table of 512 x 512 cells is already slow to draw).
HTML_MAX_CELLS = 4_000_000
HTML_MAX_TOKENS = 512

_STYLE = """
body { font-family: sans-serif; margin: 1em; color: #222; }
#controls { margin-bottom: .6em; }
#controls label { margin-right: 1em; }
#wrap { overflow: auto; max-width: 100%; max-height: 80vh; border: 1px solid #ccc; display: inline-block; }
#grid { border-collapse: collapse; font-size: 11px; }
#grid th { font-weight: normal; padding: 1px 3px; background: #fff; position: sticky; white-space: pre; }
#grid thead th { top: 0; writing-mode: vertical-rl; transform: rotate(180deg); z-index: 1; }
#grid tbody th { left: 0; text-align: right; z-index: 1; }
#grid td.cell { width: 16px; height: 16px; min-width: 16px; padding: 0; border: 1px solid #fff; }
#grid td.masked { background: repeating-linear-gradient(45deg, #ddd 0 3px, #bbb 3px 5px); }
#grid td.cell:hover { outline: 2px solid #e33; }
#grid td.top { font-size: 10px; white-space: pre; padding-left: 6px; color: #555; }
#panel { display: inline-block; vertical-align: top; margin-left: 1em; min-width: 16em; }
#tooltip { font-weight: bold; min-height: 1.4em; }
.note { color: #a33; }
"""

_SCRIPT = """
const data = JSON.parse(document.getElementById('data').textContent);
const layerSelect = document.getElementById('layer');
const headSelect = document.getElementById('head');
const grid = document.getElementById('grid');
const tooltip = document.getElementById('tooltip');
const topKeys = document.getElementById('top-keys');

function option(select, value, text) {
  const o = document.createElement('option');
  o.value = value; o.textContent = text; select.appendChild(o);
}
data.layers.forEach((layer, i) => option(layerSelect, i, 'layer ' + layer));
data.heads.forEach((head, i) => option(headSelect, i, 'head ' + head));

// viridis at 5 stops, interpolated: the colour map of the PNG grids.
const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function colour(w) {
  const x = Math.min(Math.max(w, 0), 1) * (STOPS.length - 1);
  const i = Math.min(Math.floor(x), STOPS.length - 2), f = x - i;
  const c = STOPS[i].map((a, j) => Math.round(a + f * (STOPS[i + 1][j] - a)));
  return 'rgb(' + c.join(',') + ')';
}

function strongest(row) {
  return row.map((w, k) => [w, k]).filter(p => p[0] !== null).sort((a, b) => b[0] - a[0]).slice(0, data.top_keys);
}

function describe(q, k, w) {
  const pair = 'query ' + q + ' "' + data.tokens[q] + '" \u2192 key ' + k + ' "' + data.tokens[k] + '"';
  return pair + ': ' + (w === null ? 'masked' : w.toFixed(4));
}

function showTop(q, row) {
  topKeys.textContent = '';
  const head = document.createElement('div');
  head.textContent = 'query ' + q + ' "' + data.tokens[q] + '" attends most to:';
  topKeys.appendChild(head);
  const list = document.createElement('ol');
  strongest(row).forEach(([w, k]) => {
    const item = document.createElement('li');
    item.textContent = 'key ' + k + ' "' + data.tokens[k] + '": ' + w.toFixed(4);
    list.appendChild(item);
  });
  topKeys.appendChild(list);
}

function render() {
  const weights = data.weights[layerSelect.value][headSelect.value];
  grid.textContent = '';
  const thead = grid.createTHead(), header = thead.insertRow();
  header.appendChild(document.createElement('th'));
  data.tokens.forEach(t => { const th = document.createElement('th'); th.textContent = t; header.appendChild(th); });
  const top = document.createElement('th'); top.textContent = 'top keys'; header.appendChild(top);
  const body = grid.createTBody();
  weights.forEach((row, q) => {
    const tr = body.insertRow();
    const th = document.createElement('th'); th.textContent = data.tokens[q]; tr.appendChild(th);
    row.forEach((w, k) => {
      const td = tr.insertCell();
      td.className = w === null ? 'cell masked' : 'cell';
      td.dataset.query = q; td.dataset.key = k; td.dataset.weight = w === null ? 'masked' : w.toFixed(4);
      if (w !== null) td.style.background = colour(w);
      td.title = describe(q, k, w);
      td.addEventListener('mouseover', () => { tooltip.textContent = describe(q, k, w); showTop(q, row); });
    });
    const best = tr.insertCell(); best.className = 'top';
    best.textContent = strongest(row).slice(0, 3).map(([w, k]) => data.tokens[k] + ' ' + w.toFixed(2)).join('  ');
  });
}
layerSelect.addEventListener('change', render);
headSelect.addEventListener('change', render);
render();
"""


def html_tokens(length: int, panels: int) -> int:
  """How many first tokens of a sequence the page shows for `panels` layer-head pairs."""
  return max(1, min(length, HTML_MAX_TOKENS, int((HTML_MAX_CELLS / max(panels, 1)) ** 0.5)))


def page(weights_NHLM: np.ndarray, allowed_LM: np.ndarray, tokens: list[str], layers: list[int], heads: list[int],
         title: str, note: str = "") -> str:
  """The HTML text of the page for one sequence.

  Args:
    weights_NHLM: attention weights of the sequence, all layers and heads.
    allowed_LM: the mask, False where a key is masked.
    tokens: one label per token.
    layers: the layers to offer.
    heads: the heads to offer.
    title: the page's heading.
    note: a line under the heading (e.g. that the prompt was truncated).

  Returns:
    A complete HTML document.
  """
  # Weights rounded to what the page shows; masked cells are null, never a weight of 0.
  chosen_NHLM = np.round(np.asarray(weights_NHLM, np.float64)[np.ix_(layers, heads)], 6)
  weights = [[[[float(w) if ok else None for w, ok in zip(row, allowed_row)]
               for row, allowed_row in zip(head_LM, allowed_LM)] for head_LM in layer_HLM]
             for layer_HLM in chosen_NHLM]
  data = {"tokens": tokens, "layers": layers, "heads": heads, "weights": weights, "top_keys": TOP_KEYS}
  # Inside <script>, "</" could close the element early: escape it (JSON allows "\\/").
  payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
  note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
  return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h2>{html.escape(title)}</h2>
{note_html}
<div id="controls"><label>Layer <select id="layer"></select></label><label>Head <select id="head"></select></label>
rows: queries, columns: keys; hatched cells are masked; hover a cell to read its weight.</div>
<div id="wrap"><table id="grid"></table></div>
<div id="panel"><div id="tooltip"></div><div id="top-keys"></div></div>
<script type="application/json" id="data">{payload}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""

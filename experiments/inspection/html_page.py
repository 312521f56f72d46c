"""A self-contained HTML page to browse attention patterns: every head of a layer at once, one enlarged, the prompt.

One file with its data, script and style inline (no network, no CDN), so it opens from disk anywhere and can
be mailed around. What it shows, top to bottom:
- the colour legend (`#legend`: a canvas of the colour map from weight 0 to 1, and the masked hatch);
- every chosen head of the chosen layer as a small picture (`#thumbs`, one `.thumb` per head with `data-head`, the
  index into the page's heads, and a canvas of one pixel per query-key cell); a click enlarges that head;
- the prompt as text (`#text`, one `span.token` per token with `data-position` and `data-weight`), coloured by the
  enlarged head's attention: with `#direction` "query", the weight the chosen query gives each key; with "key",
  the weight each query gives the chosen key (the queries that read it). Hovering a token previews it, a click
  chooses it; tokens the mask hides from the choice are hatched (`.masked`);
- the enlarged head as a table (`#grid`; cells `td.cell` with `data-query`, `data-key` and `data-weight`, masked
  cells also `.masked`), `#tooltip` (the hovered cell's weight), `#top-keys` (the hovered query's strongest keys).
Labels and tooltips name every token with its position ("3 :"), so repeated tokens can be told apart. `#layer` and
`#head` (selects) choose the layer and the enlarged head. These ids are stable: tests and users' scripts read them.
Colours are matplotlib's viridis, as in the PNG grids, on the fixed scale 0 to 1 in every view.
"""

from __future__ import annotations

import html
import json

import numpy as np
from matplotlib import colormaps

TOP_KEYS = 5
# The page carries every weight it shows as text: at most this many cells (about 30 MB), and at most
# HTML_MAX_TOKENS tokens (a table of 512 x 512 cells is already slow to draw).
HTML_MAX_CELLS = 4_000_000
HTML_MAX_TOKENS = 512
MASKED_RGB = (221, 221, 221)  # masked cells of the small pictures: a grey that viridis never takes

_STYLE = """
body { font-family: sans-serif; margin: 1em; color: #222; }
#controls { margin-bottom: .6em; }
#controls label { margin-right: 1em; }
#legend { margin-bottom: .6em; font-size: 12px; }
#legend .scale { display: inline-block; vertical-align: middle; }
#legend canvas { width: 256px; height: 12px; display: block; border: 1px solid #999; }
#legend .ticks { display: flex; justify-content: space-between; width: 258px; font-size: 10px; }
.hatch { background: repeating-linear-gradient(45deg, #ddd 0 3px, #bbb 3px 5px); }
#legend .hatch { display: inline-block; width: 16px; height: 12px; vertical-align: middle; margin-left: 1.5em; }
#thumbs { display: flex; flex-wrap: wrap; gap: 6px; margin-bottom: .8em; }
.thumb { cursor: pointer; border: 2px solid transparent; padding: 2px; font-size: 11px; text-align: center; }
.thumb.selected { border-color: #e33; }
.thumb canvas { width: 96px; height: 96px; image-rendering: pixelated; display: block; border: 1px solid #ccc; }
#text-view { margin-bottom: .8em; max-width: 60em; }
#text { line-height: 1.9; margin: .3em 0; font-family: monospace; font-size: 14px; }
#text .token { padding: 1px 2px; margin-right: 1px; cursor: pointer; white-space: pre; border-radius: 2px; }
#text .token.chosen { outline: 2px solid #e33; }
#text-caption { font-size: 12px; color: #555; }
#wrap { overflow: auto; max-width: 100%; max-height: 80vh; border: 1px solid #ccc; display: inline-block; }
#grid { border-collapse: collapse; font-size: 11px; }
#grid th { font-weight: normal; padding: 1px 3px; background: #fff; position: sticky; white-space: pre; }
#grid thead th { top: 0; writing-mode: vertical-rl; transform: rotate(180deg); z-index: 1; }
#grid tbody th { left: 0; text-align: right; z-index: 1; }
#grid td.cell { width: 16px; height: 16px; min-width: 16px; padding: 0; border: 1px solid #fff; }
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
const directionSelect = document.getElementById('direction');
const grid = document.getElementById('grid');
const tooltip = document.getElementById('tooltip');
const topKeys = document.getElementById('top-keys');
const thumbs = document.getElementById('thumbs');
const text = document.getElementById('text');
const caption = document.getElementById('text-caption');
const length = data.tokens.length;
let chosen = length - 1;  // the last token: in a causal model the query that sees every key

function option(select, value, text) {
  const o = document.createElement('option');
  o.value = value; o.textContent = text; select.appendChild(o);
}
data.layers.forEach((layer, i) => option(layerSelect, i, 'layer ' + layer));
data.heads.forEach((head, i) => option(headSelect, i, 'head ' + head));

// The colour map's table, as matplotlib quantizes it: entry floor(w * n), the last for w = 1.
function rgb(w) {
  const n = data.colours.length;
  return data.colours[Math.min(Math.max(Math.floor(w * n), 0), n - 1)];
}
function colour(w) { return 'rgb(' + rgb(w).join(',') + ')'; }
function dark(w) { const c = rgb(w); return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] < 128; }

// A token with its position: two tokens that read alike stay apart.
function label(p) { return p + ' ' + data.tokens[p]; }
function quoted(p) { return p + ' "' + data.tokens[p] + '"'; }

function strongest(row) {
  return row.map((w, k) => [w, k]).filter(p => p[0] !== null).sort((a, b) => b[0] - a[0]).slice(0, data.top_keys);
}

function describe(q, k, w) {
  return 'query ' + quoted(q) + ' \u2192 key ' + quoted(k) + ': ' + (w === null ? 'masked' : w.toFixed(4));
}

function showTop(q, row) {
  topKeys.textContent = '';
  const head = document.createElement('div');
  head.textContent = 'query ' + quoted(q) + ' attends most to:';
  topKeys.appendChild(head);
  const list = document.createElement('ol');
  strongest(row).forEach(([w, k]) => {
    const item = document.createElement('li');
    item.textContent = 'key ' + quoted(k) + ': ' + w.toFixed(4);
    list.appendChild(item);
  });
  topKeys.appendChild(list);
}

function headWeights(head) { return data.weights[layerSelect.value][head]; }

function drawLegend() {
  const canvas = document.querySelector('#legend canvas');
  const context = canvas.getContext('2d');
  const n = data.colours.length;
  const image = context.createImageData(n, 1);
  data.colours.forEach((c, i) => { image.data.set([c[0], c[1], c[2], 255], 4 * i); });
  context.putImageData(image, 0, 0);
}

// The small pictures of the layer's heads: drawn when the layer changes; a change of head only moves the frame.
function drawThumbs() {
  thumbs.textContent = '';
  data.heads.forEach((head, h) => {
    const box = document.createElement('div');
    box.className = 'thumb';
    box.dataset.head = h;
    box.title = 'layer ' + data.layers[layerSelect.value] + ', head ' + head + ': click to enlarge';
    const canvas = document.createElement('canvas');
    canvas.width = length; canvas.height = length;
    const context = canvas.getContext('2d');
    const image = context.createImageData(length, length);
    headWeights(h).forEach((row, q) => row.forEach((w, k) => {
      const c = w === null ? data.masked_rgb : rgb(w), at = 4 * (q * length + k);
      image.data[at] = c[0]; image.data[at + 1] = c[1]; image.data[at + 2] = c[2]; image.data[at + 3] = 255;
    }));
    context.putImageData(image, 0, 0);
    const name = document.createElement('div');
    name.textContent = 'head ' + head;
    box.appendChild(canvas); box.appendChild(name);
    box.addEventListener('click', () => { headSelect.value = h; showHead(); });
    thumbs.appendChild(box);
  });
}

function markThumb() {
  const chosenHead = headSelect.value;
  thumbs.querySelectorAll('.thumb').forEach(box => box.classList.toggle('selected', box.dataset.head === chosenHead));
}

// The weights the text shows for position p: what query p gives each key, or what each query gives key p.
function textWeights(p) {
  const weights = headWeights(headSelect.value);
  return directionSelect.value === 'query' ? weights[p] : weights.map(row => row[p]);
}

function drawText(p) {
  const values = textWeights(p);
  const fromQuery = directionSelect.value === 'query';
  text.querySelectorAll('.token').forEach((span, i) => {
    const w = values[i];
    span.classList.toggle('chosen', i === p);
    span.classList.toggle('masked', w === null);
    span.classList.toggle('hatch', w === null);
    span.dataset.weight = w === null ? 'masked' : w.toFixed(4);
    span.style.background = w === null ? '' : colour(w);
    span.style.color = w !== null && dark(w) ? '#fff' : '#000';
    span.title = fromQuery ? describe(p, i, w) : describe(i, p, w);
  });
  const where = 'layer ' + data.layers[layerSelect.value] + ', head ' + data.heads[headSelect.value] + ': ';
  caption.textContent = where + (fromQuery ? 'the weight query ' + quoted(p) + ' gives each key'
                                           : 'the weight each query gives key ' + quoted(p))
      + ' (hatched: masked; hover a token to preview it, click to choose it)';
}

function buildText() {
  text.textContent = '';
  data.tokens.forEach((t, i) => {
    const span = document.createElement('span');
    span.className = 'token'; span.dataset.position = i; span.textContent = t;
    span.addEventListener('mouseover', () => drawText(i));
    span.addEventListener('click', () => { chosen = i; drawText(i); });
    text.appendChild(span);
  });
  text.addEventListener('mouseleave', () => drawText(chosen));
}

function drawGrid() {
  const weights = headWeights(headSelect.value);
  grid.textContent = '';
  const thead = grid.createTHead(), header = thead.insertRow();
  header.appendChild(document.createElement('th'));
  data.tokens.forEach((t, k) => {
    const th = document.createElement('th'); th.textContent = label(k); header.appendChild(th);
  });
  const top = document.createElement('th'); top.textContent = 'top keys'; header.appendChild(top);
  const body = document.createElement('tbody');  // filled off the page, attached once: one layout, not one per row
  weights.forEach((row, q) => {
    const tr = body.insertRow();
    const th = document.createElement('th'); th.textContent = label(q); tr.appendChild(th);
    row.forEach((w, k) => {
      const td = tr.insertCell();
      td.className = w === null ? 'cell masked hatch' : 'cell';
      td.dataset.query = q; td.dataset.key = k; td.dataset.weight = w === null ? 'masked' : w.toFixed(4);
      if (w !== null) td.style.background = colour(w);
    });
    const best = tr.insertCell(); best.className = 'top';
    best.textContent = strongest(row).slice(0, 3).map(([w, k]) => quoted(k) + ' ' + w.toFixed(2)).join('  ');
  });
  grid.appendChild(body);
}

// One listener for every cell (a listener each would be L x L closures); the native tooltip is written on first hover.
grid.addEventListener('mouseover', event => {
  const td = event.target.closest('td.cell');
  if (!td) return;
  const q = Number(td.dataset.query), k = Number(td.dataset.key), row = headWeights(headSelect.value)[q];
  td.title = describe(q, k, row[k]);
  tooltip.textContent = td.title;
  showTop(q, row);
});

function showHead() {
  markThumb();
  drawText(chosen);
  drawGrid();
}
layerSelect.addEventListener('change', () => { drawThumbs(); showHead(); });
headSelect.addEventListener('change', showHead);
directionSelect.addEventListener('change', () => drawText(chosen));
drawLegend();
buildText();
drawThumbs();
showHead();
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
  # The colour map's table itself, not an approximation: the page colours a weight as the PNG grids do.
  viridis = colormaps["viridis"]
  colours = [rgba[:3] for rgba in viridis(np.arange(viridis.N), bytes=True).tolist()]
  data = {"tokens": tokens, "layers": layers, "heads": heads, "weights": weights, "top_keys": TOP_KEYS,
          "colours": colours, "masked_rgb": list(MASKED_RGB)}
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
every head of the layer below; click one to enlarge it.</div>
<div id="legend"><span class="scale"><canvas width="256" height="1"></canvas><span class="ticks"><span>0</span>
<span>0.25</span><span>0.5</span><span>0.75</span><span>1</span></span></span> attention weight, the same scale in
every view <span class="hatch"></span> masked (plain grey in the small pictures)</div>
<div id="thumbs"></div>
<div id="text-view"><label>Colour the prompt by <select id="direction">
<option value="query">the weight a query gives each key</option>
<option value="key">the weight each query gives a key</option></select></label>
<div id="text"></div><div id="text-caption"></div></div>
<div>The enlarged head: rows are queries, columns keys; hatched cells are masked; hover a cell to read its weight.</div>
<div id="wrap"><table id="grid"></table></div>
<div id="panel"><div id="tooltip"></div><div id="top-keys"></div></div>
<script type="application/json" id="data">{payload}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""

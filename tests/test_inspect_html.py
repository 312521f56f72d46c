"""The attention page in a real headless browser (the system's Chromium driven by selenium), with the network off.

Skips, saying why, where selenium, chromium or chromedriver is missing (.ci/run installs them); fails then in CI.
"""

from __future__ import annotations

import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

from experiments.inspection import forward_pass, html_page
from tests.helpers import components
from transformer import ModelConfig, TransformerLM

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
LAYERS, HEADS = 2, 3


def _binary(names) -> str | None:
  return next((path for path in map(shutil.which, names) if path), None)


@pytest.fixture(scope="module")
def browser():
  try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
  except ImportError:
    components.unavailable("selenium is not installed (requirements-dev.txt)")
  browser_path, driver_path = _binary(BROWSERS), _binary(("chromedriver",))
  if browser_path is None or driver_path is None:
    components.unavailable("no chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
  options = webdriver.ChromeOptions()
  options.binary_location = browser_path
  for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   # Belt and braces with the offline emulation below: any request would go nowhere.
                   "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"):
    options.add_argument(argument)
  driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
  driver.execute_cdp_cmd("Network.enable", {})
  driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                         {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
  yield driver
  driver.quit()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
  """A page for an untrained 2-layer, 3-head model with a sliding window (so some cells are masked)."""
  config = ModelConfig(vocab_size=16, max_len=10, num_layers=LAYERS, d_model=12, num_heads=HEADS,
                       mask="sliding_window", window=4)
  model = TransformerLM(config)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 10), jnp.int32))["params"])
  params = jax.tree.map(lambda x: x * 3.0, params)  # sharper than at init, not one-hot: weights span the scale
  # Labels that must be shown as text, not markup; two alike that only their positions tell apart.
  tokens = ["<a>", ":", "c&", ":", "</script>", "f", "g", "h"]
  ids = np.arange(1, 9, dtype=np.int32)
  weights_NHLM = np.asarray(forward_pass.forward(model, params, ids[None])["weights_NBHLM"][:, 0])
  allowed_LM = forward_pass.allowed_matrix(model, 8)
  path = tmp_path_factory.mktemp("html") / "attention.html"
  path.write_text(html_page.page(weights_NHLM, allowed_LM, tokens, list(range(LAYERS)), list(range(HEADS)),
                                 "test page"), encoding="utf-8")
  return path, weights_NHLM, allowed_LM, tokens


def _select(driver, element_id: str, index: int) -> None:
  from selenium.webdriver.support.ui import Select

  Select(driver.find_element("id", element_id)).select_by_index(index)


def test_page_loads_offline_with_every_head_and_hovering_shows_the_weight(browser, page):
  from selenium.webdriver.common.action_chains import ActionChains

  path, weights_NHLM, allowed_LM, tokens = page
  assert "://" not in path.read_text(encoding="utf-8")  # no address of anything to fetch
  browser.get(path.as_uri())
  assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0  # nothing fetched
  assert len(browser.find_elements("css selector", "#head option")) == HEADS
  assert len(browser.find_elements("css selector", "#layer option")) == LAYERS
  header = [th.text for th in browser.find_elements("css selector", "#grid thead th")][1:-1]
  assert header == [f"{position} {token}" for position, token in enumerate(tokens)]  # "1 :" and "3 :"
  for layer, head, query, key in ((1, 2, 5, 3), (0, 1, 7, 7), (1, 0, 6, 4)):
    _select(browser, "layer", layer)
    _select(browser, "head", head)
    cell = browser.find_element("css selector", f'#grid td.cell[data-query="{query}"][data-key="{key}"]')
    ActionChains(browser).move_to_element(cell).perform()
    shown = browser.find_element("id", "tooltip").text
    assert shown.endswith(f"{weights_NHLM[layer, head, query, key]:.4f}"), shown
    assert f'query {query} "{tokens[query]}"' in shown and f'key {key} "{tokens[key]}"' in shown
    assert float(cell.get_attribute("data-weight")) == pytest.approx(weights_NHLM[layer, head, query, key], abs=1e-4)
    strongest = browser.find_elements("css selector", "#top-keys li")
    assert 1 <= len(strongest) <= html_page.TOP_KEYS
    best_key = int(np.argmax(np.where(allowed_LM[query], weights_NHLM[layer, head, query], -1)))
    assert strongest[0].text.startswith(f"key {best_key} ")
  masked = browser.find_elements("css selector", "#grid td.cell.masked")
  assert len(masked) == int((~allowed_LM).sum())
  assert "<a>" in browser.find_element("css selector", "#grid tbody th").text  # a label is text, not markup


def _viridis_bytes(weights) -> np.ndarray:
  """RGB bytes matplotlib's viridis gives the weights as the page stores them (rounded to 6 decimals)."""
  return matplotlib.colormaps["viridis"](np.round(np.asarray(weights, np.float64), 6), bytes=True)[..., :3]


def _canvas_rgb(driver, selector: str, index: int = 0) -> np.ndarray:
  """The pixels of the index-th canvas matching selector, rows x columns x RGB, read back from the browser."""
  script = """const c = document.querySelectorAll(arguments[0])[arguments[1]];
              return [c.height, c.width, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];"""
  rows, columns, rgba = driver.execute_script(script, selector, index)
  return np.asarray(rgba, np.uint8).reshape(rows, columns, 4)[..., :3]


def _token_colours(driver) -> list[tuple[int, int, int] | None]:
  """Each text token's background as RGB, None where the token is marked masked."""
  script = """return Array.from(document.querySelectorAll('#text .token')).map(s =>
                s.classList.contains('masked') ? null : getComputedStyle(s).backgroundColor);"""
  colours = []
  for css in driver.execute_script(script):
    colours.append(None if css is None else tuple(int(part) for part in css[css.index("(") + 1:-1].split(",")[:3]))
  return colours


def test_every_head_of_the_layer_is_drawn_small_and_a_click_enlarges_it(browser, page):
  path, weights_NHLM, allowed_LM, _ = page
  browser.get(path.as_uri())
  _select(browser, "layer", 1)
  assert len(browser.find_elements("css selector", "#thumbs .thumb")) == HEADS
  for head in range(HEADS):
    # One pixel per query-key cell: the weight's colour where allowed, the masked grey elsewhere.
    expected_LM3 = np.where(allowed_LM[..., None], _viridis_bytes(weights_NHLM[1, head]),
                            np.asarray(html_page.MASKED_RGB, np.uint8))
    np.testing.assert_array_equal(_canvas_rgb(browser, "#thumbs .thumb canvas", head), expected_LM3)
  browser.find_elements("css selector", "#thumbs .thumb")[2].click()
  assert browser.find_element("id", "head").get_attribute("value") == "2"
  selected = [t.get_attribute("data-head") for t in browser.find_elements("css selector", "#thumbs .thumb.selected")]
  assert selected == ["2"]
  cell = browser.find_element("css selector", '#grid td.cell[data-query="6"][data-key="4"]')
  assert float(cell.get_attribute("data-weight")) == pytest.approx(weights_NHLM[1, 2, 6, 4], abs=1e-4)


def test_the_prompt_is_coloured_by_a_chosen_query_and_by_a_chosen_key(browser, page):
  from selenium.webdriver.common.action_chains import ActionChains

  path, weights_NHLM, allowed_LM, tokens = page
  browser.get(path.as_uri())
  _select(browser, "layer", 1)
  browser.find_elements("css selector", "#thumbs .thumb")[2].click()
  spans = browser.find_elements("css selector", "#text .token")
  assert [s.text for s in spans] == tokens

  def expected(weights, allowed):
    return [tuple(int(c) for c in rgb) if ok else None for rgb, ok in zip(_viridis_bytes(weights), allowed)]

  spans[5].click()  # query 5 reads keys 2..5 through the window of 4
  assert _token_colours(browser) == expected(weights_NHLM[1, 2, 5], allowed_LM[5])
  assert browser.find_element("css selector", "#text .token.chosen").get_attribute("data-position") == "5"
  assert 'key 3 ":"' in spans[3].get_attribute("title")  # the tooltip tells the two ":" apart
  _select(browser, "direction", 1)  # key 5: read by queries 5..7
  assert _token_colours(browser) == expected(weights_NHLM[1, 2, :, 5], allowed_LM[:, 5])
  ActionChains(browser).move_to_element(spans[2]).perform()  # hovering previews key 2 ...
  assert _token_colours(browser) == expected(weights_NHLM[1, 2, :, 2], allowed_LM[:, 2])
  ActionChains(browser).move_to_element(browser.find_element("css selector", "h2")).perform()
  assert _token_colours(browser) == expected(weights_NHLM[1, 2, :, 5], allowed_LM[:, 5])  # ... leaving, the choice


def test_the_legend_shows_the_colour_map_from_0_to_1(browser, page):
  path = page[0]
  browser.get(path.as_uri())
  legend = browser.find_element("id", "legend")
  assert "attention weight" in legend.text and "masked" in legend.text
  ticks = [t.text for t in legend.find_elements("css selector", ".ticks span")]
  assert ticks[0] == "0" and ticks[-1] == "1"
  strip = _canvas_rgb(browser, "#legend canvas")[0]
  np.testing.assert_array_equal(strip, _viridis_bytes((np.arange(len(strip)) + 0.5) / len(strip)))

"""The attention page in a real headless browser (the system's Chromium driven by selenium), with the network off.

Skips, saying why, where selenium, chromium or chromedriver is missing (.ci/run installs them); fails then in CI.
"""

from __future__ import annotations

import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
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
  params = jax.tree.map(lambda x: x * 20.0, params)  # sharper patterns than at init: cells differ
  tokens = ["<a>", "b&", "c", "d", "</script>", "f", "g", "h"]  # labels that must be shown as text, not markup
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
  assert header == tokens
  for layer, head, query, key in ((1, 2, 5, 3), (0, 1, 7, 7), (1, 0, 6, 4)):
    _select(browser, "layer", layer)
    _select(browser, "head", head)
    cell = browser.find_element("css selector", f'#grid td.cell[data-query="{query}"][data-key="{key}"]')
    ActionChains(browser).move_to_element(cell).perform()
    shown = browser.find_element("id", "tooltip").text
    assert shown.endswith(f"{weights_NHLM[layer, head, query, key]:.4f}"), shown
    assert float(cell.get_attribute("data-weight")) == pytest.approx(weights_NHLM[layer, head, query, key], abs=1e-4)
    strongest = browser.find_elements("css selector", "#top-keys li")
    assert 1 <= len(strongest) <= html_page.TOP_KEYS
    best_key = int(np.argmax(np.where(allowed_LM[query], weights_NHLM[layer, head, query], -1)))
    assert strongest[0].text.startswith(f"key {best_key} ")
  masked = browser.find_elements("css selector", "#grid td.cell.masked")
  assert len(masked) == int((~allowed_LM).sum())
  assert "<a>" in browser.find_element("css selector", "#grid tbody th").text  # a label is text, not markup

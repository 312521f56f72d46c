"""Every config file in configs/, every variant: it loads, its model section converts, and the model builds.

A config file with variants (selected as `configs/<file>.py:<arg>`) lists them in a module-level tuple
`VARIANTS`; a file without it is loaded as `get_config()`. Files without `get_config` are helpers.
"""

import glob
import importlib
import os

import jax
import jax.numpy as jnp
import pytest

from experiments.data import datasets
from transformer import ModelConfig, TransformerLM, model_config_from

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _cases():
  cases = []
  for path in sorted(glob.glob(os.path.join(CONFIGS, "*.py"))):
    name = os.path.splitext(os.path.basename(path))[0]
    if name == "__init__":
      continue
    module = importlib.import_module(f"configs.{name}")
    if not hasattr(module, "get_config"):
      continue
    for variant in getattr(module, "VARIANTS", (None,)):
      cases.append(pytest.param(name, variant, id=name if variant is None else f"{name}:{variant}"))
  return cases


def _load(name: str, variant: str | None):
  """What `--config=configs/<name>.py[:<variant>]` gives (ml_collections calls get_config(arg) when given)."""
  module = importlib.import_module(f"configs.{name}")
  return module.get_config() if variant is None else module.get_config(variant)


def _model_config(config) -> ModelConfig:
  """The model section with its 0s ("from the data") filled from the data section, as training does."""
  values = config.model.to_dict()
  data = config.get("data", {})
  if values.get("vocab_size") == 0:
    # Text with the char tokenizer knows its vocabulary only from the text: any size builds the model.
    values["vocab_size"] = datasets.known_vocab_size(data) or 256
  if values.get("max_len") == 0:
    values["max_len"] = data["seq_len"]
  return model_config_from(values)


@pytest.mark.parametrize("name,variant", _cases())
def test_config_loads_and_model_builds(name, variant):
  config = _load(name, variant)
  model_config = _model_config(config)
  tokens_BL = jax.ShapeDtypeStruct((1, min(8, model_config.max_len)), jnp.int32)
  # eval_shape traces init (the forward pass included) without allocating: a 175B model builds in seconds.
  variables = jax.eval_shape(TransformerLM(model_config).init, jax.random.key(0), tokens_BL)
  assert jax.tree.leaves(variables["params"])


def test_every_variant_file_is_enumerated():
  ids = {case.id for case in _cases()}
  assert {"gpt3:small", "gpt3:175b", "gpt2:small", "gpt2:xl"} <= ids
  assert len([i for i in ids if i.startswith("gpt3:")]) == 8 and len([i for i in ids if i.startswith("gpt2:")]) == 4

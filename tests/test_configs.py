"""Every config file in configs/, every variant: it loads, its model section converts, and the model builds.

The files and their variants are those of tests/helpers/config_files.py, which the validation test of every
config file (test_runner.py) and of every sweep file (test_sweep.py) enumerate too.
"""

import jax
import jax.numpy as jnp
import pytest

from experiments import validation
from experiments.data import datasets
from tests.helpers import config_files
from transformer import ModelConfig, TransformerLM, model_config_from


def _cases():
  # Tracing grows with depth (gpt3:175b unrolls 96 blocks): the larger GPT sizes are in the full suite only.
  def marks(name, variant):
    return [pytest.mark.slow] if name in ("gpt2", "gpt3") and variant != "small" else []

  return [pytest.param(name, variant, id=name if variant is None else f"{name}:{variant}", marks=marks(name, variant))
          for name in config_files.names() for variant in config_files.variants(name)]


def _model_config(config) -> ModelConfig:
  """The model section with its 0s ("from the data") filled from the data section, as training does."""
  # Text with the char tokenizer knows its vocabulary only from the text: any size builds the model.
  resolved = validation.resolve(config, data_vocab_size=datasets.known_vocab_size(config.data) or 256)
  return model_config_from(resolved.model)


@pytest.mark.parametrize("name,variant", _cases())
def test_config_loads_and_model_builds(name, variant):
  config = config_files.load(name, variant)
  model_config = _model_config(config)
  tokens_BL = jax.ShapeDtypeStruct((1, min(8, model_config.max_len)), jnp.int32)
  # eval_shape traces init (the forward pass included) without allocating: a 175B model builds in seconds.
  variables = jax.eval_shape(TransformerLM(model_config).init, jax.random.key(0), tokens_BL)
  assert jax.tree.leaves(variables["params"])


def test_every_variant_file_is_enumerated():
  ids = {case.id for case in _cases()}
  assert {"gpt3:small", "gpt3:175b", "gpt2:small", "gpt2:xl"} <= ids
  assert len([i for i in ids if i.startswith("gpt3:")]) == 8 and len([i for i in ids if i.startswith("gpt2:")]) == 4

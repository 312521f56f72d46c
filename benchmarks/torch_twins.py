"""Which recipe of benchmarks/torch_shakespeare_char.py (nanoGPT's, in PyTorch) has a config's sizes.

Apart from that script so that the JAX benchmarks can choose one without importing torch.
"""

# (layers, heads, width, context, batch, dropout) -> the script's --recipe.
RECIPES = {(4, 4, 128, 64, 12, 0.0): "cpu", (6, 6, 384, 256, 64, 0.2): "gpu"}


def recipe_of(config) -> str:
  """The --recipe of the PyTorch twin of a run config.

  Raises:
    ValueError: no recipe there has the config's sizes.
  """
  m, t = config.model, config.train
  key = (m.num_layers, m.num_heads, m.d_model, config.data.seq_len, t.batch_size, m.dropout_rate)
  if key not in RECIPES:
    raise ValueError("--torch_python times nanoGPT's recipes: use it with configs/shakespeare_char.py:cpu or "
                     "configs/shakespeare_char.py, sizes unchanged")
  return RECIPES[key]

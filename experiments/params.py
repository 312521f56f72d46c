r"""Prints the parameter and FLOP accounting of a model: counted from shapes, nothing is allocated.

  python -m experiments.params --config=configs/gpt3.py:175b
  python -m experiments.params --config=configs/gpt3.py:175b --json
  python -m experiments.params --config=configs/base.py --config.model.vocab_size=64 --config.model.max_len=64
  python -m experiments.params --workdir=runs/my_run     # the model of a run, from DIR/config.json

With --json, prints one JSON object: total, attention (weights without biases, all layers),
per_block_attention, per_head ({query, key, value_down, value_up} or {query, key, value}), per_block,
mlp, embeddings and the other keys of transformer.accounting.count_tree, plus flops_per_token (training,
forward and backward, at seq_len) and seq_len.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from experiments.files import CONFIG_FILE
from transformer import ModelConfig, accounting, model_config_from

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/gpt3.py:175b.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "A run's directory: account for the model of its config.json "
                               "instead of --config.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "T for the FLOPs per token (default: data.seq_len, else "
                                "model.max_len).")


def model_config(model: Mapping[str, Any], data: Mapping[str, Any] | None = None) -> ModelConfig:
  """Builds the ModelConfig of a `model` section whose vocab_size and max_len are set.

  Args:
    model: the config's `model` section.
    data: the `data` section; when given, a 0 ("from the data") is filled from data.vocab_size and
      data.seq_len, as training does. When None, a 0 is an error.

  Returns:
    The validated ModelConfig.

  Raises:
    ValueError: vocab_size or max_len is 0 and not resolvable, or the section is invalid.
  """
  values = dict(model.to_dict() if hasattr(model, "to_dict") else model)
  for key, data_key in (("vocab_size", "vocab_size"), ("max_len", "seq_len")):
    if values.get(key) == 0:
      if data is not None and data.get(data_key):
        values[key] = data[data_key]
      else:
        # 0 means "the data's size" in configs/base.py, but counting parameters does not load any data.
        raise ValueError(f"model.{key} is 0 (taken from the data in training), and this command reads no data: "
                         f"set it, e.g. --config.model.{key}=1024")
  return model_config_from(values)


def report(config: ModelConfig, seq_len: int, as_json: bool) -> str:
  """The accounting of `config` as a table or as one JSON object.

  Args:
    config: the model.
    seq_len: T for the FLOPs per token.
    as_json: a JSON object instead of the table.

  Returns:
    The text to print.
  """
  counts = accounting.parameter_counts(config)
  if not as_json:
    return accounting.format_table(config, counts, seq_len)
  return json.dumps({**counts, "flops_per_token": accounting.flops_per_token(config, seq_len), "seq_len": seq_len})


def _sections() -> tuple[Mapping[str, Any], Mapping[str, Any] | None]:
  """The model and data sections to account for: from --config, or from --workdir's config.json."""
  if (_CONFIG.value is None) == (_WORKDIR.value is None):
    raise app.UsageError("give exactly one of --config=FILE[:ARG] and --workdir=DIR")
  if _CONFIG.value is not None:
    return _CONFIG.value.model, None
  # --workdir: the config a run saved as DIR/config.json (the trainer writes it); its 0s ("from the data")
  # are resolved from its data section, as the trainer resolved them.
  path = os.path.join(_WORKDIR.value, CONFIG_FILE)
  if not os.path.exists(path):
    what = "no such folder" if not os.path.isdir(_WORKDIR.value) else f"no {CONFIG_FILE} there"
    raise app.UsageError(f"--workdir={_WORKDIR.value}: {what}; give a training run's directory (its --workdir)")
  with open(path) as f:
    saved = json.load(f)
  if "model" not in saved:
    raise app.UsageError(f"{path} has no 'model' section: is --workdir a run's directory?")
  return saved["model"], saved.get("data", {})


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  model, data = _sections()
  try:
    config = model_config(model, data)
  except ValueError as e:  # a config mistake: one line naming the key, no traceback, status 2 as in training
    cli.fail(str(e))
  data_seq_len = (data if data is not None else _CONFIG.value.get("data", {})).get("seq_len", 0)
  seq_len = _SEQ_LEN.value or data_seq_len or config.max_len
  print(report(config, seq_len, _JSON.value))


if __name__ == "__main__":
  cli.run(main)

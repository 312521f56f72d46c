r"""Imports a Hugging Face GPT-2 checkpoint as a workdir that every command of this project reads.

  python -m experiments.import_hf --checkpoint=gpt2 --workdir=runs/gpt2 [--config=configs/base.py ...]
  python -m experiments.import_hf --checkpoint=path/to/save_pretrained_folder --workdir=runs/mine

--checkpoint is a folder as `save_pretrained` writes it (config.json, model.safetensors, and the tokenizer's
vocab.json + merges.txt or tokenizer.json), or a hub name (`gpt2`, `openai-community/gpt2-xl`) downloaded with
huggingface_hub where there is internet. The workdir gets config.json (the sections of --config, default
configs/base.py, with the checkpoint's model and text data through GPT-2's tokenizer), its checkpoint at step 0
(parameters only) and tokenizer/. Then `evaluate`, `sample` and `inspect` take --workdir=DIR, and training
fine-tunes from it with --config.checkpoint.restore_from=DIR. See experiments/hugging_face.py.
"""

from __future__ import annotations

import json
import logging
import os

from absl import app, flags
from ml_collections import config_flags

from experiments import cli, hugging_face

_BASE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "base.py")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A Hugging Face checkpoint folder, or a hub name such as gpt2.",
                                  required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The workdir to write (new or empty).", required=True)
_CONFIG = config_flags.DEFINE_config_file("config", _BASE, "The config whose sections other than model the "
                                          "workdir keeps (data: what evaluate reads; data.seq_len at most the "
                                          "model's context).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])} (flags take the form --name=value)")
  logging.getLogger("absl").setLevel(logging.WARNING)
  try:
    result = hugging_face.import_checkpoint(_CHECKPOINT.value, _WORKDIR.value, _CONFIG.value)
  except hugging_face.ImportFailure as error:
    cli.fail(str(error))
  except OSError as error:  # the workdir's folder refuses the write (read-only, full...)
    cli.fail(cli.os_error_line(error) or str(error))
  model = result["model"]
  print(json.dumps({"workdir": result["workdir"], "source": result["source"], "parameters": result["parameters"],
                    "layers": model["num_layers"], "d_model": model["d_model"], "heads": model["num_heads"],
                    "context": model["max_len"], "vocab_size": result["vocab_size"]}, indent=1))


if __name__ == "__main__":
  cli.run(main)

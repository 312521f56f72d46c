"""A trained run in a notebook: its model, parameters, tokenizer and config in one call, and a prompt's insides.

  import experiments
  run = experiments.load_run("runs/default")            # the newest checkpoint that restores; step=S for another
  logits_BLV = run.model.apply({"params": run.params}, tokens_BL)
  seen = run.activations("3 17 5 40 3")                  # text in the run's tokenizer, or a list of token ids
  seen.weights_NHLM[1, 2]                                # layer 1, head 2: queries x keys, rows sum to 1
  seen.residual_NLD[-1]                                  # the residual stream after the last block

Works from any directory once the project is installed (`pip install -e .`); the workdir is a path as usual.
What it loads is what the commands load (checkpoint.load_model, tokenizers.load_from_workdir); the activations
come from the inspected forward pass (inspection/forward_pass.py: the reference attention, no dropout). Letters
as in the README's key: N layers, H heads, L queries, M keys, D width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from experiments import checkpoint
from experiments.data import tokenizers
from experiments.inspection import forward_pass
from transformer import TransformerLM


@dataclasses.dataclass(frozen=True)
class Activations:
  """What the model computes on one prompt, every array as numpy without the batch axis."""

  ids_L: np.ndarray  # the prompt's token ids (cut to max_len: see note)
  tokens: list[str]  # each token as text, for labels
  weights_NHLM: np.ndarray  # attention weights of every layer and head, float32; 0 where masked
  allowed_LM: np.ndarray  # the mask: False where a query may not see a key
  residual_NLD: np.ndarray  # the residual stream after each block
  embedding_LD: np.ndarray  # the token embeddings, before positions and blocks
  logits_LV: np.ndarray  # next-token logits at each position
  note: str  # "" or why the prompt was cut


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run as loaded by load_run."""

  workdir: str
  step: int  # the checkpoint's step
  model: TransformerLM  # as trained (its attention implementation and dropout as configured)
  params: Any  # the parameter tree, on the default device
  tokenizer: tokenizers.Tokenizer  # encode/decode/token_strings, as training encoded
  config: ConfigDict  # the run's config.json: every section, vocab_size and max_len resolved

  def encode(self, prompt: str | Sequence[int] | np.ndarray) -> np.ndarray:
    """Token ids of a prompt: text is encoded with the run's tokenizer, ids are taken as they are."""
    if isinstance(prompt, str):
      return np.asarray(self.tokenizer.encode(prompt), np.int32)
    ids = np.asarray(prompt, np.int32)
    if ids.ndim != 1:
      raise ValueError(f"a prompt of ids is one sequence; got an array of shape {ids.shape}")
    vocab_size = self.model.config.vocab_size
    if ids.size and not (0 <= ids.min() and ids.max() < vocab_size):
      raise ValueError(f"token ids must be in [0, {vocab_size}); got {ids.min()}..{ids.max()}")
    return ids

  def activations(self, prompt: str | Sequence[int] | np.ndarray) -> Activations:
    """The attention weights, residual stream and logits of one prompt (cut to max_len, with a note).

    Args:
      prompt: text in the run's tokenizer (on built-in tasks, ids separated by spaces), or token ids.
    """
    ids_L = self.encode(prompt)
    if len(ids_L) == 0:
      raise ValueError(f"the prompt {prompt!r} has no tokens")
    max_len = self.model.config.max_len
    note = f"prompt truncated to the model's {max_len} tokens (of {len(ids_L)})" if len(ids_L) > max_len else ""
    ids_L = ids_L[:max_len]
    out = forward_pass.forward(self.model, self.params, jnp.asarray(ids_L)[None])
    return Activations(
        ids_L=ids_L, tokens=list(self.tokenizer.token_strings(ids_L)),
        weights_NHLM=np.asarray(out["weights_NBHLM"][:, 0]),
        allowed_LM=forward_pass.allowed_matrix(self.model, len(ids_L)),
        residual_NLD=np.asarray(out["residual_NBLD"][:, 0]), embedding_LD=np.asarray(out["embedding_BLD"][0]),
        logits_LV=np.asarray(out["logits_BLV"][0]), note=note)


def load_run(workdir: str, step: int | None = None) -> Run:
  """Loads a trained run for a notebook: model, parameters, tokenizer and config.

  Args:
    workdir: the run's directory (what it trained with as --workdir).
    step: the checkpoint to read; None reads the newest that restores (a failure is one warning line).

  Returns:
    The Run; `run.activations(prompt)` gives a prompt's attention weights and residual stream.

  Raises:
    FileNotFoundError: the workdir has no config.json or no checkpoint (at that step), or a text run's
      tokenizer is gone.
    checkpoint.CheckpointError: the checkpoint at `step`, or with None every checkpoint, does not read.
  """
  config = checkpoint.read_config(workdir)
  model, params, step = checkpoint.load_model(workdir, step)
  return Run(workdir=workdir, step=step, model=model, params=params,
             tokenizer=tokenizers.load_from_workdir(workdir), config=config)


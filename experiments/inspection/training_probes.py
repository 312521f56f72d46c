"""Probes during training: at each evaluation, attention grids as TensorBoard images and per-head scores as scalars.

Set `inspect.probe_prompts` in the config (one prompt, or a tuple of them) for grids and scores of those prompts.
Without them, a single run of a built-in task draws the grid of its first validation example (`inspect.default_probe`,
on by default): one short forward pass per evaluation, no scores. The probes read the parameters only: they never
touch the train state, its RNG or the data iterator, so a resumed run stays bitwise identical to one that never
stopped. Their forward passes are jitted once, outside the train step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from experiments.inspection import forward_pass, head_scores, parsing
from transformer import TransformerLM


INDUCTION_HEADS = "heads/induction_heads"  # the metric counting the heads flagged as induction heads
# The default probe's prompt: the first tokens of validation example 0, the same example at every evaluation so
# that its images compare over the steps; a built-in task's whole example at its default length.
DEFAULT_PROBE_TOKENS = 64
DEFAULT_PROBE_IMAGE = "attention/validation_example"


def scalar_name(score: str, layer: int, head: int) -> str:
  """The metric name of one head's score, e.g. heads/induction/layer1_head0."""
  return f"heads/{score}/layer{layer}_head{head}"


class TrainingProbes:
  """Everything the probes need, built once per run: encoded prompts, the chosen heads, jitted passes."""

  def __init__(self, config: ConfigDict, model: TransformerLM, tokenizer: Any, out_sharding: Any = None,
               validation: Sequence[Mapping[str, np.ndarray]] | None = None):
    """Encodes the prompts now, so that a bad prompt stops the run before training, not at its first evaluation.

    Args:
      config: the run config (its `inspect` section).
      model: the model being trained.
      tokenizer: the run's tokenizer (token ids for built-in tasks): it encodes the prompts and labels the axes.
      out_sharding: where the weights the probes read land (replicated, so every process can read them).
      validation: the validation examples the default probe takes its prompt from (None: no default probe).

    Raises:
      ValueError: a prompt does not encode, or inspect.layers / inspect.heads name no layer or head of the model.
    """
    c, section = model.config, config.get("inspect")
    self.model = model
    self.prompts = []  # (ids, labels, note) of each prompt
    self.images: list[tuple[str, str]] = []  # the TensorBoard tag and the title of each prompt's grid
    prompts = parsing.prompt_list(section.probe_prompts) if section is not None else []
    # Configs saved before the default probe existed have no default_probe key: they keep running without one.
    default = not prompts and validation is not None and bool(section is not None and section.get("default_probe"))
    if not prompts and not default:
      return
    self.layers = parsing.parse_indices(section.layers, c.num_layers, "inspect.layers")
    self.heads = parsing.parse_indices(section.heads, c.num_heads, "inspect.heads")
    self.scores = not default  # the default probe stays one forward pass: the scores need the induction probe too
    if default:
      ids = np.asarray(validation[0]["inputs"][:min(DEFAULT_PROBE_TOKENS, c.max_len)], np.int32)
      self.prompts.append((ids, list(tokenizer.token_strings(ids)), ""))
      self.images.append((DEFAULT_PROBE_IMAGE, "validation example 0"))
    for i, prompt in enumerate(prompts):
      try:
        ids, note = parsing.encode(tokenizer, prompt, c.max_len)
      except ValueError as error:
        raise ValueError(f"inspect.probe_prompts[{i}]={prompt!r} cannot be used: {error}") from None
      self.prompts.append((ids, list(tokenizer.token_strings(ids)), note))
      self.images.append((f"attention/prompt{i}", f"prompt {i}"))
    if self.scores:
      self.induction = head_scores.induction_probe(c.vocab_size, c.max_len)
    # Replicated outputs: every process of a multi-host job can read the weights it plots and the circuits.
    self._forward = jax.jit(lambda params, tokens_BL: forward_pass.forward(model, params, tokens_BL)["weights_NBHLM"],
                            out_shardings=out_sharding)  # the inner jit is inlined into this one
    self._circuits = jax.jit(lambda params: head_scores.ov_circuits(c, params), out_shardings=out_sharding)

  @property
  def enabled(self) -> bool:
    return bool(self.prompts)

  def measure(self, params: Any) -> tuple[dict[str, float], list[np.ndarray]]:
    """Per-head scores as named scalars, and each prompt's weights_NHLM (all processes run this).

    Every score of every head (heads/<score>/layer<n>_head<h>), and heads/induction_heads: how many heads
    head_scores.induction_heads counts as induction heads; no scores for the default probe.
    """
    prompt_weights = [np.asarray(jax.device_get(self._forward(params, ids[None])))[:, 0] for ids, _, _ in self.prompts]
    if not self.scores:
      return {}, prompt_weights
    # Entropy, distance and previous-token on the first prompt; induction on repeated random blocks and controls.
    first_NBHLM = prompt_weights[0][:, None]
    probe_NBHLM = np.asarray(jax.device_get(self._forward(params, self.induction.sequences_BL)))
    circuits_NHRR = np.asarray(jax.device_get(self._circuits(params)))
    scores = head_scores.scores_of(first_NBHLM, probe_NBHLM, self.induction, circuits_NHRR)
    scalars = {scalar_name(name, layer, head): float(value)
               for name, scores_NH in scores.items() for (layer, head), value in np.ndenumerate(np.asarray(scores_NH))}
    scalars[INDUCTION_HEADS] = float(head_scores.induction_heads(scores).sum())
    return scalars, prompt_weights

  def write(self, step: int, params: Any, writer: Any) -> None:
    """Measures and writes the scalars and the attention-grid images of each prompt (process 0 writes)."""
    scalars, prompt_weights = self.measure(params)
    if scalars:
      writer.write(step, scalars)
    if not writer.enabled:
      return
    # matplotlib only here, where a figure is drawn: a run without probes (and its validation) never imports it.
    from experiments.inspection import plots  # pylint: disable=g-import-not-at-top

    for (name, title), (ids, labels, note), weights_NHLM in zip(self.images, self.prompts, prompt_weights):
      allowed_LM = forward_pass.allowed_matrix(self.model, len(ids))
      figures = plots.attention_figures(weights_NHLM, allowed_LM, labels, self.layers, self.heads,
                                        f"{title} at step {step}", note)
      # One image per figure: a grid too big for one figure (plots.figure_rows) comes in parts.
      tags = [name] if len(figures) == 1 else [f"{name}_part{j + 1}" for j in range(len(figures))]
      for tag, figure in zip(tags, figures):
        writer.write_image(step, tag, plots.to_image(figure))

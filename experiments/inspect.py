r"""Looks inside a trained model: attention patterns, per-head scores, a token's embedding in context.

  python -m experiments.inspect attention --workdir=DIR --prompt="3 17 5 3" [--layers=0,1] [--heads=0] --out=a.png
  python -m experiments.inspect heads --workdir=DIR [--prompt=...] [--out=heads.png]
  python -m experiments.inspect context --workdir=DIR --token=WORD --prompt=... --prompt=... [--out=context.png]

Each command loads the latest checkpoint of DIR (or --step); in a population's workdir, --member=I picks a
member. `attention` writes a PNG grid of panels (one per chosen layer and head) and, beside it, a self-contained
HTML page with the same name ending in .html.
Prompts are text in the run's tokenizer (for the built-in tasks: token ids separated by spaces).
Libraries' INFO records (orbax, JAX) are hidden: --verbosity=0 shows them.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import numpy as np
from absl import app, flags

from experiments import checkpoint, cli, population
from experiments.data import tokenizers
from experiments.inspection import context, forward_pass, head_scores, html_page, parsing, plots, tables

SUBCOMMANDS = ("attention", "heads", "context")
RANDOM_LENGTH, RANDOM_BATCH = 256, 8  # `heads` without prompts: random sequences this long, this many

_FLAGS: dict[str, flags.FlagHolder] = {}


def _define_flags() -> dict[str, flags.FlagHolder]:
  """The command's flags, defined only when it runs as a program.

  Importing this module (tests, notebooks, other commands) defines no flag, so its --workdir never collides
  with the --workdir of another command imported into the same process.
  """
  return {
      "workdir": flags.DEFINE_string("workdir", None, "A training run's directory (or a population member's)."),
      "member": flags.DEFINE_integer("member", None, "In a population's workdir: the member to load (0 to S-1)."),
      "step": flags.DEFINE_integer("step", None, "The checkpoint to load (default: the latest)."),
      "prompt": flags.DEFINE_multi_string("prompt", [], "Text in the run's tokenizer; `context` takes two or more."),
      "layers": flags.DEFINE_string("layers", "", "attention: comma list of layers to draw (default: all)."),
      "heads": flags.DEFINE_string("heads", "", "attention: comma list of heads to draw (default: all)."),
      "token": flags.DEFINE_string("token", None, "context: the word whose embedding is compared across prompts."),
      "out": flags.DEFINE_string("out", None, "The PNG to write (default: DIR/inspect/<command>_step<S>.png; an "
                                 "attention grid too big for one figure goes to OUT_1.png, OUT_2.png, ...)."),
  }


def _default_out(workdir: str, command: str, step: int) -> str:
  return os.path.join(workdir, "inspect", f"{command}_step{step}.png")


def _prepare_out(path: str) -> str:
  if not path.endswith(".png"):
    raise ValueError(f"--out={path!r}: expected a path ending in .png")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return path


def part_paths(path: str, parts: int) -> list[str]:
  """The PNG files of a grid in `parts` figures: `path` itself for one, else path_1.png, path_2.png, ..."""
  if parts == 1:
    return [path]
  return [f"{path[:-len('.png')]}_{part}.png" for part in range(1, parts + 1)]


def run_attention(workdir: str, prompt: str, layers: str = "", heads: str = "", out: str | None = None,
                  step: int | None = None) -> dict[str, Any]:
  """`attention`: writes the PNG grids (one file per plots.figure_rows part) and the HTML page of a prompt's attention.

  Returns:
    {"pngs", "html": the paths written, "step": the checkpoint's step, "figures": the PNGs' figures (their panels
    hold the arrays drawn), "weights_NHLM": the model's weights}.
  """
  model, params, step = checkpoint.load_model(workdir, step)
  c = model.config
  layer_list = parsing.parse_indices(layers, c.num_layers, "--layers")
  head_list = parsing.parse_indices(heads, c.num_heads, "--heads")
  tokenizer = tokenizers.load_from_workdir(workdir)
  ids, note = parsing.encode(tokenizer, prompt, c.max_len)
  title = f"Attention of {os.path.basename(os.path.normpath(workdir))} at step {step} (mask: {c.mask})"
  weights_NHLM = np.asarray(forward_pass.forward(model, params, ids[None])["weights_NBHLM"][:, 0])
  allowed_LM, labels = forward_pass.allowed_matrix(model, len(ids)), list(tokenizer.token_strings(ids))
  figures = plots.attention_figures(weights_NHLM, allowed_LM, labels, layer_list, head_list, title, note)
  shown = html_page.html_tokens(len(ids), len(layer_list) * len(head_list))
  html_note = note
  if shown < len(ids):
    html_note = "; ".join(filter(None, [note, f"first {shown} of {len(ids)} tokens shown (choose fewer "
                                              f"--layers and --heads to see more)"]))
  page = html_page.page(weights_NHLM[:, :, :shown, :shown], allowed_LM[:shown, :shown], labels[:shown],
                        layer_list, head_list, title, html_note)
  png = _prepare_out(out or _default_out(workdir, "attention", step))
  html_path = png[:-len(".png")] + ".html"
  pngs = part_paths(png, len(figures))
  for figure, path in zip(figures, pngs):
    plots.save(figure, path)
  with open(html_path, "w", encoding="utf-8") as f:
    f.write(page)
  return {"pngs": pngs, "html": html_path, "step": step, "figures": figures, "weights_NHLM": weights_NHLM}


def run_heads(workdir: str, prompts: list[str] | None = None, out: str | None = None,
              step: int | None = None) -> dict[str, Any]:
  """`heads`: per-head scores as a table (returned) and a heat map per score (written as a PNG).

  Entropy, distance and previous-token scores are measured on the prompts (each cut to the shortest), or on
  RANDOM_BATCH sequences of uniformly random tokens (max_len long, at most RANDOM_LENGTH); the induction score
  and its control always on head_scores.induction_probe's sequences; the copying score on the parameters.

  Returns:
    {"scores": {name: scores_NH}, "induction_heads": flagged_NH (head_scores.induction_heads), "table": text,
    "png": path, "step": step}.
  """
  model, params, step = checkpoint.load_model(workdir, step)
  c = model.config
  if prompts:
    tokenizer = tokenizers.load_from_workdir(workdir)
    encoded = [parsing.encode(tokenizer, prompt, c.max_len)[0] for prompt in prompts]
    length = min(len(ids) for ids in encoded)
    tokens_BL = np.stack([ids[:length] for ids in encoded])
  else:
    # Weights are N x B x H x L x L floats: bounded length and batch keep big models' passes in memory.
    tokens_BL = head_scores.random_tokens(c.vocab_size, min(c.max_len, RANDOM_LENGTH), RANDOM_BATCH)
  scores = head_scores.head_scores(model, params, tokens_BL)
  induction_heads_NH = head_scores.induction_heads(scores)
  png = _prepare_out(out or _default_out(workdir, "heads", step))
  name = os.path.basename(os.path.normpath(workdir))
  length, shortest, longest = head_scores.induction_layout(c.max_len)
  title = (f"Per-head scores of {name} at step {step} (induction: random blocks of {shortest}-{longest} tokens "
           f"repeated over {length}; control: fresh tokens)")
  plots.save(plots.score_maps(scores, title, tokens_BL.shape[1], induction_heads_NH), png)
  return {"scores": scores, "induction_heads": induction_heads_NH,
          "table": tables.score_table(scores, induction_heads_NH), "png": png, "step": step}


def run_context(workdir: str, token: str, prompts: list[str], out: str | None = None,
                step: int | None = None) -> dict[str, Any]:
  """`context`: the residual stream of `token` in each prompt, compared layer by layer.

  The token is found by its ids; a word of several tokens is represented by its last one (the one whose stream
  has read the whole word in a causal model); the first occurrence in each prompt counts.

  Returns:
    {"similarity_NXX", "drift_NX", "positions", "table", "png", "step"}; layer 0 is the token embedding.
  """
  if len(prompts) < 2:
    raise ValueError(f"context compares two or more prompts; got {len(prompts)}")
  model, params, step = checkpoint.load_model(workdir, step)
  tokenizer = tokenizers.load_from_workdir(workdir)
  word_ids = np.asarray(tokenizer.encode(token), np.int32)
  if len(word_ids) == 0:
    raise ValueError(f"--token={token!r} encodes to no tokens")
  encoded, positions = [], []
  for prompt in prompts:
    ids, _ = parsing.encode(tokenizer, prompt, model.config.max_len)
    position = context.find_token(ids, word_ids)
    if position is None:
      raise ValueError(f"--token={token!r} does not occur in --prompt={prompt!r} (within the model's "
                       f"{model.config.max_len} tokens)")
    encoded.append(ids)
    positions.append(position)
  vectors_XND = context.context_vectors(model, params, encoded, positions)
  similarity_NXX = context.cosine_similarities(vectors_XND)
  drift_NX = context.drift_from_embedding(vectors_XND)
  png = _prepare_out(out or _default_out(workdir, "context", step))
  names = [f"{i}: {prompt[:24]}" for i, prompt in enumerate(prompts)]
  plots.save(plots.context_plot(similarity_NXX, drift_NX, names, f"{token!r} in {len(prompts)} contexts, step {step}"),
             png)
  return {"similarity_NXX": similarity_NXX, "drift_NX": drift_NX, "positions": positions,
          "table": tables.context_table(similarity_NXX, drift_NX), "png": png, "step": step}


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
    close = difflib.get_close_matches(argv[1], SUBCOMMANDS, n=1) if len(argv) == 2 else []
    hint = f"did you mean {close[0]}? " if close else ""
    raise app.UsageError(f"inspect {' '.join(argv[1:]) or 'with no command'}: {hint}give one command, one of "
                         f"{', '.join(SUBCOMMANDS)}")
  f = {name: holder.value for name, holder in _FLAGS.items()}
  if not f["workdir"]:
    raise app.UsageError("--workdir is required")
  command, prompts = argv[1], f["prompt"]
  try:
    f["workdir"] = population.member_workdir(f["workdir"], f["member"])
    if command == "attention":
      if len(prompts) != 1:
        raise ValueError(f"attention draws one --prompt; got {len(prompts)}")
      result = run_attention(f["workdir"], prompts[0], f["layers"], f["heads"], f["out"], f["step"])
      print(f"step {result['step']}: wrote {', '.join(result['pngs'])} and {result['html']}")
    elif command == "heads":
      result = run_heads(f["workdir"], prompts, f["out"], f["step"])
      print(f"step {result['step']}\n{result['table']}\nwrote {result['png']}")
    else:
      if not f["token"]:
        raise ValueError("context needs --token")
      result = run_context(f["workdir"], f["token"], prompts, f["out"], f["step"])
      print(f"step {result['step']}, positions {result['positions']}\n{result['table']}\nwrote {result['png']}")
  except checkpoint.CheckpointError as error:  # a broken checkpoint, no usage mistake: one line, status 2
    cli.fail(str(error), at_once=True)
  except FileNotFoundError as error:  # not a run, or no checkpoint (at --step)
    cli.fail(cli.run_error_line(error, f["workdir"], f["step"]))
  except ValueError as error:  # a usage mistake: one line, no traceback
    raise app.UsageError(str(error)) from error


if __name__ == "__main__":
  _FLAGS.update(_define_flags())
  cli.run(main)

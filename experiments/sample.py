r"""Generates text from a trained run, streaming it as it is produced.

  python -m experiments.sample --workdir=runs/shakespeare_char --prompt="ROMEO:" --max_new_tokens=300 \
      --temperature=0.8 --top_k=40 --seed=0 [--step=N] [--num_samples=1]

Loads the run's latest checkpoint (or `--step`; in a population's workdir, `--member=I`'s) and its tokenizer
(runs on built-in tasks take prompts as token ids: --prompt="3 17 5"). The same seed gives the same text.
Libraries' INFO records (orbax, JAX) are hidden: --verbosity=0 shows them.

Each new token sees the last `max_len` tokens at most, as nanoGPT crops its context. While the text
fits, tokens are decoded with the key/value cache (one token's work per step); once it is longer,
each step runs the model over the last max_len tokens, since every position shifts. Models whose
mask lets a token see later ones (`none`, `prefix`) cannot use a cache and recompute every step.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import checkpoint, cli, population
from experiments.data import tokenizers
from transformer import TransformerLM, decode_step, init_cache


@functools.partial(jax.jit, static_argnames=("temperature", "top_k"))
def sample_token(logits_V: jax.Array, key: jax.Array, temperature: float, top_k: int) -> jax.Array:
  """Draws one token id from next-token logits.

  Args:
    logits_V: next-token logits.
    key: random key of this token.
    temperature: divides the logits; 0 returns the argmax.
    top_k: keep only the k largest logits (0: all).

  Returns:
    The token id, an int32 scalar.
  """
  logits_V = logits_V.astype(jnp.float32)
  if temperature == 0:
    return jnp.argmax(logits_V).astype(jnp.int32)
  logits_V = logits_V / temperature
  if 0 < top_k < logits_V.shape[-1]:
    kth_largest = jax.lax.top_k(logits_V, top_k)[0][-1]
    logits_V = jnp.where(logits_V < kth_largest, -jnp.inf, logits_V)
  return jax.random.categorical(key, logits_V).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model",))
def _last_logits(model: TransformerLM, params: Any, tokens_1L: jax.Array) -> jax.Array:
  return model.apply({"params": params}, tokens_1L)[0, -1]


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def _cached_logits(model: TransformerLM, params: Any, cache: Any, tokens_1L: jax.Array,
                   start: jax.Array) -> tuple[jax.Array, Any]:
  logits_1LV, cache = decode_step(model, params, cache, tokens_1L, start)
  return logits_1LV[0, -1], cache


def generate(model: TransformerLM, params: Any, prompt_ids: np.ndarray, *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, seed: int = 0, use_cache: bool = True) -> Iterator[int]:
  """Yields `max_new_tokens` sampled token ids, one at a time, continuing `prompt_ids`.

  Token t (0-based) is drawn with `fold_in(key(seed), t)`, so the text depends only on the seed,
  and the cached and recomputing paths draw the same tokens from the same logits.

  Args:
    model: the model (any attention implementation; decoding uses the reference one).
    params: its parameters.
    prompt_ids: at least one token id.
    max_new_tokens: how many tokens to generate.
    temperature: softmax temperature (0: greedy).
    top_k: sample among the k most likely tokens (0: all).
    seed: sampling seed.
    use_cache: decode with the key/value cache while the text fits in max_len (ignored for masks
      that let tokens see later ones).
  """
  if len(prompt_ids) < 1:
    raise ValueError("prompt: empty; give at least one token")
  max_len = model.config.max_len
  use_cache = use_cache and model.config.is_causal
  tokens = [int(t) for t in prompt_ids]
  key = jax.random.key(seed)
  cache = None
  if use_cache and len(tokens) < max_len:
    cache = init_cache(model, 1, max_len)
    logits_V, cache = _cached_logits(model, params, cache, jnp.asarray([tokens]), jnp.int32(0))
  else:
    logits_V = _last_logits(model, params, jnp.asarray([tokens[-max_len:]]))
  for t in range(max_new_tokens):
    token = int(sample_token(logits_V, jax.random.fold_in(key, t), temperature, top_k))
    tokens.append(token)
    yield token
    if t + 1 == max_new_tokens:
      break
    if cache is not None and len(tokens) <= max_len:
      logits_V, cache = _cached_logits(model, params, cache, jnp.asarray([[token]]), jnp.int32(len(tokens) - 1))
    else:
      cache = None  # the context is full: every position shifts from here on
      logits_V = _last_logits(model, params, jnp.asarray([tokens[-max_len:]]))


def stream_text(tokenizer: tokenizers.Tokenizer, token_ids: Iterator[int], write: Callable[[str], Any],
                prompt_ids: Sequence[int] = ()) -> str:
  """Writes the text of the tokens as they come (whole characters only) and returns the text they add.

  With `prompt_ids` (already shown), what is written is how the generated tokens extend the prompt's text:
  the text of prompt and continuation decoded together, after the prompt's. Decoded alone, a continuation
  can lose what joins it to the prompt: token ids are joined by spaces ("3 17 5" then "39" would read
  "3 17 539").
  """
  ids = [int(t) for t in prompt_ids]
  shown = written = tokenizer.decode(ids)
  for token in token_ids:
    ids.append(token)
    text = tokenizer.decode(ids)
    # A byte or piece can end inside a character: hold back a trailing replacement character.
    stable = text[:-1] if text.endswith("\ufffd") else text
    if len(stable) > len(written) and stable.startswith(written):
      write(stable[len(written):])
      written = stable
  text = tokenizer.decode(ids)
  if text.startswith(written):
    write(text[len(written):])
  return text[len(shown):] if text.startswith(shown) else text


def _define_flags() -> None:
  """The command's flags, defined only when it runs: importing this module (tests do) defines none."""
  flags.DEFINE_string("workdir", None, "A training run's directory (or a population member's).", required=True)
  flags.DEFINE_integer("member", None, "In a population's workdir: the member to sample from (0 to S-1).")
  flags.DEFINE_string("prompt", "\n", "Text to continue (token ids for runs on built-in tasks).")
  flags.DEFINE_integer("max_new_tokens", 300, "Tokens to generate.")
  flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 picks the most likely token.")
  flags.DEFINE_integer("top_k", 40, "Sample among the k most likely tokens only (0: all).")
  flags.DEFINE_integer("seed", 0, "Sampling seed: the same seed gives the same text.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_integer("num_samples", 1, "Samples to draw, with seeds seed, seed+1, ...")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  if f.max_new_tokens < 1 or f.temperature < 0 or f.top_k < 0 or f.num_samples < 1:
    raise app.UsageError("--max_new_tokens and --num_samples must be >= 1, --temperature and --top_k >= 0")
  logging.getLogger("absl").setLevel(logging.WARNING)
  try:
    workdir = population.member_workdir(f.workdir, f.member)
    tokenizer = tokenizers.load_from_workdir(workdir)
    model, params, step = checkpoint.load_model(workdir, f.step)
    prompt_ids = tokenizer.encode(f.prompt)
    if len(prompt_ids) == 0:
      raise ValueError("prompt: encodes to no token; give some text")
  except FileNotFoundError as error:  # not a run, or no checkpoint (at --step)
    cli.fail(cli.run_error_line(error, f.workdir, f.step))
  except checkpoint.CheckpointError as error:
    cli.fail(str(error), at_once=True)
  except ValueError as error:
    cli.fail(str(error))
  print(f"# {workdir} step {step}, seed {f.seed}", file=sys.stderr)

  def write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()

  for index in range(f.num_samples):
    if index:
      write("\n" + "-" * 40 + "\n")
    write(f.prompt)
    stream_text(tokenizer, generate(model, params, prompt_ids, max_new_tokens=f.max_new_tokens,
                                    temperature=f.temperature, top_k=f.top_k, seed=f.seed + index), write,
                prompt_ids=prompt_ids)
  write("\n")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)

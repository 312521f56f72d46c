"""Sampling: the cached generation equals recomputing the whole forward pass, and a seed fixes the text."""

from __future__ import annotations

import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from experiments import sample
from experiments.data import tokenizers
from transformer import ModelConfig, TransformerLM

BASE = ModelConfig(vocab_size=23, max_len=12, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                   positions="learned")


def _model(**changes):
  model = TransformerLM(dataclasses.replace(BASE, **changes))
  params = model.init(jax.random.key(1), jnp.zeros((1, model.config.max_len), jnp.int32))["params"]
  # Larger weights than the init's 0.02, so that the logits are far from uniform and sampling is not trivial.
  params = jax.tree.map(lambda p: p * 8.0 if p.ndim > 1 else p, params)
  return model, params


def _recomputed(model, params, prompt, max_new_tokens, temperature, top_k, seed):
  """The reference: the full forward pass over the last max_len tokens at every step."""
  tokens, key, max_len = list(prompt), jax.random.key(seed), model.config.max_len
  forward = jax.jit(model.apply)
  for t in range(max_new_tokens):
    context = tokens[-max_len:]
    if model.config.is_causal:
      # Later positions cannot change earlier ones, so padding to max_len compiles one program only.
      logits_LV = forward({"params": params}, jnp.asarray([context + [0] * (max_len - len(context))]))[0]
    else:
      logits_LV = forward({"params": params}, jnp.asarray([context]))[0]
    logits_V = logits_LV[len(context) - 1]
    tokens.append(int(sample.sample_token(logits_V, jax.random.fold_in(key, t), temperature, top_k)))
  return tokens[len(prompt):]


@pytest.mark.parametrize("changes", [
    {},
    {"positions": "rope", "mask": "sliding_window", "window": 4},
    {"value_mode": "full", "num_kv_heads": 1, "positions": "sinusoidal"},
    pytest.param({"mask": "none"}, marks=pytest.mark.slow),  # sees later tokens: no cache, recomputes
], ids=["causal-learned", "sliding-rope", "full-value-mqa", "unmasked"])
def test_cached_generation_equals_recomputing_every_step(changes):
  model, params = _model(**changes)
  prompt = [3, 7, 1]
  # 20 new tokens run past max_len = 12: the cached part, then the sliding context.
  got = list(sample.generate(model, params, np.asarray(prompt), max_new_tokens=20, temperature=1.0, top_k=0, seed=5))
  assert got == _recomputed(model, params, prompt, 20, 1.0, 0, seed=5)
  greedy = list(sample.generate(model, params, np.asarray(prompt), max_new_tokens=20, temperature=0.0, seed=5))
  assert greedy == _recomputed(model, params, prompt, 20, 0.0, 0, seed=5)


def test_a_seed_fixes_the_tokens():
  model, params = _model()
  draw = lambda seed: list(sample.generate(model, params, np.asarray([2]), max_new_tokens=10, temperature=1.5,
                                           seed=seed))
  assert draw(0) == draw(0)
  assert draw(0) != draw(1)
  assert len(set(draw(0))) > 1


def test_a_prompt_longer_than_the_context_is_cropped():
  model, params = _model()
  prompt = list(range(1, 18))  # 17 tokens, max_len 12
  got = list(sample.generate(model, params, np.asarray(prompt), max_new_tokens=3, temperature=0.0))
  assert got == _recomputed(model, params, prompt[-12:], 3, 0.0, 0, seed=0)


@given(st.integers(1, 23), st.integers(0, 1000))
def test_top_k_samples_only_among_the_k_most_likely(k, seed):
  logits_V = jax.random.normal(jax.random.key(seed), (23,)) * 3
  token = int(sample.sample_token(logits_V, jax.random.key(seed + 1), 1.0, k))
  assert token in set(np.argsort(-np.asarray(logits_V))[:k].tolist())


def test_top_1_and_temperature_0_are_greedy():
  logits_V = jnp.asarray([0.1, 2.0, -1.0, 1.9])
  assert int(sample.sample_token(logits_V, jax.random.key(0), 0.0, 0)) == 1
  assert {int(sample.sample_token(logits_V, jax.random.key(s), 1.0, 1)) for s in range(20)} == {1}


def test_streamed_text_is_the_decoded_text_and_never_splits_a_character():
  tokenizer = tokenizers.ByteTokenizer()
  ids = list(tokenizer.encode("é🙂 ok"))
  pieces = []
  full = sample.stream_text(tokenizer, iter(ids), pieces.append)
  assert full == "é🙂 ok" and "".join(pieces) == full
  assert all("\ufffd" not in piece for piece in pieces)
  out = io.StringIO()
  sample.stream_text(tokenizer, iter(ids[:1]), out.write)  # a lone first byte of "é" is all there is
  assert out.getvalue() == "\ufffd"


@pytest.mark.parametrize("tokenizer, prompt, continuation", [
    (tokenizers.TokenIds(64), "3 17 5", [39, 4]),  # ids are words: the continuation starts with a space
    (tokenizers.ByteTokenizer(), "ROMEO:", list(" thé".encode())),
])
def test_the_continuation_extends_the_prompts_text(tokenizer, prompt, continuation):
  prompt_ids = tokenizer.encode(prompt)
  pieces = []
  generated = sample.stream_text(tokenizer, iter(continuation), pieces.append, prompt_ids=prompt_ids)
  whole = tokenizer.decode([*prompt_ids, *continuation])  # the reference: prompt and continuation decoded as one
  assert prompt + "".join(pieces) == whole and generated == "".join(pieces)

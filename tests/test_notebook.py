"""The notebook API: load_run gives the run's model as evaluation computes it, and a prompt's attention and residuals.

One tiny recall run is trained for the module (a few steps: the parameters only need to be a checkpoint's).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import experiments
from experiments import build, checkpoint, evaluate, notebook
from experiments.data import tokenizers
from experiments.runner import train_and_evaluate
from tests.helpers.tiny_config import tiny_config

pytestmark = pytest.mark.slow  # trains a tiny run

STEPS = 6


@pytest.fixture(scope="module")
def workdir(tfds_data_dir, tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("notebook_run"))
  train_and_evaluate(tiny_config(tfds_data_dir, {"train.steps": STEPS, "eval.max_batches": 1}), path)
  return path


def test_load_run_gives_the_logits_and_metrics_of_the_evaluation(workdir):
  run = experiments.load_run(workdir)
  assert run.step == STEPS and isinstance(run.tokenizer, tokenizers.TokenIds)
  assert run.config.model.num_heads == 2 and run.config.data.task == "associative_recall"
  # The evaluation's own path: its model on the mesh, its parameters restored into that layout, its batches.
  config = checkpoint.read_config(workdir)
  sharded = build.ShardedModel(config)
  params, _ = checkpoint.restore_params(workdir, sharded.abstract_params)
  batch = next(iter(build.Evaluation(config, sharded, build.load_data(config)).batches))
  expected_BLV = np.asarray(jax.jit(sharded.model.apply)({"params": params}, batch["inputs"]))
  logits_BLV = np.asarray(jax.jit(run.model.apply)({"params": run.params}, batch["inputs"]))
  np.testing.assert_array_equal(logits_BLV, expected_BLV)
  # The eval loss recomputed in float64 from load_run's logits, against evaluate's (one batch: max_batches 1).
  shifted_BLV = logits_BLV.astype(np.float64) - logits_BLV.max(-1, keepdims=True)
  log_probs_BLV = shifted_BLV - np.log(np.exp(shifted_BLV).sum(-1, keepdims=True))
  nll_BL = -np.take_along_axis(log_probs_BLV, batch["targets"][..., None], -1)[..., 0]
  weights_BL = batch["weights"].astype(np.float64)
  metrics = evaluate.evaluate(workdir)
  assert metrics["step"] == STEPS
  np.testing.assert_allclose((nll_BL * weights_BL).sum() / weights_BL.sum(), metrics["eval/loss"], rtol=1e-5)


def test_activations_are_causal_attention_weights_and_the_models_logits(workdir):
  run = notebook.load_run(workdir, step=STEPS)
  prompt = "3 17 5 20 3 9"
  seen = run.activations(prompt)
  length = len(prompt.split())
  assert seen.tokens == prompt.split() and seen.note == ""
  assert seen.weights_NHLM.shape == (2, 2, length, length) and seen.residual_NLD.shape == (2, length, 32)
  np.testing.assert_allclose(seen.weights_NHLM.sum(-1), 1.0, rtol=1e-6)  # a distribution over keys per query
  later_LM = np.triu(np.ones((length, length), bool), k=1)
  assert (seen.weights_NHLM[..., later_LM] == 0).all() and (seen.weights_NHLM[..., ~later_LM] > 0).all()
  np.testing.assert_array_equal(seen.allowed_LM, ~later_LM)
  logits_1LV = jax.jit(run.model.apply)({"params": run.params}, seen.ids_L[None])
  np.testing.assert_allclose(seen.logits_LV, np.asarray(logits_1LV[0]), rtol=1e-5, atol=1e-6)
  # The residual stream changes from block to block, and ids give what their text gives.
  assert not np.allclose(seen.residual_NLD[0], seen.residual_NLD[1])
  np.testing.assert_array_equal(run.activations([3, 17, 5, 20, 3, 9]).weights_NHLM, seen.weights_NHLM)


def test_a_prompt_is_cut_to_the_context_and_ids_outside_the_vocabulary_are_refused(workdir):
  run = experiments.load_run(workdir)
  long = run.activations(list(range(30)))  # max_len is 24
  assert long.ids_L.tolist() == list(range(24)) and "24 tokens (of 30)" in long.note
  with pytest.raises(ValueError, match=r"token ids must be in \[0, 32\)"):
    run.activations([3, 40])

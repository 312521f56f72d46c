"""Language-model runs end to end: text through the runner, bits per character, resume, evaluate, sample."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from configs import shakespeare_char
from experiments import checkpoint, evaluate
from experiments.data import text, tokenizers
from experiments.files import read_metrics
from experiments.runner import train_and_evaluate
from experiments.validation import ConfigError
from tests.helpers.checkpoints import assert_same_state
from tests.helpers.metrics import train_losses
from tests.helpers.tiny_config import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(REPO, "..", "shared", "data", "tinyshakespeare")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
  """A small text with structure to learn: rhyming lines over a small alphabet."""
  rng = np.random.default_rng(0)
  words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "ran", "far", "away", "from", "my", "hat"]
  lines = [" ".join(rng.choice(words, 6)) + "." for _ in range(600)]
  path = tmp_path_factory.mktemp("text") / "corpus.txt"
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def text_config(data_dir: str, corpus: str, tokenizer: str = "char", steps: int = 40):
  """The tiny run config with one layer on the corpus: compiles and trains in seconds."""
  return tiny_config(data_dir, {
      "model.num_layers": 1, "data.task": "text", "data.dataset": text.TEXT_FILES, "data.text_files": corpus,
      "data.tokenizer": tokenizer, "data.vocab_size": 320 if tokenizer == "sentencepiece" else 0, "data.seq_len": 32,
      "data.validation_fraction": 0.1, "train.steps": steps, "train.log_every": 5, "train.eval_every": steps,
      "optimizer.warmup_steps": 5, "optimizer.learning_rate": 1e-2})


@pytest.fixture(scope="module")
def char_run(tfds_data_dir, corpus, tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp("char_run"))
  train_and_evaluate(text_config(tfds_data_dir, corpus), workdir)
  return workdir


@pytest.mark.slow
def test_a_char_run_learns_and_reports_bits_per_character(char_run):
  final = [m for m in read_metrics(char_run) if "eval/loss" in m][-1]
  vocab = tokenizers.load_from_workdir(char_run).vocab_size
  assert final["eval/loss"] < math.log(vocab) - 1.0  # well below guessing uniformly
  # One token per character (the validation text has no character the training text lacks).
  assert final["eval/bits_per_char"] == pytest.approx(final["eval/loss"] / math.log(2), rel=1e-5)
  assert final["eval/bits_per_byte"] == pytest.approx(final["eval/bits_per_char"], rel=1e-5)  # ASCII


@pytest.mark.slow
def test_the_run_keeps_its_tokenizer(char_run, corpus):
  saved = tokenizers.load_from_workdir(char_run)
  with open(corpus, encoding="utf-8") as f:
    assert saved.alphabet == "".join(sorted(set(f.read()[: int(os.path.getsize(corpus) * 0.9)])))


@pytest.mark.slow
def test_sentencepiece_bits_per_character_count_the_characters(tfds_data_dir, corpus, tmp_path):
  summary = train_and_evaluate(text_config(tfds_data_dir, corpus, "sentencepiece", steps=10), str(tmp_path))
  final = summary["final"]
  saved = tokenizers.load_from_workdir(str(tmp_path))
  assert saved.vocab_size == 320
  builder = text.prepare_builder(text.TEXT_FILES, tfds_data_dir, text_files=corpus, validation_fraction=0.1)
  validation = "".join(text.split_texts(builder, "validation"))
  ids = saved.encode(validation)
  _, chars = tokenizers.byte_and_char_counts(saved)
  predicted_chars = len(validation) - chars[ids[0]]  # the first token is context only
  expected = final["eval/loss"] * (len(ids) - 1) / predicted_chars / math.log(2)
  assert final["eval/bits_per_char"] == pytest.approx(expected, rel=1e-4)
  assert len(ids) < 0.7 * len(validation)  # pieces, so bits per token differ from bits per character
  assert final["eval/bits_per_char"] < final["eval/loss"] / math.log(2)


@pytest.mark.slow
def test_text_runs_resume_bitwise(tfds_data_dir, corpus, tmp_path):
  straight = text_config(tfds_data_dir, corpus, steps=8)
  straight.optimizer.decay_steps = 8
  straight.train.log_every = 1  # every step's own loss (a log's mean over steps would span the stop)
  train_and_evaluate(straight, str(tmp_path / "straight"))
  half = text_config(tfds_data_dir, corpus, steps=4)
  half.optimizer.decay_steps, half.train.log_every = 8, 1
  train_and_evaluate(half, str(tmp_path / "resumed"))
  train_and_evaluate(straight, str(tmp_path / "resumed"))
  after_half = lambda workdir: [(step, loss) for step, loss in train_losses(workdir) if step > 4]
  assert after_half(str(tmp_path / "straight")) == after_half(str(tmp_path / "resumed"))
  assert [step for step, _ in after_half(str(tmp_path / "straight"))] == [5, 6, 7, 8]
  # Every parameter, optimizer moment, the step, the RNG and the text windows' position: bitwise.
  assert_same_state(str(tmp_path / "straight"), str(tmp_path / "resumed"), 8)


@pytest.mark.slow
def test_evaluate_reads_the_checkpoint_and_the_text(char_run, tfds_data_dir, corpus):
  metrics = evaluate.evaluate(char_run)
  final = [m for m in read_metrics(char_run) if "eval/loss" in m][-1]
  assert metrics["step"] == final["step"]
  # By hand: the validation text's tokens in consecutive windows of T, every token after the first predicted
  # once; cross-entropy in float64 from the model's logits, in bits over the characters (one per token here).
  model, params, _ = checkpoint.load_model(char_run)
  builder = text.prepare_builder(text.TEXT_FILES, tfds_data_dir, text_files=corpus, validation_fraction=0.1)
  ids = np.asarray(tokenizers.load_from_workdir(char_run).encode("".join(text.split_texts(builder, "validation"))))
  seq_len, total = 32, 0.0
  full = (len(ids) - 1) // seq_len * seq_len  # the full windows in one batch, then the shorter last one
  for inputs_BL, targets_BL in ((ids[:full].reshape(-1, seq_len), ids[1:full + 1].reshape(-1, seq_len)),
                                (ids[full:-1][None], ids[full + 1:][None]))[:1 + (full < len(ids) - 1)]:
    logits_BLV = np.asarray(model.apply({"params": params}, jnp.asarray(inputs_BL)), np.float64)
    log_probs_BLV = logits_BLV - logits_BLV.max(-1, keepdims=True)
    log_probs_BLV -= np.log(np.exp(log_probs_BLV).sum(-1, keepdims=True))
    total -= np.take_along_axis(log_probs_BLV, targets_BL[..., None], -1).sum()
  assert metrics["eval/loss"] == pytest.approx(total / (len(ids) - 1), rel=1e-5)
  assert metrics["eval/bits_per_char"] == pytest.approx(total / math.log(2) / (len(ids) - 1), rel=1e-5)
  assert final["eval/bits_per_char"] == pytest.approx(metrics["eval/bits_per_char"], rel=1e-6)


def _sample(workdir: str, *flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "experiments.sample", f"--workdir={workdir}", *flags],
                        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_sample_command_streams_the_same_text_for_the_same_seed(char_run):
  flags = ("--prompt=the cat", "--max_new_tokens=60", "--temperature=0.8", "--top_k=10")
  first, again = _sample(char_run, *flags, "--seed=3"), _sample(char_run, *flags, "--seed=3")
  assert first.returncode == 0, first.stderr[-2000:]
  assert first.stdout.startswith("the cat") and len(first.stdout) >= len("the cat") + 60
  assert first.stdout == again.stdout  # (different seeds give different tokens: see test_sample.py)
  bad = _sample(char_run, "--prompt=x", "--step=999")
  assert bad.returncode == 2 and "no checkpoint at step 999" in bad.stderr


@pytest.mark.parametrize("key,value,named", [
    ("data.tokenizer", "words", "data.tokenizer='words' is unknown"),
    ("data.vocab_size", 64, "data.vocab_size=64: the char tokenizer sets the vocabulary itself"),
    ("data.text_files", "/nonexistent/*.txt", "data.text_files='/nonexistent/*.txt': matches no file"),
    ("data.validation_fraction", 1.5, "data.validation_fraction=1.5 must be in (0, 1)"),
    ("data.dataset", "not_a_dataset", "data.dataset='not_a_dataset': not in the TFDS catalog"),
    ("data.eval_split", "validation+dev", "data.eval_split='validation+dev': text_files has no split 'dev'"),
    ("data.tokenizer", "gpt2", "data.tokenizer_dir is empty: the gpt2 tokenizer is read from a folder"),
    ("data.tokenizer_dir", "/a/folder", "data.tokenizer_dir='/a/folder': only data.tokenizer='gpt2' reads a folder"),
], ids=lambda x: str(x)[:20])
def test_bad_text_settings_are_one_line_errors_and_write_nothing(tfds_data_dir, corpus, tmp_path, key, value, named):
  config = text_config(tfds_data_dir, corpus)
  section, field = key.split(".")
  config[section][field] = value
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError) as raised:
    train_and_evaluate(config, str(workdir))
  assert named in str(raised.value) and "\n" not in str(raised.value)
  assert not workdir.exists()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(os.path.join(SHAKESPEARE, "input.txt")),
                    reason="../shared/data/tinyshakespeare/input.txt is absent (a user's clone)")
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                    reason="preparing the TFDS catalog's tiny_shakespeare needs tensorflow")
def test_a_short_shakespeare_run_lowers_the_loss(tfds_data_dir, tmp_path):
  config = shakespeare_char.get_config("cpu")
  config.data.manual_dir, config.data.data_dir = SHAKESPEARE, tfds_data_dir
  config.model.num_layers, config.model.d_model = 1, 64
  config.train.steps, config.train.eval_every, config.train.log_every = 80, 40, 10
  config.train.batch_size = 16
  config.eval.max_batches = 20
  config.optimizer.warmup_steps, config.optimizer.learning_rate = 10, 1e-2
  config.checkpoint.async_save = False
  train_and_evaluate(config, str(tmp_path))
  evals = [m["eval/loss"] for m in read_metrics(str(tmp_path)) if "eval/loss" in m]
  with open(os.path.join(SHAKESPEARE, "input.txt"), encoding="utf-8") as f:
    _, counts = np.unique(list(f.read()), return_counts=True)
  unigram_entropy = -(counts / counts.sum() * np.log(counts / counts.sum())).sum()  # about 3.2 nats
  assert evals[-1] < evals[0] < math.log(66)
  assert evals[-1] < unigram_entropy - 0.2, (evals, unigram_entropy)  # uses context, not only frequencies

"""Text data: the user-text builder, Tiny Shakespeare from the catalog, token caches and LM windows."""

from __future__ import annotations

import os

import numpy as np
import pytest

from experiments.data import pipeline, text, tokenizers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(REPO, "..", "shared", "data", "tinyshakespeare")
needs_shakespeare = pytest.mark.skipif(not os.path.exists(os.path.join(SHAKESPEARE, "input.txt")),
                                       reason="../shared/data/tinyshakespeare/input.txt is absent (a user's clone)")


def _tensorflow_installed() -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top

  return importlib.util.find_spec("tensorflow") is not None


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  """Two text files and a hidden one, in a folder."""
  folder = tmp_path_factory.mktemp("corpus")
  (folder / "a.txt").write_text("".join(f"line {i} of the first file\n" for i in range(300)), encoding="utf-8")
  (folder / "b.txt").write_text("second file, no final newline: é ü 🙂", encoding="utf-8")
  (folder / ".hidden").write_text("never read", encoding="utf-8")
  return folder


def _joined(folder) -> str:
  return (folder / "a.txt").read_text(encoding="utf-8") + (folder / "b.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("pattern", ["{d}", "{d}/*.txt"])
def test_text_files_split_at_the_fraction_and_deterministically(corpus_dir, tmp_path, pattern):
  builder = text.prepare_builder(text.TEXT_FILES, str(tmp_path / "tfds"), text_files=pattern.format(d=corpus_dir),
                                 validation_fraction=0.25)
  full = _joined(corpus_dir)
  cut = int(len(full) * 0.75)
  assert "".join(text.split_texts(builder, "train")) == full[:cut]
  assert "".join(text.split_texts(builder, "validation")) == full[cut:]
  assert "".join(text.split_texts(builder, "train+validation")) == full
  again = text.prepare_builder(text.TEXT_FILES, str(tmp_path / "tfds"), text_files=str(corpus_dir / "*.txt"),
                               validation_fraction=0.25)
  assert again.builder_config.name == builder.builder_config.name  # same files, same data


def test_text_files_are_named_by_content(corpus_dir, tmp_path):
  first = text.TextFilesConfig.from_files(str(corpus_dir), 0.1)
  other = tmp_path / "other.txt"
  other.write_text("different\n", encoding="utf-8")
  assert text.TextFilesConfig.from_files(str(other), 0.1).name != first.name
  assert text.TextFilesConfig.from_files(str(corpus_dir), 0.2).name != first.name
  with pytest.raises(ValueError, match="text_files=.*matches no file"):
    text.expand_text_files(str(tmp_path / "missing*.txt"))


def test_large_text_is_stored_in_chunks_that_join_exactly(tmp_path, monkeypatch):
  monkeypatch.setattr(text, "_CHUNK_CHARS", 50)
  path = tmp_path / "long.txt"
  body = "".join(f"{i:04d} " * (i % 7 + 1) + "\n" for i in range(200)) + "x" * 120  # and a line longer than a chunk
  path.write_text(body, encoding="utf-8")
  builder = text.prepare_builder(text.TEXT_FILES, str(tmp_path / "tfds"), text_files=str(path),
                                 validation_fraction=0.1)
  assert builder.info.splits["train"].num_examples > 10
  assert "".join(text.split_texts(builder, "train+validation")) == body


def test_tokenized_streams_are_cached_and_decode_to_the_text(corpus_dir, tmp_path):
  data_dir = str(tmp_path / "tfds")
  builder = text.prepare_builder(text.TEXT_FILES, data_dir, text_files=str(corpus_dir), validation_fraction=0.25)
  first = text.tokenize(builder, data_dir, ["train", "validation"], tokenizer="byte")
  for split in ("train", "validation"):
    assert first.tokenizer.decode(first.streams[split]) == "".join(text.split_texts(builder, split))
  cached = text.tokenize(builder, data_dir, ["validation"], tokenizer="byte")
  assert cached.streams["validation"].filename == first.streams["validation"].filename  # read, not redone
  char = text.tokenize(builder, data_dir, ["train"], tokenizer="char")
  assert char.tokenizer.vocab_size == len(set("".join(text.split_texts(builder, "train")))) + 1
  fit_on_validation = text.tokenize(builder, data_dir, ["train"], tokenizer="char", train_split="validation")
  assert fit_on_validation.streams["train"].filename != char.streams["train"].filename  # its own cache
  assert fit_on_validation.tokenizer.vocab_size == len(set("".join(text.split_texts(builder, "validation")))) + 1
  assert not [name for name in os.listdir(os.path.dirname(first.streams["train"].filename)) if name.startswith(".")]


def test_random_windows_are_next_token_pairs_at_every_offset():
  tokens = np.arange(100, 120, dtype=np.uint16)
  windows = text.RandomWindows(tokens, seq_len=5)
  assert len(windows) == 15  # offsets 0..14 keep a target for every input
  example = windows[14]
  np.testing.assert_array_equal(example["inputs"], np.arange(114, 119))
  np.testing.assert_array_equal(example["targets"], np.arange(115, 120))
  assert example["inputs"].dtype == np.int32 and example["weights"].sum() == 5
  for got, index in zip(windows.__getitems__([3, 0, 14]), [3, 0, 14]):
    np.testing.assert_array_equal(got["inputs"], windows[index]["inputs"])
  with pytest.raises(ValueError, match="seq_len=20"):
    text.RandomWindows(tokens, seq_len=20)


@pytest.mark.parametrize("length", [21, 25, 26])
def test_sequential_windows_predict_every_token_once(length):
  tokenizer = tokenizers.train("char", ["abcdefghij"])
  tokens = np.asarray([1 + i % 10 for i in range(length)], np.uint16)
  windows = text.SequentialWindows(tokens, seq_len=5, tokenizer=tokenizer)
  predicted = np.concatenate([w["targets"][w["weights"] > 0] for w in (windows[i] for i in range(len(windows)))])
  np.testing.assert_array_equal(predicted, tokens[1:])
  last = windows[len(windows) - 1]
  assert last["target_chars"].sum() == last["weights"].sum()  # one character per char token, none on padding
  assert sum(windows[i]["target_bytes"].sum() for i in range(len(windows))) == length - 1


def test_language_model_pipeline_resumes_exactly():
  tokens = (np.arange(5_000) * 7919 % 65).astype(np.uint16)
  source = text.RandomWindows(tokens, seq_len=16)
  iterator = pipeline.train_iterator(source, batch_size=4, seed=3)
  for _ in range(5):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(3)]
  resumed = pipeline.train_iterator(source, batch_size=4, seed=3)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  # Every row is a real window of the stream: its targets are its inputs shifted by one token.
  batch = expected[0]
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  offsets = [int(np.flatnonzero((np.lib.stride_tricks.sliding_window_view(tokens, 16) == row).all(1))[0])
             for row in batch["inputs"]]
  assert len(set(offsets)) == 4  # random offsets, not consecutive windows
  other_seed = next(pipeline.train_iterator(source, batch_size=4, seed=4))
  assert not np.array_equal(other_seed["inputs"], batch["inputs"])


@pytest.mark.slow
@needs_shakespeare
@pytest.mark.skipif(not _tensorflow_installed(), reason="preparing a TFDS catalog dataset needs tensorflow")
def test_tiny_shakespeare_from_the_catalog_matches_nanogpt_splits(tfds_data_dir):
  data_dir = tfds_data_dir  # shared with the Shakespeare run of test_text_runs: prepared once
  builder = text.prepare_builder("tiny_shakespeare", data_dir, manual_dir=SHAKESPEARE)
  with open(os.path.join(SHAKESPEARE, "input.txt"), encoding="utf-8") as f:
    full = f.read()
  cut = int(len(full) * 0.9)  # nanoGPT's data/shakespeare_char/prepare.py
  assert "".join(text.split_texts(builder, "train")) == full[:cut]
  assert "".join(text.split_texts(builder, "validation+test")) == full[cut:]
  tokenized = text.tokenize(builder, data_dir, ["validation+test"], tokenizer="char")
  assert tokenized.tokenizer.vocab_size == 66  # nanoGPT's 65 characters and the unknown one
  with pytest.raises(ValueError, match="split='dev'"):
    list(text.split_texts(builder, "dev"))


def test_unknown_catalog_dataset_is_a_one_line_error(tmp_path):
  with pytest.raises(ValueError, match="dataset='no_such_corpus': not in the TFDS catalog"):
    text.prepare_builder("no_such_corpus", str(tmp_path))

"""Text corpora for language modelling: TFDS builders, cached token streams, windows over them.

Text comes from a TFDS builder prepared as `array_record`:

  catalog  any TFDS catalog dataset with a text feature (`tiny_shakespeare`, `lm1b`, ...). On a
           machine with internet access TFDS downloads it; offline, `manual_dir` holds the files it
           would download. The catalog's builders need `tensorflow` to prepare (not to read), so
           preparation runs in a subprocess (`experiments.data.catalog`) with GPUs hidden: the
           training process never imports tensorflow, and tensorflow never takes accelerator memory.
  text_files  this project's builder over a user's UTF-8 files (a file, a folder or a glob): the
           files in sorted order, joined by newlines where one is missing, and the last
           `validation_fraction` of the characters held out as `validation` (as nanoGPT splits).

A split is the concatenation of its examples' text in stored order (catalog examples joined by a
newline where one is missing). "+" joins splits: tiny_shakespeare's `validation+test` is exactly
nanoGPT's validation text (the last 10% of input.txt; `train` is its first 90%).

The tokenizer is trained on the training split (gpt2's is read from data.tokenizer_dir); it and each
tokenized split are cached under
`<data_dir>/lm_tokens/<dataset>/<config>/<version>/<tokenizer>.<feature>.fit_on-<split>/` (gpt2's under
`gpt2-<digest of its files>.<feature>/`), written atomically, so runs on the same data share them and an
interrupted preparation never leaves a partial file behind.

Sources (random access, as `pipeline` reads them):
  RandomWindows      training: a window of T + 1 tokens at every offset of the stream; the
                     pipeline's seeded shuffle visits offsets in random order, as nanoGPT draws
                     random windows (here without replacement within an epoch).
  SequentialWindows  evaluation: consecutive windows covering the split once, the last padded
                     with weight 0, so the mean loss is over every token of the split; with the
                     bytes and characters behind each target, for bits per byte and per character.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import subprocess
import sys
import tempfile
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from experiments.data import tokenizers
from experiments.data.local_tfds import LocalDatasetInfo, announce_preparation, lost_preparation_race, quiet_tfds

TEXT_FILES = "text_files"  # data.dataset value of the user-text builder
_CHUNK_CHARS = 1 << 20  # characters per stored example of text_files (cut at newlines)


def expand_text_files(pattern: str) -> list[str]:
  """The files a `data.text_files` value names: a file, every file below a folder, or a glob; sorted."""
  pattern = os.path.expanduser(pattern)
  if os.path.isdir(pattern):
    found = [os.path.join(root, name) for root, dirs, names in os.walk(pattern) for name in names
             if not name.startswith(".")]
  else:
    found = [path for path in glob.glob(pattern, recursive=True) if os.path.isfile(path)]
  if not found:
    raise ValueError(f"text_files={pattern!r}: matches no file; give a file, a folder or a glob of UTF-8 text")
  return sorted(os.path.abspath(path) for path in found)


@dataclasses.dataclass(eq=False, kw_only=True)
class TextFilesConfig(tfds.core.BuilderConfig):
  """Which files, and how much of their text is held out; build with `from_files`."""

  files: tuple[str, ...] = ()
  validation_fraction: float = 0.1

  @classmethod
  def from_files(cls, pattern: str, validation_fraction: float) -> "TextFilesConfig":
    """A config named after the files' contents, so different text never shares a directory."""
    if not 0 < validation_fraction < 1:
      raise ValueError(f"validation_fraction={validation_fraction}: must be in (0, 1)")
    files = tuple(expand_text_files(pattern))
    digest = hashlib.sha256()
    for path in files:
      digest.update(os.path.basename(path).encode() + b"\0")
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # pylint: disable=cell-var-from-loop
          digest.update(block)
    name = f"sha256-{digest.hexdigest()[:16]}.validation_fraction-{validation_fraction:g}"
    return cls(name=name, description=f"{len(files)} files from {pattern}", files=files,
               validation_fraction=validation_fraction)


def _newline_joined(texts: Sequence[str]) -> str:
  return "".join(t if t.endswith("\n") or i == len(texts) - 1 else t + "\n" for i, t in enumerate(texts))


def _chunks(text: str) -> Iterator[str]:
  """Pieces of about _CHUNK_CHARS characters, cut after a newline where there is one."""
  start = 0
  while start < len(text):
    end = min(start + _CHUNK_CHARS, len(text))
    if end < len(text):
      newline = text.rfind("\n", start, end)
      end = newline + 1 if newline > start else end
    yield text[start:end]
    start = end


class TextFiles(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A user's UTF-8 text files, split into train and validation by characters."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = []
  # See tasks._TaskBuilder: TFDS 4.9.10 cannot derive code_path without a backport.
  code_path = tfds.core.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return LocalDatasetInfo(builder=self, description=self.__doc__,
                            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
                            disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    texts = []
    for path in self.builder_config.files:
      with open(path, encoding="utf-8") as f:
        texts.append(f.read())
    text = _newline_joined(texts)
    cut = int(len(text) * (1 - self.builder_config.validation_fraction))
    return {"train": self._generate_examples(text[:cut]), "validation": self._generate_examples(text[cut:])}

  def _generate_examples(self, text: str):
    for i, chunk in enumerate(_chunks(text)):
      yield i, {"text": chunk}


def prepare_builder(dataset: str, data_dir: str, *, text_files: str = "", validation_fraction: float = 0.1,
                    manual_dir: str = "") -> tfds.core.DatasetBuilder:
  """Returns the prepared builder of a catalog dataset or of `text_files`, preparing it on first use.

  Raises:
    ValueError: a one-line message naming the data field at fault (unknown dataset, no files,
      preparation failed).
  """
  if dataset == TEXT_FILES:
    config = TextFilesConfig.from_files(text_files, validation_fraction)
    with quiet_tfds():
      builder = TextFiles(config=config, data_dir=data_dir, file_format="array_record")
      announce_preparation(builder)
      try:
        builder.download_and_prepare(file_format="array_record")
      except OSError as error:  # another process finished first (see tasks.prepare)
        if not lost_preparation_race(error):
          raise
        builder = TextFiles(config=config, data_dir=data_dir, file_format="array_record")
    return builder
  try:
    builder = tfds.builder(dataset, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"dataset={dataset!r}: not in the TFDS catalog; use a catalog name such as "
                     f"'tiny_shakespeare' or {TEXT_FILES!r} with data.text_files") from None
  if builder.is_prepared():
    return builder
  announce_preparation(builder)
  command = [sys.executable, "-m", "experiments.data.catalog", f"--name={dataset}", f"--data_dir={data_dir}"]
  if manual_dir:
    command.append(f"--manual_dir={os.path.abspath(os.path.expanduser(manual_dir))}")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
         "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
  done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    raise ValueError(f"dataset={dataset!r}: preparing it failed: {lines[-1] if lines else done.returncode}")
  return tfds.builder(dataset, data_dir=data_dir, file_format="array_record")


def split_texts(builder: tfds.core.DatasetBuilder, split: str, feature: str = "text") -> Iterator[str]:
  """The text of a split, example by example; "+" joins splits end to end (they are cuts of one text).

  Within a split, catalog examples (sentences, documents) are joined by a newline where one is
  missing; text_files examples are cuts of one text and are joined as they are.
  """
  joiner = "" if isinstance(builder, TextFiles) else "\n"
  for name in split.split("+"):
    if name not in builder.info.splits:
      raise ValueError(f"split={name!r}: {builder.name} has the splits {sorted(builder.info.splits)}")
    source = builder.as_data_source(split=name)
    if feature not in builder.info.features:
      raise ValueError(f"text_feature={feature!r}: {builder.name} has the features {sorted(builder.info.features)}")
    for start in range(0, len(source), 1024):
      indices = list(range(start, min(start + 1024, len(source))))
      for index, example in zip(indices, source.__getitems__(indices)):
        text = example[feature]
        text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        last = index == len(source) - 1
        yield text if last or text.endswith("\n") else text + joiner


def tokenizer_key(kind: str, vocab_size: int, sentencepiece_type: str) -> str:
  """The cache folder name of a tokenizer's settings."""
  return f"sentencepiece-{sentencepiece_type}-{vocab_size}" if kind == "sentencepiece" else kind


def _cache_dir(builder: tfds.core.DatasetBuilder, data_dir: str, key: str) -> str:
  config = builder.builder_config.name if builder.builder_config else "default"
  return os.path.join(data_dir, "lm_tokens", builder.name, config, str(builder.version), key)


def _save_array(path: str, array: np.ndarray) -> None:
  """np.save through a temporary file renamed into place: readers see all of it or nothing."""
  handle, temporary = tempfile.mkstemp(prefix=".tokens-", suffix=".npy", dir=os.path.dirname(path))
  try:
    with os.fdopen(handle, "wb") as f:
      np.save(f, array)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


@dataclasses.dataclass(frozen=True)
class TokenizedText:
  """A tokenizer and the token streams of the splits it was asked for (read-only memory maps)."""

  tokenizer: tokenizers.Tokenizer
  streams: dict[str, np.ndarray]


def tokenize(builder: tfds.core.DatasetBuilder, data_dir: str, splits: Sequence[str], *, tokenizer: str,
             vocab_size: int = 0, sentencepiece_type: str = "bpe", train_split: str = "train",
             feature: str = "text", tokenizer_dir: str = "") -> TokenizedText:
  """Trains (or reads from the cache) the tokenizer on `train_split` and the token streams of `splits`.

  The gpt2 tokenizer is read from `tokenizer_dir` instead, and its streams are cached under a digest of its
  vocabulary and merges.

  Raises:
    ValueError: the gpt2 tokenizer's files are missing or broken (one line naming tokenizer_dir and the file).
  """
  given = None
  if tokenizer == "gpt2":
    try:
      given = tokenizers.GPT2Tokenizer.from_directory(os.path.expanduser(tokenizer_dir))
    except (OSError, ValueError) as error:
      raise ValueError(f"tokenizer_dir={tokenizer_dir!r}: {error}") from None
    key = f"gpt2-{given.encoding.fingerprint()[:16]}.{feature}"
  else:
    # The tokenizer depends on the text it was fit on, so the split and the feature are part of the key.
    key = f"{tokenizer_key(tokenizer, vocab_size, sentencepiece_type)}.{feature}.fit_on-{train_split}"
  directory = _cache_dir(builder, data_dir, key)
  tokenizer_dir = os.path.join(directory, tokenizers.TOKENIZER_DIR)
  if not os.path.exists(os.path.join(tokenizer_dir, "tokenizer.json")):
    trained = given or tokenizers.train(tokenizer, split_texts(builder, train_split, feature), vocab_size=vocab_size,
                                        sentencepiece_type=sentencepiece_type)
    tokenizers.save_atomically(trained, tokenizer_dir)
  loaded = tokenizers.load(tokenizer_dir)
  dtype = np.uint16 if loaded.vocab_size <= 1 << 16 else np.int32
  streams = {}
  for split in splits:
    path = os.path.join(directory, f"{split}.npy")
    if not os.path.exists(path):
      pieces = [loaded.encode(text).astype(dtype) for text in split_texts(builder, split, feature)]
      _save_array(path, np.concatenate(pieces) if pieces else np.zeros(0, dtype))
    streams[split] = np.load(path, mmap_mode="r")
  return TokenizedText(loaded, streams)


class RandomWindows:
  """Training examples: index i is the window of T + 1 tokens starting at offset i."""

  def __init__(self, tokens: np.ndarray, seq_len: int):
    if len(tokens) < seq_len + 1:
      raise ValueError(f"seq_len={seq_len}: the training text has only {len(tokens)} tokens, fewer than "
                       f"seq_len + 1")
    self._tokens, self._seq_len = tokens, seq_len
    self._ones = np.ones(seq_len, np.float32)

  def __len__(self) -> int:
    return len(self._tokens) - self._seq_len

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    window = np.asarray(self._tokens[index:index + self._seq_len + 1], np.int32)
    return {"inputs": window[:-1], "targets": window[1:], "weights": self._ones}

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    offsets = np.asarray(indices, np.int64)[:, None] + np.arange(self._seq_len + 1)
    windows = np.asarray(self._tokens[offsets], np.int32)
    return [{"inputs": w[:-1], "targets": w[1:], "weights": self._ones} for w in windows]


class SequentialWindows:
  """Evaluation examples: window i predicts tokens i*T+1 .. (i+1)*T; the last is padded with weight 0.

  Besides inputs, targets and weights, each example has `target_bytes` and `target_chars`: the
  UTF-8 bytes and characters behind each target token (0 where the weight is 0).
  """

  def __init__(self, tokens: np.ndarray, seq_len: int, tokenizer: tokenizers.Tokenizer):
    if len(tokens) < 2:
      raise ValueError("data.eval_split: the evaluation text has fewer than 2 tokens")
    self._tokens, self._seq_len = tokens, seq_len
    self._bytes, self._chars = tokenizers.byte_and_char_counts(tokenizer)

  def __len__(self) -> int:
    return -(-(len(self._tokens) - 1) // self._seq_len)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < len(self):
      raise IndexError(index)
    start, T = index * self._seq_len, self._seq_len
    window = np.asarray(self._tokens[start:start + T + 1], np.int32)
    n = len(window) - 1
    inputs, targets, weights = np.zeros(T, np.int32), np.zeros(T, np.int32), np.zeros(T, np.float32)
    inputs[:n], targets[:n], weights[:n] = window[:-1], window[1:], 1.0
    return {"inputs": inputs, "targets": targets, "weights": weights,
            "target_bytes": self._bytes[targets] * weights, "target_chars": self._chars[targets] * weights}

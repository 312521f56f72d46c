"""Tokenizers of text runs: characters, UTF-8 bytes, SentencePiece; and plain ids for built-in tasks.

A run saves its tokenizer in `<workdir>/tokenizer/` next to its checkpoints, so evaluation, sampling
and inspection decode exactly as training encoded (`load_from_workdir`).

Every tokenizer knows the UTF-8 bytes each token stands for (`token_bytes`): from them the data
pipeline counts the characters and bytes behind every predicted token, which turns a loss in nats
per token into bits per character and per byte, comparable across tokenizers.

  char           one token per character seen in the training text, in code-point order, after
                 id 0: the unknown character (a character the training text never had).
  byte           one token per byte of the UTF-8 encoding: 256 tokens, any text round-trips.
  sentencepiece  BPE or unigram pieces trained on the training text, with byte fallback and no
                 normalization, so any text round-trips; newline is a piece of its own.
  gpt2           GPT-2's byte-level BPE (byte_pair.py), not trained but read from a saved folder
                 (`data.tokenizer_dir`: an imported Hugging Face checkpoint's, see experiments/hugging_face.py);
                 any text round-trips.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import unicodedata
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np

from experiments.data import byte_pair
from experiments.files import CONFIG_FILE

TOKENIZER_DIR = "tokenizer"  # under a workdir
_SPEC_FILE = "tokenizer.json"
_SENTENCEPIECE_FILE = "sentencepiece.model"
KINDS = ("char", "byte", "sentencepiece", "gpt2")
SENTENCEPIECE_TYPES = ("bpe", "unigram")


class Tokenizer(Protocol):
  """What the runner, sampling and inspection need of a tokenizer."""

  vocab_size: int

  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 token ids of `text`."""

  def decode(self, ids: Iterable[int]) -> str:
    """Returns the text of token ids (malformed UTF-8 shows as U+FFFD)."""

  def token_strings(self, ids: Iterable[int]) -> list[str]:
    """Returns a readable label per token, for plot axes: whitespace made visible."""

  def token_bytes(self, token_id: int) -> bytes:
    """Returns the UTF-8 bytes that one token stands for (b"" for control tokens)."""

  def save(self, directory: str) -> None:
    """Writes the tokenizer into `directory` (created if needed)."""


_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def _visible(text: str) -> str:
  """Makes whitespace and control characters visible in a label."""
  out = []
  for ch in text:
    if ch in _VISIBLE:
      out.append(_VISIBLE[ch])
    elif unicodedata.category(ch).startswith("C"):
      out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
    else:
      out.append(ch)
  return "".join(out)


def _write_spec(directory: str, spec: dict) -> None:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, _SPEC_FILE), "w", encoding="utf-8") as f:
    json.dump(spec, f, ensure_ascii=False, indent=1)


class CharTokenizer:
  """One token per character of an alphabet; id 0 stands for any character outside it."""

  UNKNOWN = "\ufffd"

  def __init__(self, alphabet: str):
    if len(set(alphabet)) != len(alphabet):
      raise ValueError("alphabet: characters must be distinct")
    self.alphabet = "".join(sorted(alphabet))
    self.vocab_size = len(self.alphabet) + 1
    self._ids = {ch: i + 1 for i, ch in enumerate(self.alphabet)}
    # Code points below 65,536 map through a table (fast for any text); others through the dict.
    self._table = np.zeros(65_536, np.int32)
    for ch, i in self._ids.items():
      if ord(ch) < 65_536:
        self._table[ord(ch)] = i

  @classmethod
  def train(cls, texts: Iterable[str]) -> "CharTokenizer":
    """The alphabet of the training text."""
    alphabet: set[str] = set()
    for text in texts:
      alphabet.update(text)
    return cls("".join(alphabet))

  def encode(self, text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    small = codes < 65_536
    ids = np.where(small, self._table[np.where(small, codes, 0)], 0).astype(np.int32)
    for i in np.flatnonzero(~small):
      ids[i] = self._ids.get(chr(codes[i]), 0)
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    return "".join(self.alphabet[i - 1] if 0 < i <= len(self.alphabet) else self.UNKNOWN for i in map(int, ids))

  def token_strings(self, ids: Iterable[int]) -> list[str]:
    return [_visible(self.decode([i])) for i in ids]

  def token_bytes(self, token_id: int) -> bytes:
    return self.decode([token_id]).encode("utf-8")

  def save(self, directory: str) -> None:
    _write_spec(directory, {"kind": "char", "alphabet": self.alphabet})


class ByteTokenizer:
  """One token per byte of the UTF-8 encoding."""

  vocab_size = 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

  def token_strings(self, ids: Iterable[int]) -> list[str]:
    labels = []
    for i in map(int, ids):
      labels.append(_visible(chr(i)) if i < 128 else f"\\x{i:02x}")
    return labels

  def token_bytes(self, token_id: int) -> bytes:
    return bytes([int(token_id)])

  def save(self, directory: str) -> None:
    _write_spec(directory, {"kind": "byte"})


class SentencePieceTokenizer:
  """A SentencePiece model (BPE or unigram) that round-trips any text."""

  def __init__(self, model_proto: bytes):
    import sentencepiece  # pylint: disable=g-import-not-at-top  (only text runs need it)

    self.model_proto = model_proto
    self._processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self._processor.get_piece_size()

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int, model_type: str, seed: int = 0,
            max_sentences: int = 2_000_000) -> "SentencePieceTokenizer":
    """Trains on the lines of `texts` (deterministic for the same text and arguments).

    Identity normalization, no dummy prefix and kept whitespace make decode(encode(x)) == x;
    byte fallback covers rare characters (0.05% of the text) and characters never seen; newline is a
    user-defined piece because training reads the text a line at a time and would never see it.
    """
    import sentencepiece  # pylint: disable=g-import-not-at-top

    if model_type not in SENTENCEPIECE_TYPES:
      raise ValueError(f"sentencepiece_type={model_type!r}: expected one of {SENTENCEPIECE_TYPES}")
    model = io.BytesIO()
    # SentencePiece seeds its sentence sampling from a process-wide generator; this is its only API.
    sentencepiece.set_random_generator_seed(seed)
    try:
      sentencepiece.SentencePieceTrainer.train(
          sentence_iterator=_lines(texts), model_writer=model, vocab_size=vocab_size, model_type=model_type,
          character_coverage=0.9995, byte_fallback=True, normalization_rule_name="identity",
          add_dummy_prefix=False, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
          split_digits=True, user_defined_symbols=["\n"], input_sentence_size=max_sentences,
          shuffle_input_sentence=True, seed_sentencepiece_size=1_000_000,
          # One thread: SentencePiece's multithreaded training is not bitwise reproducible.
          num_threads=1, minloglevel=2, max_sentence_length=1 << 16, hard_vocab_limit=True)
    except RuntimeError as error:
      if "smaller than required_chars" in str(error):
        needed = str(error).split(" vs ")[-1].split(".")[0]
        raise ValueError(f"vocab_size={vocab_size}: SentencePiece needs at least {needed} for this text (every "
                         f"character, 256 byte pieces and control pieces); raise it") from None
      if "Vocabulary size too high" in str(error):
        most = str(error).split("<=")[-1].strip(" .")
        raise ValueError(f"vocab_size={vocab_size}: the training text supports at most {most} pieces; lower it"
                         ) from None
      raise
    return cls(model.getvalue())

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._processor.encode(text), np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return self._processor.decode([int(i) for i in ids])

  def token_strings(self, ids: Iterable[int]) -> list[str]:
    return [_visible(self.token_bytes(i).decode("utf-8", errors="replace")) or self._processor.id_to_piece(int(i))
            for i in ids]

  def token_bytes(self, token_id: int) -> bytes:
    token_id = int(token_id)
    if self._processor.is_control(token_id) or self._processor.is_unknown(token_id):
      return b""
    piece = self._processor.id_to_piece(token_id)
    if self._processor.is_byte(token_id):  # "<0xAB>"
      return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode("utf-8")

  def save(self, directory: str) -> None:
    _write_spec(directory, {"kind": "sentencepiece", "model_file": _SENTENCEPIECE_FILE})
    with open(os.path.join(directory, _SENTENCEPIECE_FILE), "wb") as f:
      f.write(self.model_proto)


class GPT2Tokenizer:
  """GPT-2's byte-level BPE: a Hugging Face GPT-2 checkpoint's vocabulary, merges and special tokens."""

  def __init__(self, encoding: byte_pair.BytePairEncoding):
    self.encoding = encoding
    self.vocab_size = encoding.vocab_size

  @classmethod
  def from_directory(cls, directory: str) -> "GPT2Tokenizer":
    """Reads a folder written by `save`, or Hugging Face's vocab.json and merges.txt.

    Raises:
      FileNotFoundError: a file is missing (naming it).
      ValueError: the files do not make a byte-level BPE (naming the file).
    """
    special = None
    spec_path = os.path.join(directory, _SPEC_FILE)
    if os.path.exists(spec_path):
      with open(spec_path, encoding="utf-8") as f:
        special = json.load(f).get("special_tokens")
    return cls(byte_pair.read_vocab_and_merges(directory, special))

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.encoding.encode(text), np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    # An id the vocabulary lacks (a model may embed more tokens than its tokenizer has) shows as U+FFFD.
    pieces = (self.encoding.piece_bytes(i) if 0 <= i < self.vocab_size else "\ufffd".encode() for i in map(int, ids))
    return b"".join(pieces).decode("utf-8", errors="replace")

  def token_strings(self, ids: Iterable[int]) -> list[str]:
    labels = []
    for i in map(int, ids):
      raw = self.encoding.piece_bytes(i) if 0 <= i < self.vocab_size else b""
      try:
        labels.append(_visible(raw.decode("utf-8")))
      except UnicodeDecodeError:  # part of a character: its bytes
        labels.append("".join(f"\\x{b:02x}" for b in raw))
    return labels

  def token_bytes(self, token_id: int) -> bytes:
    token_id = int(token_id)
    if self.encoding.is_special(token_id) or not 0 <= token_id < self.vocab_size:
      return b""
    return self.encoding.piece_bytes(token_id)

  def save(self, directory: str) -> None:
    _write_spec(directory, {"kind": "gpt2", "special_tokens": list(self.encoding.special_tokens)})
    self.encoding.save(directory)


class TokenIds:
  """The 'tokenizer' of built-in tasks: text is whitespace-separated integer token ids."""

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size

  def encode(self, text: str) -> np.ndarray:
    try:
      ids = np.asarray([int(word) for word in text.split()], np.int32)
    except ValueError:
      raise ValueError(f"prompt {text!r}: this run was trained on a built-in task; write the prompt as "
                       f"token ids separated by spaces, e.g. '3 17 5'") from None
    bad = ids[(ids < 0) | (ids >= self.vocab_size)]
    if bad.size:
      raise ValueError(f"prompt: token id {int(bad[0])} is outside the vocabulary [0, {self.vocab_size})")
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    return " ".join(str(int(i)) for i in ids)

  def token_strings(self, ids: Iterable[int]) -> list[str]:
    return [str(int(i)) for i in ids]

  def token_bytes(self, token_id: int) -> bytes:
    return str(int(token_id)).encode()

  def save(self, directory: str) -> None:
    _write_spec(directory, {"kind": "ids", "vocab_size": self.vocab_size})


def _lines(texts: Iterable[str]) -> Iterator[str]:
  for text in texts:
    for line in text.split("\n"):
      if line:
        yield line


def train(kind: str, texts: Sequence[str] | Iterable[str], *, vocab_size: int = 0,
          sentencepiece_type: str = "bpe", seed: int = 0) -> Tokenizer:
  """Builds a tokenizer of `kind` from training text.

  Args:
    kind: one of KINDS.
    texts: the training text, in pieces (iterated once).
    vocab_size: SentencePiece's vocabulary size (char and byte set their own).
    sentencepiece_type: "bpe" or "unigram".
    seed: SentencePiece's sampling seed.

  Returns:
    The tokenizer.
  """
  if kind == "char":
    return CharTokenizer.train(texts)
  if kind == "byte":
    return ByteTokenizer()
  if kind == "sentencepiece":
    return SentencePieceTokenizer.train(texts, vocab_size, sentencepiece_type, seed)
  if kind == "gpt2":
    raise ValueError("tokenizer='gpt2' is not trained: it is read from a folder (GPT2Tokenizer.from_directory)")
  raise ValueError(f"tokenizer={kind!r}: expected one of {KINDS}")


def load(directory: str) -> Tokenizer:
  """Reads a tokenizer written by `save`."""
  path = os.path.join(directory, _SPEC_FILE)
  with open(path, encoding="utf-8") as f:
    spec = json.load(f)
  kind = spec.get("kind")
  if kind == "char":
    return CharTokenizer(spec["alphabet"])
  if kind == "byte":
    return ByteTokenizer()
  if kind == "sentencepiece":
    with open(os.path.join(directory, spec["model_file"]), "rb") as f:
      return SentencePieceTokenizer(f.read())
  if kind == "gpt2":
    return GPT2Tokenizer.from_directory(directory)
  if kind == "ids":
    return TokenIds(spec["vocab_size"])
  raise ValueError(f"{path}: unknown tokenizer kind {kind!r}")


def save_atomically(tokenizer: Tokenizer, directory: str) -> None:
  """Writes the tokenizer to `directory` unless it exists: never a half-written tokenizer there."""
  if os.path.exists(os.path.join(directory, _SPEC_FILE)):
    return
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".tokenizer-", dir=parent)
  try:
    tokenizer.save(staging)
    os.rename(staging, directory)
  except OSError:
    if not os.path.exists(os.path.join(directory, _SPEC_FILE)):
      raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def load_from_workdir(workdir: str) -> Tokenizer:
  """The tokenizer a run trained with: its saved one, or token ids for runs on built-in tasks.

  Raises:
    FileNotFoundError: `workdir` holds neither a tokenizer nor a run's config.json.
  """
  directory = os.path.join(workdir, TOKENIZER_DIR)
  if os.path.exists(os.path.join(directory, _SPEC_FILE)):
    return load(directory)
  config_path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} does not exist: is {workdir!r} the workdir of a training run?")
  with open(config_path, encoding="utf-8") as f:
    config = json.load(f)
  if config.get("data", {}).get("task") == "text":
    raise FileNotFoundError(f"{directory} is missing: the run trained on text but its tokenizer is gone")
  return TokenIds(int(config["model"]["vocab_size"]))


def byte_and_char_counts(tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """Per token id: the UTF-8 bytes and the characters it stands for, float32 [V] each.

  Characters are counted as bytes that start one (not 0b10xxxxxx), so byte tokens that split a
  character add up to exactly one character.
  """
  num_bytes = np.zeros(tokenizer.vocab_size, np.float32)
  num_chars = np.zeros(tokenizer.vocab_size, np.float32)
  for token_id in range(tokenizer.vocab_size):
    raw = tokenizer.token_bytes(token_id)
    num_bytes[token_id] = len(raw)
    num_chars[token_id] = sum(1 for b in raw if b & 0xC0 != 0x80)
  return num_bytes, num_chars

"""GPT-2's byte-level byte-pair encoding (Radford et al. 2019, section 2.2), read from Hugging Face's files.

Encoding a text: special tokens (`<|endoftext|>`) are cut out first and stand for their own id; the rest is
split by GPT-2's pattern into words (a contraction; letters, digits or other symbols, each run with at most
one space before it; whitespace), each word's UTF-8 bytes are written as one printable stand-in character per
byte (OpenAI's `bytes_to_unicode`: a space is "Ġ", a newline "Ċ"), and the merges are applied to the word,
the pair of lowest rank first, every occurrence of it left to right, until no pair of the word has a rank.
Each final piece is a vocabulary entry. Any text encodes (every byte is a piece), and decoding joins the
pieces' bytes, so decode(encode(text)) == text.

Files, as Hugging Face saves them: `vocab.json` ({piece: id}) and `merges.txt` (a `#version` line, then one
merge "a b" per line, in rank order); or `tokenizer.json` (the same under "model", special tokens under
"added_tokens"). The algorithm is that of the encoder.py OpenAI released with GPT-2; Hugging Face's
`transformers` tokenizer is the tests' reference (tests/test_import_hf.py), never imported by the project.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence

import regex

VOCAB_FILE, MERGES_FILE, HF_TOKENIZER_FILE = "vocab.json", "merges.txt", "tokenizer.json"
END_OF_TEXT = "<|endoftext|>"
# GPT-2's split into words (its encoder.py), which needs Unicode property classes (\p{L}: letters, \p{N}: numbers):
# Python's `re` has none, hence the `regex` package.
WORDS = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
_CACHE_WORDS = 100_000  # distinct words whose pieces are remembered (a corpus repeats most of its words)


def _byte_stand_ins() -> list[str]:
  """The character that stands for each byte: itself if printable Latin-1, else 256, 257, ... in byte order.

  BPE works on strings of these, so no piece holds a space, a control character or half a character.
  """
  printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
  unprintable = iter(range(256, 512))
  return [chr(b) if b in printable else chr(next(unprintable)) for b in range(256)]


BYTE_STAND_INS = _byte_stand_ins()
_BYTE_OF = {ch: b for b, ch in enumerate(BYTE_STAND_INS)}


class BytePairEncoding:
  """A byte-level BPE vocabulary with its ranked merges and special tokens."""

  def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], special_tokens: Iterable[str] = (),
               source: str = "the vocabulary"):
    """Checks that the files make a byte-level BPE.

    Args:
      vocab: {piece: id}, ids 0 .. len(vocab) - 1.
      merges: the merges, lowest rank (first learned) first.
      special_tokens: vocabulary entries that stand for themselves in text, never split (`<|endoftext|>`).
      source: the file the vocabulary came from, for the messages.

    Raises:
      ValueError: ids with gaps, a byte without its piece, a merge whose parts or result are not pieces, a special
        token not in the vocabulary (one line naming `source` and the entry).
    """
    if sorted(vocab.values()) != list(range(len(vocab))):
      raise ValueError(f"{source}: the ids are not 0 .. {len(vocab) - 1} without gaps")
    missing = [f"byte {b}" for b, ch in enumerate(BYTE_STAND_INS) if ch not in vocab]
    if missing:
      raise ValueError(f"{source}: no piece for {missing[0]} ({len(missing)} bytes lack one): not a byte-level BPE")
    for rank, (first, second) in enumerate(merges):
      for piece in (first, second, first + second):
        if piece not in vocab:
          raise ValueError(f"{source}: merge {rank} ({first!r} {second!r}) needs the piece {piece!r}, which the "
                           f"vocabulary lacks")
    self.special_tokens = tuple(special_tokens)
    for token in self.special_tokens:
      if token not in vocab:
        raise ValueError(f"{source}: the special token {token!r} is not in the vocabulary")
    self.vocab = dict(vocab)
    self.merges = [tuple(pair) for pair in merges]
    self._ranks = {pair: rank for rank, pair in enumerate(self.merges)}
    self._pieces = [""] * len(vocab)
    for piece, token_id in vocab.items():
      self._pieces[token_id] = piece
    self._special_ids = {self.vocab[token] for token in self.special_tokens}
    # Longest first, so that a special token containing another is cut whole.
    specials = sorted(self.special_tokens, key=len, reverse=True)
    self._special_split = regex.compile("(" + "|".join(regex.escape(t) for t in specials) + ")") if specials else None
    self._word_ids: dict[str, tuple[int, ...]] = {}

  @property
  def vocab_size(self) -> int:
    return len(self._pieces)

  def is_special(self, token_id: int) -> bool:
    return token_id in self._special_ids

  def encode(self, text: str) -> list[int]:
    """The token ids of `text`."""
    ids: list[int] = []
    parts = self._special_split.split(text) if self._special_split else [text]
    # split() with one group alternates text and special tokens: the odd parts are the special tokens.
    for index, part in enumerate(parts):
      if index % 2:
        ids.append(self.vocab[part])
        continue
      for word in WORDS.findall(part):
        ids.extend(self._encode_word(word))
    return ids

  def piece_bytes(self, token_id: int) -> bytes:
    """The bytes a token stands for: a special token's are those of its text."""
    piece = self._pieces[token_id]
    if token_id in self._special_ids:
      return piece.encode("utf-8")
    return bytes(_BYTE_OF[ch] for ch in piece)

  def fingerprint(self) -> str:
    """A digest of the vocabulary, merges and special tokens: what the encoding of any text depends on."""
    digest = hashlib.sha256(json.dumps([self._pieces, self.merges, self.special_tokens]).encode("utf-8"))
    return digest.hexdigest()

  def save(self, directory: str) -> None:
    """Writes vocab.json and merges.txt into `directory` (Hugging Face's format; special tokens are the caller's)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, VOCAB_FILE), "w", encoding="utf-8") as f:
      json.dump(self.vocab, f, ensure_ascii=False)
    with open(os.path.join(directory, MERGES_FILE), "w", encoding="utf-8") as f:
      f.write("#version: 0.2\n" + "".join(f"{first} {second}\n" for first, second in self.merges))

  def _encode_word(self, word: str) -> tuple[int, ...]:
    cached = self._word_ids.get(word)
    if cached is not None:
      return cached
    parts = [BYTE_STAND_INS[b] for b in word.encode("utf-8")]
    never = len(self._ranks)
    while len(parts) > 1:
      first, second = min(zip(parts, parts[1:]), key=lambda pair: self._ranks.get(pair, never))
      if (first, second) not in self._ranks:
        break
      merged, i = [], 0
      while i < len(parts):
        if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    ids = tuple(self.vocab[piece] for piece in parts)
    if len(self._word_ids) >= _CACHE_WORDS:
      self._word_ids.clear()
    self._word_ids[word] = ids
    return ids


def _read_json(path: str) -> object:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise ValueError(f"{path}: not valid JSON ({error})") from None


def _parse_merges(lines: Iterable[str], path: str) -> list[tuple[str, str]]:
  merges = []
  for number, line in enumerate(lines, 1):
    line = line.rstrip("\r\n")
    if not line or (number == 1 and line.startswith("#version")):
      continue
    pair = line.split(" ")
    if len(pair) != 2:
      raise ValueError(f"{path} line {number}: expected two pieces separated by one space, got {line[:60]!r}")
    merges.append((pair[0], pair[1]))
  return merges


def read_vocab_and_merges(directory: str, special_tokens: Iterable[str] | None = None) -> BytePairEncoding:
  """The BPE of `directory`'s vocab.json and merges.txt.

  Args:
    directory: the folder holding both files.
    special_tokens: the special tokens; None: `<|endoftext|>` if the vocabulary has it, as GPT-2's tokenizer
      makes it its one special token.

  Raises:
    FileNotFoundError: a file is missing (naming it).
    ValueError: a file does not parse or they do not make a byte-level BPE (naming the file).
  """
  vocab_path, merges_path = os.path.join(directory, VOCAB_FILE), os.path.join(directory, MERGES_FILE)
  for path in (vocab_path, merges_path):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} is missing")
  vocab = _read_json(vocab_path)
  if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
    raise ValueError(f"{vocab_path}: expected an object of pieces and their integer ids")
  with open(merges_path, encoding="utf-8") as f:
    merges = _parse_merges(f, merges_path)
  if special_tokens is None:
    special_tokens = [END_OF_TEXT] if END_OF_TEXT in vocab else []
  return BytePairEncoding(vocab, merges, special_tokens, source=vocab_path)


def read_hf_tokenizer_json(path: str) -> BytePairEncoding:
  """The BPE of a Hugging Face tokenizer.json (a BPE model; its special added tokens are the special tokens).

  Raises:
    ValueError: the file does not parse, or is not a byte-level BPE (naming it).
  """
  spec = _read_json(path)
  model = spec.get("model") if isinstance(spec, dict) else None
  if not isinstance(model, dict) or model.get("type") != "BPE":
    raise ValueError(f"{path}: not a BPE tokenizer (model.type is {model.get('type') if model else None!r})")
  words = spec.get("pre_tokenizer") or {}
  if (words.get("type"), words.get("add_prefix_space", False), words.get("use_regex", True)) != ("ByteLevel", False,
                                                                                                 True):
    raise ValueError(f"{path}: pre_tokenizer is {json.dumps(words)[:120]}, not GPT-2's (ByteLevel, its pattern, no "
                     f"prefix space)")
  vocab = dict(model.get("vocab", {}))
  # Older files write a merge as "a b", newer ones as ["a", "b"].
  merges = [tuple(m) if isinstance(m, list) else m for m in model.get("merges", [])]
  merges = [m if isinstance(m, tuple) else tuple(m.split(" ")) for m in merges]
  if any(len(m) != 2 for m in merges):
    raise ValueError(f"{path}: a merge in model.merges is not two pieces")
  for token in spec.get("added_tokens", []):
    vocab.setdefault(token["content"], token["id"])
  special = [token["content"] for token in spec.get("added_tokens", []) if token.get("special")]
  return BytePairEncoding(vocab, merges, special, source=path)

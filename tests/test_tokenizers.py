"""Tokenizers: round trips, the bytes and characters behind tokens, saving, and the workdir lookup."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.data import byte_pair, tokenizers
from tests.helpers.hf_checkpoints import write_bpe


def _corpus() -> str:
  """Varied enough text for a few hundred pieces: seeded random words, lines and punctuation."""
  rng = np.random.default_rng(0)
  letters = list("abcdefghijklmnopqrstuvwxyzéüß")
  words = ["".join(rng.choice(letters, rng.integers(1, 9))) for _ in range(400)]
  lines = [" ".join(rng.choice(words, rng.integers(1, 12))) + rng.choice([".", ",", ":", "!", ""]) for _ in range(800)]
  return "First Citizen:\nBefore we proceed any further, hear me speak.\n\n" + "\n".join(lines) + "\n12345 — ok\n"


CORPUS = _corpus()
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60)  # no lone surrogates


# GPT-2-style merges over GPT-2's byte stand-ins (Ġ: a space), lowest rank first; ids: bytes 0-255, then these, then
# <|endoftext|> (267).
MERGES = ["h e", "Ġ t", "Ġt he", "l l", "e l", "Ġ Ġ", "Ã ©", "a f", "c af", "caf Ã©", "Ġ caf"]


@pytest.fixture(scope="module")
def gpt2_bpe(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("bpe"))
  write_bpe(folder, MERGES)
  return tokenizers.GPT2Tokenizer.from_directory(folder)


@pytest.fixture(scope="module")
def sentencepiece_bpe():
  return tokenizers.train("sentencepiece", [CORPUS], vocab_size=400, sentencepiece_type="bpe")


@pytest.fixture(scope="module")
def sentencepiece_unigram():
  return tokenizers.train("sentencepiece", [CORPUS], vocab_size=400, sentencepiece_type="unigram")


@given(ANY_TEXT)
def test_bytes_round_trip_any_text(text):
  tokenizer = tokenizers.ByteTokenizer()
  ids = tokenizer.encode(text)
  assert ids.dtype == np.int32 and len(ids) == len(text.encode("utf-8"))
  assert tokenizer.decode(ids) == text


@given(st.text(alphabet=sorted(set(CORPUS)), max_size=80))
def test_characters_round_trip_text_of_their_alphabet(text):
  tokenizer = tokenizers.train("char", [CORPUS])
  ids = tokenizer.encode(text)
  assert len(ids) == len(text) and (ids > 0).all()
  assert tokenizer.decode(ids) == text


def test_characters_outside_the_alphabet_are_token_zero():
  tokenizer = tokenizers.train("char", ["abc"])
  assert tokenizer.vocab_size == 4
  np.testing.assert_array_equal(tokenizer.encode("a😀zc"), [1, 0, 0, 3])
  assert tokenizer.decode([1, 0, 3]) == "a\ufffdc"
  astral = tokenizers.train("char", ["a😀"])  # a character beyond the 16-bit lookup table
  np.testing.assert_array_equal(astral.encode("😀a😀"), [2, 1, 2])


@given(ANY_TEXT)
@settings(max_examples=25)
def test_sentencepiece_round_trips_any_text(sentencepiece_bpe, sentencepiece_unigram, text):
  for tokenizer in (sentencepiece_bpe, sentencepiece_unigram):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@given(ANY_TEXT)
def test_bytes_and_characters_behind_tokens_add_up(sentencepiece_bpe, text):
  """What bits per byte and per character divide by: exact for byte-level and SentencePiece tokens."""
  for tokenizer in (tokenizers.ByteTokenizer(), sentencepiece_bpe):
    num_bytes, num_chars = tokenizers.byte_and_char_counts(tokenizer)
    ids = tokenizer.encode(text)
    assert num_bytes[ids].sum() == len(text.encode("utf-8"))
    assert num_chars[ids].sum() == len(text)


def test_sentencepiece_vocabulary_errors_name_the_fix():
  with pytest.raises(ValueError, match="vocab_size=100: SentencePiece needs at least"):
    tokenizers.train("sentencepiece", [CORPUS], vocab_size=100)
  with pytest.raises(ValueError, match="vocab_size=5000: the training text supports at most"):
    tokenizers.train("sentencepiece", ["tiny text\n"], vocab_size=5000)


def test_sentencepiece_learns_pieces_and_is_deterministic(sentencepiece_bpe):
  again = tokenizers.train("sentencepiece", [CORPUS], vocab_size=400, sentencepiece_type="bpe")
  assert again.model_proto == sentencepiece_bpe.model_proto
  assert sentencepiece_bpe.vocab_size == 400
  assert len(sentencepiece_bpe.encode(CORPUS)) < 0.85 * len(CORPUS)  # merges, not one token per character
  assert "↵" in sentencepiece_bpe.token_strings(sentencepiece_bpe.encode("a\nb"))


def test_gpt2_stands_in_for_bytes_with_openais_characters():
  """bytes_to_unicode of GPT-2's encoder.py: printable Latin-1 as itself, the rest from U+0100 in byte order."""
  stand_ins = byte_pair.BYTE_STAND_INS
  assert (stand_ins[0], stand_ins[ord("\t")], stand_ins[ord("\n")], stand_ins[ord(" ")]) == ("Ā", "ĉ", "Ċ", "Ġ")
  assert (stand_ins[ord("a")], stand_ins[0x7F], stand_ins[0xAD], stand_ins[0xE9]) == ("a", "ġ", "Ń", "é")
  assert len(set(stand_ins)) == 256 and all(ch.isprintable() for ch in stand_ins)


def test_gpt2_merges_the_lowest_rank_first_within_gpt2s_words(gpt2_bpe):
  he, space_t, space_the, ll, el, two_spaces, e_acute, af, caf, cafe, space_caf = range(256, 267)
  # "hell": h e first (rank 0), then l l (3); "yell": l l (3) before e l (4) could apply; " the": Ġ t, then Ġt he.
  assert gpt2_bpe.encode("hell the").tolist() == [he, ll, space_the]
  assert gpt2_bpe.encode("yell").tolist() == [ord("y"), ord("e"), ll]
  # GPT-2's words: a space joins the word after it, the last of several spaces too; a contraction is a word.
  assert gpt2_bpe.encode("a   the").tolist() == [ord("a"), two_spaces, space_the]
  assert gpt2_bpe.encode("don't").tolist() == list(b"don") + [ord("'"), ord("t")]
  # é is the bytes C3 A9 (stand-ins Ã ©). In " café", "caf Ã©" (rank 9) comes before "Ġ caf" (10) could.
  assert gpt2_bpe.encode(" café").tolist() == [ord(" "), cafe]
  assert gpt2_bpe.encode(" caf é").tolist() == [space_caf, ord(" "), e_acute]
  assert gpt2_bpe.encode("x<|endoftext|>he").tolist() == [ord("x"), 267, he]
  assert gpt2_bpe.vocab_size == 268 and (space_t, el, e_acute, af, caf) == (257, 260, 262, 263, 264)


@given(ANY_TEXT)
def test_gpt2_round_trips_any_text_and_its_bytes_add_up(gpt2_bpe, text):
  ids = gpt2_bpe.encode(text + "<|endoftext|>")
  assert gpt2_bpe.decode(ids) == text + "<|endoftext|>"
  num_bytes, num_chars = tokenizers.byte_and_char_counts(gpt2_bpe)
  assert num_bytes[ids].sum() == len(text.encode("utf-8"))  # the special token stands for no text
  assert num_chars[ids].sum() == len(text)


def test_gpt2_files_that_are_no_byte_level_bpe_are_one_line_errors(tmp_path):
  write_bpe(str(tmp_path), ["h e", "x y"])
  (tmp_path / "merges.txt").write_text("#version: 0.2\nh e\nhe l\n")
  with pytest.raises(ValueError, match=r"vocab.json: merge 1 \('he' 'l'\) needs the piece 'hel'"):
    tokenizers.GPT2Tokenizer.from_directory(str(tmp_path))
  (tmp_path / "merges.txt").write_text("#version: 0.2\nh e x\n")
  with pytest.raises(ValueError, match="merges.txt line 2: expected two pieces"):
    tokenizers.GPT2Tokenizer.from_directory(str(tmp_path))
  (tmp_path / "merges.txt").write_text("#version: 0.2\n")
  (tmp_path / "vocab.json").write_text('{"a": 0}')
  with pytest.raises(ValueError, match="no piece for byte 0"):
    tokenizers.GPT2Tokenizer.from_directory(str(tmp_path))


@pytest.mark.parametrize("kind", ["char", "byte", "sentencepiece", "gpt2", "ids"])
def test_saved_tokenizers_encode_the_same(kind, sentencepiece_bpe, gpt2_bpe, tmp_path):
  tokenizer = {"char": tokenizers.train("char", [CORPUS]), "byte": tokenizers.ByteTokenizer(),
               "sentencepiece": sentencepiece_bpe, "gpt2": gpt2_bpe, "ids": tokenizers.TokenIds(64)}[kind]
  text = "3 17 5" if kind == "ids" else "Speak, speak. Über!"
  tokenizers.save_atomically(tokenizer, str(tmp_path / "tokenizer"))
  loaded = tokenizers.load(str(tmp_path / "tokenizer"))
  assert loaded.vocab_size == tokenizer.vocab_size
  np.testing.assert_array_equal(loaded.encode(text), tokenizer.encode(text))
  assert loaded.decode(loaded.encode(text)) == tokenizer.decode(tokenizer.encode(text))
  # A second save never touches what is there.
  tokenizers.save_atomically(tokenizers.ByteTokenizer(), str(tmp_path / "tokenizer"))
  assert tokenizers.load(str(tmp_path / "tokenizer")).vocab_size == tokenizer.vocab_size


def test_token_labels_make_whitespace_visible():
  tokenizer = tokenizers.train("char", ["a b\n\t"])
  assert tokenizer.token_strings(tokenizer.encode("a b\n\t")) == ["a", "␣", "b", "↵", "⇥"]
  assert tokenizers.ByteTokenizer().token_strings([32, 10, 200]) == ["␣", "↵", "\\xc8"]


def test_gpt2_token_labels_show_text_or_the_bytes_of_part_of_a_character(gpt2_bpe):
  assert gpt2_bpe.token_strings([257, 0xC3, 265, 267]) == ["␣t", "\\xc3", "café", "<|endoftext|>"]


def test_workdir_lookup(tmp_path):
  task_run, text_run = tmp_path / "task", tmp_path / "text"
  task_run.mkdir()
  (task_run / "config.json").write_text(json.dumps({"model": {"vocab_size": 64}, "data": {"task": "copy"}}))
  ids = tokenizers.load_from_workdir(str(task_run))
  assert isinstance(ids, tokenizers.TokenIds) and ids.vocab_size == 64
  np.testing.assert_array_equal(ids.encode(" 3  17 5\n"), [3, 17, 5])
  with pytest.raises(ValueError, match="token ids separated by spaces"):
    ids.encode("ROMEO:")
  with pytest.raises(ValueError, match="outside the vocabulary"):
    ids.encode("3 64")
  text_run.mkdir()
  (text_run / "config.json").write_text(json.dumps({"model": {"vocab_size": 66}, "data": {"task": "text"}}))
  with pytest.raises(FileNotFoundError, match="tokenizer is gone"):
    tokenizers.load_from_workdir(str(text_run))
  tokenizers.save_atomically(tokenizers.train("char", ["xyz"]), str(text_run / "tokenizer"))
  assert tokenizers.load_from_workdir(str(text_run)).decode([1, 2, 3]) == "xyz"
  with pytest.raises(FileNotFoundError, match="workdir of a training run"):
    tokenizers.load_from_workdir(str(tmp_path / "nothing"))

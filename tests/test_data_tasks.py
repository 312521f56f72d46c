"""Tests of experiments/data/task_streams.py and tasks.py: token layouts, determinism, size checks, preparation."""

import errno
import os

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from experiments.data import task_streams, tasks

TINY = dict(vocab_size=16, seq_len=16, num_train=12, num_validation=5)
TINY_RECALL = dict(TINY, num_pairs=3, num_queries=2)


def _stream(f: dict[str, np.ndarray]) -> np.ndarray:
  """The [N, T+1] token stream that targets are the shifted view of."""
  return np.concatenate([f["inputs"][:, :1], f["targets"]], axis=1)


def _check_features(f: dict[str, np.ndarray], config: task_streams.TaskConfig, hides_answers: bool) -> None:
  """Dtypes, shapes, vocabulary range, binary weights, and targets = inputs shifted by one.

  Where a task hides its answers, an input that is the previous position's answer is 0 instead.
  """
  T = config.seq_len
  assert f["inputs"].dtype == np.int32 and f["targets"].dtype == np.int32
  assert f["weights"].dtype == np.float32
  for v in f.values():
    assert v.shape == (len(f["inputs"]), T)
  answered = f["weights"][:, :-1] > 0
  shown = np.where(answered, 0, f["targets"][:, :-1]) if hides_answers else f["targets"][:, :-1]
  np.testing.assert_array_equal(shown, f["inputs"][:, 1:])
  assert f["inputs"].min() >= 0 and f["targets"].max() < config.vocab_size
  assert set(np.unique(f["weights"])) <= {0.0, 1.0}


def _check_recall(f, c: task_streams.RecallConfig) -> None:
  """Weights mark exactly the distinct query keys of the query region; their targets are the values."""
  P, Q = c.num_pairs, c.num_queries
  num_keys = (c.vocab_size - 1) // 2
  for inputs, targets, weights in zip(f["inputs"], f["targets"], f["weights"]):
    keys, values = inputs[0 : 2 * P : 2], targets[0 : 2 * P : 2]
    assert len(set(keys)) == P and len(set(values)) == P
    assert keys.min() >= 1 and keys.max() <= num_keys
    assert values.min() > num_keys and values.max() < c.vocab_size
    value_of = dict(zip(keys.tolist(), values.tolist()))
    query_region = np.arange(c.seq_len) >= 2 * P
    is_query = query_region & np.isin(inputs, keys)
    np.testing.assert_array_equal(weights, is_query.astype(np.float32))
    assert weights.sum() == Q and len(set(inputs[is_query].tolist())) == Q
    for i in np.flatnonzero(is_query):
      assert targets[i] == value_of[inputs[i]]
    # Everything else in the query region is 0: padding, or an answer hidden from the inputs.
    assert np.all(inputs[query_region & ~is_query] == 0)


def _check_induction(f, c: task_streams.TaskConfig) -> None:
  """Second copy equals the first; weights mark the second copy after its first token."""
  longest = (c.seq_len + 1) // 2
  for stream, weights in zip(_stream(f), f["weights"]):
    n = np.count_nonzero(stream) // 2  # two copies of n non-zero tokens, then padding
    assert max(2, (c.seq_len + 1) // 4) <= n <= longest
    np.testing.assert_array_equal(stream[n : 2 * n], stream[:n])
    assert len(set(stream[:n].tolist())) == n and np.all(stream[2 * n :] == 0)
    expected = np.zeros(c.seq_len, np.float32)
    expected[n : 2 * n - 1] = 1  # input positions whose target is stream[n+1 : 2n]
    np.testing.assert_array_equal(weights, expected)


def test_induction_offsets_vary():
  """A fixed offset would let a head attending a fixed distance back solve induction."""
  config = tasks.make_config("induction", **TINY)
  f = tasks.generate("induction", config, "train")
  assert len(set(np.count_nonzero(_stream(f), axis=1).tolist())) > 1


def _check_copy(f, c: task_streams.TaskConfig, reverse: bool) -> None:
  """Separator 0, then the sequence copied or reversed; weights mark exactly those answers."""
  half = c.seq_len // 2
  stream = _stream(f)
  first, answer = stream[:, :half], stream[:, half + 1 : 2 * half + 1]
  np.testing.assert_array_equal(answer, first[:, ::-1] if reverse else first)
  assert np.all(first > 0) and np.all(stream[:, half] == 0)
  expected = np.zeros(c.seq_len, np.float32)
  expected[half : 2 * half] = 1  # the separator predicts the first answer token
  np.testing.assert_array_equal(f["weights"], np.broadcast_to(expected, f["weights"].shape))


CHECKS = {
    "associative_recall": _check_recall,
    "induction": _check_induction,
    "copy": lambda f, c: _check_copy(f, c, reverse=False),
    "reverse": lambda f, c: _check_copy(f, c, reverse=True),
}


HIDES_ANSWERS = {"associative_recall": True, "induction": False, "copy": False, "reverse": False}


def _tiny(task: str) -> dict[str, int]:
  return TINY_RECALL if task == "associative_recall" else TINY


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
@pytest.mark.parametrize("split", ["train", "validation"])
def test_layout_of_each_task(task, split):
  config = tasks.make_config(task, **_tiny(task))
  f = tasks.generate(task, config, split)
  assert len(f["inputs"]) == (12 if split == "train" else 5)
  _check_features(f, config, HIDES_ANSWERS[task])
  CHECKS[task](f, config)


@pytest.mark.parametrize("task", ["associative_recall", "induction"])
def test_layout_with_a_large_vocabulary(task):
  """Large vocabularies draw distinct tokens row by row instead of by a permutation per row."""
  sizes = dict(vocab_size=1000, seq_len=40, num_train=20)
  config = tasks.make_config(task, **sizes, **(dict(num_pairs=8) if task != "induction" else {}))
  f = tasks.generate(task, config, "train")
  _check_features(f, config, HIDES_ANSWERS[task])
  CHECKS[task](f, config)


def test_default_sizes_have_answers():
  """The defaults are what the runner uses: MQAR has 8 pairs and 8 queries in 64 tokens."""
  config = tasks.make_config("associative_recall")
  assert (config.vocab_size, config.seq_len, config.num_pairs, config.num_queries) == (64, 64, 8, 8)
  f = tasks.generate("associative_recall", config, "validation")
  np.testing.assert_array_equal(f["weights"].sum(1), 8)


@st.composite
def _sizes(draw):
  """A task and small valid sizes for it."""
  task = draw(st.sampled_from(sorted(tasks.TASKS)))
  vocab_size = draw(st.integers(2, 40))
  seq_len = draw(st.integers(2, 40))
  sizes = dict(vocab_size=vocab_size, seq_len=seq_len, num_train=draw(st.integers(1, 6)),
               num_validation=1, seed=draw(st.integers(0, 2**32)))
  if task == "associative_recall":
    max_pairs = min((vocab_size - 1) // 2, (seq_len + 1) // 4)
    if max_pairs < 1:
      sizes.update(vocab_size=max(vocab_size, 3), seq_len=max(seq_len, 3))
      max_pairs = 1
    num_pairs = draw(st.integers(1, max_pairs))
    max_queries = min(num_pairs, (sizes["seq_len"] + 1) // 2 - num_pairs)
    sizes.update(num_pairs=num_pairs, num_queries=draw(st.integers(1, max_queries)))
  elif task == "induction":
    sizes["seq_len"] = max(seq_len, 3)
    sizes["vocab_size"] = max(vocab_size, (sizes["seq_len"] + 1) // 2 + 1)
  return task, sizes


@settings(max_examples=60, deadline=None)
@given(_sizes())
def test_layout_property(task_and_sizes):
  task, sizes = task_and_sizes
  config = tasks.make_config(task, **sizes)
  f = tasks.generate(task, config, "train")
  _check_features(f, config, HIDES_ANSWERS[task])
  CHECKS[task](f, config)
  assert f["weights"].sum(1).min() >= 1  # every example has something to predict


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_generation_is_deterministic_and_splits_differ(task):
  config = tasks.make_config(task, **dict(_tiny(task), num_validation=12))
  train = tasks.generate(task, config, "train")
  for k, v in tasks.generate(task, config, "train").items():
    np.testing.assert_array_equal(v, train[k])
  validation = tasks.generate(task, config, "validation")
  assert not np.array_equal(train["inputs"], validation["inputs"])
  reseeded = tasks.generate(task, tasks.make_config(task, **_tiny(task), seed=1), "train")
  assert not np.array_equal(train["inputs"], reseeded["inputs"])


@pytest.mark.parametrize(
    "task, sizes, field",
    [
        ("associative_recall", dict(vocab_size=16, num_pairs=8), "num_pairs"),
        ("associative_recall", dict(num_queries=0), "num_queries"),
        ("associative_recall", dict(num_pairs=4, num_queries=5), "num_queries"),
        ("associative_recall", dict(seq_len=20, num_pairs=8, num_queries=4), "seq_len"),
        ("associative_recall", dict(num_pairs=0), "num_pairs"),
        ("induction", dict(vocab_size=16, seq_len=64), "vocab_size"),
        ("copy", dict(seq_len=1), "seq_len"),
        ("reverse", dict(vocab_size=1), "vocab_size"),
        ("copy", dict(num_train=0), "num_train"),
        ("copy", dict(seed=-1), "seed"),
        ("copy", dict(num_pairs=3), "num_pairs"),  # not a size of copy
        ("copy", dict(seq_len=8.5), "seq_len"),
        ("sort", {}, "task"),
    ],
)
def test_bad_sizes_raise_one_line_error_naming_the_field(task, sizes, field):
  with pytest.raises(ValueError, match=f"^{field}") as info:
    tasks.make_config(task, **sizes)
  assert "\n" not in str(info.value)


def test_builder_names_are_prefixed():
  """Prefixed names cannot clash with the TFDS catalog."""
  assert {cls.name for cls in tasks.TASKS.values()} == {
      "attn_associative_recall", "attn_induction", "attn_copy", "attn_reverse"}


def test_config_name_encodes_every_size():
  a = tasks.make_config("associative_recall", **TINY_RECALL)
  b = tasks.make_config("associative_recall", **dict(TINY_RECALL, num_queries=3))
  assert a.name != b.name
  for key, value in TINY_RECALL.items():
    assert f"{key}-{value}" in a.name.split(".")


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_prepare_stores_exactly_the_generated_data(task, tfds_data_dir):
  builder = tasks.prepare(task, tfds_data_dir, **_tiny(task))
  assert builder.is_prepared() and str(builder.data_path).startswith(tfds_data_dir)
  config = builder.builder_config
  assert config.vocab_size == 16
  for split in ("train", "validation"):
    source = builder.as_data_source(split=split)
    expected = tasks.generate(task, config, split)
    assert len(source) == len(expected["inputs"])
    for i in range(len(source)):
      for k in ("inputs", "targets", "weights"):
        assert source[i][k].dtype == expected[k].dtype
        np.testing.assert_array_equal(source[i][k], expected[k][i])


def test_prepare_is_idempotent(tfds_data_dir):
  first = tasks.prepare("copy", tfds_data_dir, **TINY)
  files = sorted(first.data_path.iterdir())
  mtimes = [os.stat(f).st_mtime_ns for f in files]
  second = tasks.prepare("copy", tfds_data_dir, **TINY)
  assert second.data_path == first.data_path
  assert sorted(second.data_path.iterdir()) == files
  assert [os.stat(f).st_mtime_ns for f in files] == mtimes  # nothing rewritten


def test_default_config_prepares(tmp_path):
  """The default sizes are a predefined config, which TFDS handles differently from custom ones."""
  builder = tasks.prepare("induction", str(tmp_path), num_train=3, num_validation=2)
  assert builder.is_prepared()
  default = tasks.prepare("reverse", str(tmp_path), num_train=20_000, num_validation=1_000)
  assert default.builder_config is tasks.AttnReverse.BUILDER_CONFIGS[0]


@pytest.mark.parametrize("code, reused", [(errno.EEXIST, True), (errno.ENOTEMPTY, True), (errno.EACCES, False)])
def test_prepare_reuses_the_data_of_a_process_that_renamed_first(tmp_path, monkeypatch, code, reused):
  """Linux reports the losing rename as ENOTEMPTY (a plain OSError), others as EEXIST; other errors propagate."""
  tasks.prepare("copy", str(tmp_path), **TINY)  # the winner's data, in place

  def rename_loses(self, *args, **kwargs):
    raise OSError(code, os.strerror(code))

  monkeypatch.setattr(tasks.AttnCopy, "download_and_prepare", rename_loses)
  if reused:
    assert tasks.prepare("copy", str(tmp_path), **TINY).is_prepared()
  else:
    with pytest.raises(PermissionError):
      tasks.prepare("copy", str(tmp_path), **TINY)


def test_prepare_survives_a_concurrent_writer(tmp_path, monkeypatch):
  """If another process finishes preparing first, prepare keeps its data and returns them."""
  original = tasks.AttnCopy._generate_examples
  raced = []

  def generate_while_another_process_wins(self, split):
    if not raced:
      raced.append(True)
      tasks.prepare("copy", str(tmp_path), **TINY)  # the competitor, renamed into place first
    yield from original(self, split)

  monkeypatch.setattr(tasks.AttnCopy, "_generate_examples", generate_while_another_process_wins)
  builder = tasks.prepare("copy", str(tmp_path), **TINY)
  assert raced and builder.is_prepared()
  expected = tasks.generate("copy", builder.builder_config, "train")
  np.testing.assert_array_equal(builder.as_data_source(split="train")[3]["inputs"],
                                expected["inputs"][3])
  leftovers = [p for p in tmp_path.rglob("*") if "incomplete" in p.name]
  assert not leftovers

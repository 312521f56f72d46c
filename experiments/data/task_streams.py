"""The token streams of the synthetic attention tasks: their sizes, the checks of those, the generators.

Every task writes a stream of `seq_len + 1` tokens per example and marks the positions whose token is
an answer; tasks.py turns each stream into the next-token pairs a model trains on. Array suffixes: B the
examples generated at once, S the stream (T + 1 tokens, T = `seq_len`), P the key-value pairs and A the
queries of associative recall, E the longest copy of induction.

Token layout (V = `vocab_size`; token 0 is padding and separator in every task):

  associative_recall  Multi-query associative recall (MQAR, Zoology, Arora et al. 2023).
      Keys are drawn from [1, 1 + (V-1)//2), values from the rest, [1 + (V-1)//2, V); both
      without replacement, so every key and value appears once in the context. The stream is
      `k1 v1 k2 v2 ... kP vP`, followed by a query region of zeros in which `num_queries`
      distinct keys of the context are placed at random non-overlapping positions, each
      followed by its value: `... 0 0 k3 v3 0 k1 v1 0 ...`. Weights are 1 where the input is a
      query key, i.e. the target is the value to recall. As in Zoology, the answers are hidden
      from the inputs (an answered value is 0 in `inputs`; `targets` keep it): were they
      visible, a model would score (1 + 1/2 + ... + 1/A) / A (0.34 for A = 8 queries) by naming
      a context value not yet answered, without recalling anything, and small models stall
      exactly there.
  induction  n distinct tokens from [1, V), then the same n tokens again, then 0 padding,
      with n drawn per example from [max(2, (T+1)//4), (T+1)//2]. Weights are 1 on the second
      copy except its first token: those targets are predictable by finding the current
      token in the first copy and copying its successor (an induction head); the first token
      of the repeat is not. n varies so that the copy's offset does too: with a fixed offset
      a head attending a fixed distance back would solve the task without induction.
  copy / reverse  n = T//2 tokens from [1, V) (with replacement), the separator 0, then the
      same tokens copied or reversed, then 0 padding. Weights are 1 on the n answer tokens
      (the separator predicts the first one).

Default sizes (`TaskConfig`, `RecallConfig`): V = 64, T = 64, 20,000 train and 1,000 validation
examples, and for MQAR P = 8 pairs and A = 8 queries.

Generation is vectorized numpy seeded by `np.random.default_rng([seed, split_index])`, so it is
deterministic, and `train` and `validation` come from independent streams (examples are not
deduplicated across splits; at the default sizes a collision has negligible probability).
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

_BASE_FIELDS = frozenset(f.name for f in dataclasses.fields(tfds.core.BuilderConfig))


@dataclasses.dataclass(eq=False, kw_only=True)
class TaskConfig(tfds.core.BuilderConfig):
  """Sizes of a synthetic task; build with `from_sizes` so the name encodes them."""

  vocab_size: int = 64  # V, including token 0
  seq_len: int = 64  # T, length of inputs, targets and weights
  num_train: int = 20_000  # examples in the train split
  num_validation: int = 1_000  # examples in the validation split
  seed: int = 0  # generation seed; the splits use [seed, 0] and [seed, 1]

  @classmethod
  def size_fields(cls) -> tuple[str, ...]:
    """Returns the names of the size fields (those that `from_sizes` accepts)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _BASE_FIELDS)

  @classmethod
  def from_sizes(cls, **sizes: int) -> "TaskConfig":
    """Returns a config named after all its sizes, so different sizes never share a directory.

    Args:
      **sizes: values for some of `size_fields()`; the others keep their defaults.

    Returns:
      The config, named e.g. `vocab_size-64.seq_len-64.num_train-20000...`.
    """
    fields = cls.size_fields()
    for key, value in sizes.items():
      if key not in fields:
        raise ValueError(f"{key}: not a size of {cls.__name__}; expected one of {fields}")
      # bool is an int subclass; numpy ints come from config files computed with numpy.
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{key}={value!r}: must be an integer")
    values = {f.name: f.default for f in dataclasses.fields(cls) if f.name in fields}
    values.update({k: int(v) for k, v in sizes.items()})
    name = ".".join(f"{k}-{v}" for k, v in values.items())
    return cls(name=name, description=f"{cls.__name__}({values})", **values)


@dataclasses.dataclass(eq=False, kw_only=True)
class RecallConfig(TaskConfig):
  """Sizes of multi-query associative recall."""

  num_pairs: int = 8  # P key-value pairs in the context
  num_queries: int = 8  # A queries, each of a uniformly drawn key of the context


def _check_common(c: TaskConfig) -> None:
  """Raises ValueError naming the first size that is out of range."""
  for key in ("seq_len", "num_train", "num_validation"):
    if getattr(c, key) < 1:
      raise ValueError(f"{key}={getattr(c, key)}: must be positive")
  if c.vocab_size < 2:
    raise ValueError(f"vocab_size={c.vocab_size}: must be >= 2 (token 0 is padding)")
  if c.seed < 0:
    raise ValueError(f"seed={c.seed}: must be non-negative")


def check_recall(c: RecallConfig) -> None:
  """Raises ValueError naming the first MQAR size that is out of range."""
  _check_common(c)
  num_keys = (c.vocab_size - 1) // 2
  if c.num_pairs < 1:
    raise ValueError(f"num_pairs={c.num_pairs}: must be positive")
  if c.num_pairs > num_keys:
    raise ValueError(
        f"num_pairs={c.num_pairs}: exceeds the {num_keys} distinct keys of"
        f" vocab_size={c.vocab_size} (keys are 1..(vocab_size-1)//2)"
    )
  if not 1 <= c.num_queries <= c.num_pairs:
    raise ValueError(
        f"num_queries={c.num_queries}: must be between 1 and num_pairs={c.num_pairs}"
        " (each key is queried at most once)"
    )
  if 2 * (c.num_pairs + c.num_queries) > c.seq_len + 1:
    raise ValueError(
        f"seq_len={c.seq_len}: too short for 2 * (num_pairs + num_queries) ="
        f" {2 * (c.num_pairs + c.num_queries)} tokens (at most seq_len + 1)"
    )


def check_induction(c: TaskConfig) -> None:
  """Raises ValueError naming the first induction size that is out of range."""
  _check_common(c)
  if c.seq_len < 3:
    raise ValueError(f"seq_len={c.seq_len}: must be >= 3 to have one induction target")
  half = (c.seq_len + 1) // 2
  if half > c.vocab_size - 1:
    raise ValueError(
        f"vocab_size={c.vocab_size}: needs (seq_len+1)//2 = {half} distinct non-zero tokens"
    )


def check_copy(c: TaskConfig) -> None:
  """Raises ValueError naming the first copy/reverse size that is out of range."""
  _check_common(c)
  if c.seq_len < 2:
    raise ValueError(f"seq_len={c.seq_len}: must be >= 2 (one token, separator, one answer)")


def _distinct(rng: np.random.Generator, n: int, k: int, count: int) -> np.ndarray:
  """Returns [n, k] ints, each row k distinct values from range(count) in random order."""
  if count <= 256:  # A vectorized permutation per row; its n * count floats stay small.
    return np.argsort(rng.random((n, count)), axis=1)[:, :k]
  # Large vocabularies would need n * count floats: draw row by row (slower; docs/performance.md).
  return np.stack([rng.choice(count, size=k, replace=False) for _ in range(n)])


def associative_recall(rng: np.random.Generator, n: int, c: RecallConfig):
  """Returns n MQAR streams [B, S] int32 and their answer masks [B, S] bool."""
  num_pairs, num_queries, stream_len = c.num_pairs, c.num_queries, c.seq_len + 1
  num_keys = (c.vocab_size - 1) // 2
  keys_BP = 1 + _distinct(rng, n, num_pairs, num_keys)
  values_BP = 1 + num_keys + _distinct(rng, n, num_pairs, c.vocab_size - 1 - num_keys)
  stream_BS = np.zeros((n, stream_len), np.int32)
  stream_BS[:, 0 : 2 * num_pairs : 2] = keys_BP
  stream_BS[:, 1 : 2 * num_pairs : 2] = values_BP
  # Place the queries, blocks of two tokens, among the free zeros: choosing which of the blocks and
  # zeros together are blocks (sorted) picks a uniformly random arrangement; block i starts after i blocks.
  free = stream_len - 2 * num_pairs - 2 * num_queries
  blocks_BA = np.sort(_distinct(rng, n, num_queries, num_queries + free), axis=1)
  starts_BA = 2 * num_pairs + blocks_BA + np.arange(num_queries)
  which_BA = _distinct(rng, n, num_queries, num_pairs)
  rows = np.arange(n)[:, None]
  stream_BS[rows, starts_BA] = np.take_along_axis(keys_BP, which_BA, axis=1)
  stream_BS[rows, starts_BA + 1] = np.take_along_axis(values_BP, which_BA, axis=1)
  answer_BS = np.zeros((n, stream_len), bool)
  answer_BS[rows, starts_BA + 1] = True
  return stream_BS, answer_BS


def induction(rng: np.random.Generator, n: int, c: TaskConfig):
  """Returns n induction streams [B, S] int32 and their answer masks [B, S] bool."""
  longest = (c.seq_len + 1) // 2
  first_BE = 1 + _distinct(rng, n, longest, c.vocab_size - 1)
  length_B1 = rng.integers(max(2, (c.seq_len + 1) // 4), longest + 1, (n, 1))
  position_S = np.arange(c.seq_len + 1)
  in_first_BS = position_S < length_B1
  in_second_BS = ~in_first_BS & (position_S < 2 * length_B1)
  source_BS = np.where(in_first_BS, position_S, position_S - length_B1)
  tokens_BS = np.take_along_axis(first_BE, np.clip(source_BS, 0, longest - 1), axis=1)
  stream_BS = np.where(in_first_BS | in_second_BS, tokens_BS, 0).astype(np.int32)
  answer_BS = in_second_BS & (position_S > length_B1)
  return stream_BS, answer_BS


def _copy_or_reverse(rng: np.random.Generator, n: int, c: TaskConfig, reverse: bool):
  """Returns n copy (or reverse) streams [B, S] int32 and their answer masks [B, S] bool."""
  half = c.seq_len // 2
  first = rng.integers(1, c.vocab_size, (n, half), dtype=np.int32)
  stream_BS = np.zeros((n, c.seq_len + 1), np.int32)
  stream_BS[:, :half] = first
  stream_BS[:, half + 1 : 2 * half + 1] = first[:, ::-1] if reverse else first
  answer_BS = np.zeros((n, c.seq_len + 1), bool)
  answer_BS[:, half + 1 : 2 * half + 1] = True
  return stream_BS, answer_BS


def copy(rng: np.random.Generator, n: int, c: TaskConfig):
  """Returns n copy streams [B, S] int32 and their answer masks [B, S] bool."""
  return _copy_or_reverse(rng, n, c, reverse=False)


def reverse(rng: np.random.Generator, n: int, c: TaskConfig):
  """Returns n reverse streams [B, S] int32 and their answer masks [B, S] bool."""
  return _copy_or_reverse(rng, n, c, reverse=True)

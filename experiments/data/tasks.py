"""Synthetic attention tasks as TFDS builders: associative recall, induction, copy, reverse.

Every task writes a stream of `seq_len + 1` tokens per example and stores it as next-token
pairs, all with shape [T] where T = `seq_len`:

  inputs   int32    stream[:-1] (in associative recall, with the answers replaced by 0)
  targets  int32    stream[1:]
  weights  float32  1.0 exactly where `targets` is an answer the loss and task accuracy count

Token layout (V = `vocab_size`; token 0 is padding and separator in every task):

  associative_recall  Multi-query associative recall (MQAR, Zoology, Arora et al. 2023).
      Keys are drawn from [1, 1 + (V-1)//2), values from the rest, [1 + (V-1)//2, V); both
      without replacement, so every key and value appears once in the context. The stream is
      `k1 v1 k2 v2 ... kP vP`, followed by a query region of zeros in which `num_queries`
      distinct keys of the context are placed at random non-overlapping positions, each
      followed by its value: `... 0 0 k3 v3 0 k1 v1 0 ...`. Weights are 1 where the input is a
      query key, i.e. the target is the value to recall. As in Zoology, the answers are hidden
      from the inputs (an answered value is 0 in `inputs`; `targets` keep it): were they
      visible, a model would score H_Q / Q (0.34 for 8 queries) by naming a context value not
      yet answered, without recalling anything, and small models stall exactly there.
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
examples, and for MQAR P = 8 pairs and Q = 8 queries; a task prepares in about 2 s.

Generation is vectorized numpy seeded by `np.random.default_rng([seed, split_index])`, so it is
deterministic, and `train` and `validation` come from independent streams (examples are not
deduplicated across splits; at the default sizes a collision has negligible probability).
Examples are stored in generation order (`disable_shuffling=True`): they are i.i.d. already,
and `source[i]` is then the i-th generated example. Changing the generators changes the data
stored under the same name: bump `_TaskBuilder.VERSION` when you do.

Preparing without tensorflow: TFDS 4.9.10 `download_and_prepare(file_format="array_record")`
works for a `GeneratorBasedBuilder` with tensorflow absent. It serializes examples with TFDS's
own copy of the `tf.train.Example` protos (no tensorflow), writes them with array_record into
`incomplete.*` and renames that directory into place; `builder.as_data_source()` reads and
decodes with numpy. Four TFDS defaults would get in the way and are avoided here:
`dataset_info_from_configs` reads metadata files next to the module, so `_info` builds a
`DatasetInfo` directly; `code_path` needs the `importlib_resources` backport, so it is set (see
`_TaskBuilder`); `DatasetInfo.initialize_from_bucket` leaks a temporary directory, so it is a
no-op (see `LocalDatasetInfo`); and `data_dir` defaults to ~/tensorflow_datasets, so `prepare`
requires it.
"""

import dataclasses
import errno
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds

_SPLITS = ("train", "validation")
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
  num_queries: int = 8  # Q queries, each of a uniformly drawn key of the context


def _check_common(c: TaskConfig) -> None:
  """Raises ValueError naming the first size that is out of range."""
  for key in ("seq_len", "num_train", "num_validation"):
    if getattr(c, key) < 1:
      raise ValueError(f"{key}={getattr(c, key)}: must be positive")
  if c.vocab_size < 2:
    raise ValueError(f"vocab_size={c.vocab_size}: must be >= 2 (token 0 is padding)")
  if c.seed < 0:
    raise ValueError(f"seed={c.seed}: must be non-negative")


def _check_recall(c: RecallConfig) -> None:
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


def _check_induction(c: TaskConfig) -> None:
  """Raises ValueError naming the first induction size that is out of range."""
  _check_common(c)
  if c.seq_len < 3:
    raise ValueError(f"seq_len={c.seq_len}: must be >= 3 to have one induction target")
  half = (c.seq_len + 1) // 2
  if half > c.vocab_size - 1:
    raise ValueError(
        f"vocab_size={c.vocab_size}: needs (seq_len+1)//2 = {half} distinct non-zero tokens"
    )


def _check_copy(c: TaskConfig) -> None:
  """Raises ValueError naming the first copy/reverse size that is out of range."""
  _check_common(c)
  if c.seq_len < 2:
    raise ValueError(f"seq_len={c.seq_len}: must be >= 2 (one token, separator, one answer)")


def _distinct(rng: np.random.Generator, n: int, k: int, count: int) -> np.ndarray:
  """Returns [n, k] ints, each row k distinct values from range(count) in random order."""
  if count <= 256:  # A vectorized permutation per row; its n * count floats stay small.
    return np.argsort(rng.random((n, count)), axis=1)[:, :k]
  # Large vocabularies would need n * count floats: draw row by row (tens of µs a row).
  return np.stack([rng.choice(count, size=k, replace=False) for _ in range(n)])


def associative_recall(rng: np.random.Generator, n: int, c: RecallConfig):
  """Returns MQAR streams [n, T+1] int32 and answer masks [n, T+1] bool.

  Array suffixes: B examples (n), P pairs, Q queries.
  """
  P, Q, T = c.num_pairs, c.num_queries, c.seq_len
  num_keys = (c.vocab_size - 1) // 2
  keys_BP = 1 + _distinct(rng, n, P, num_keys)
  values_BP = 1 + num_keys + _distinct(rng, n, P, c.vocab_size - 1 - num_keys)
  stream = np.zeros((n, T + 1), np.int32)
  stream[:, 0 : 2 * P : 2] = keys_BP
  stream[:, 1 : 2 * P : 2] = values_BP
  # Place Q blocks of two tokens among F free zeros: choosing which Q of the Q + F items are
  # blocks (sorted) picks a uniformly random arrangement; block i starts after i blocks.
  free = T + 1 - 2 * P - 2 * Q
  blocks_BQ = np.sort(_distinct(rng, n, Q, Q + free), axis=1)
  starts_BQ = 2 * P + blocks_BQ + np.arange(Q)
  which_BQ = _distinct(rng, n, Q, P)
  rows = np.arange(n)[:, None]
  stream[rows, starts_BQ] = np.take_along_axis(keys_BP, which_BQ, axis=1)
  stream[rows, starts_BQ + 1] = np.take_along_axis(values_BP, which_BQ, axis=1)
  answer = np.zeros((n, T + 1), bool)
  answer[rows, starts_BQ + 1] = True
  return stream, answer


def induction(rng: np.random.Generator, n: int, c: TaskConfig):
  """Returns induction streams [n, T+1] int32 and answer masks [n, T+1] bool.

  Array suffixes: B examples (n), H the longest copy, S the stream (T+1).
  """
  H = (c.seq_len + 1) // 2
  first_BH = 1 + _distinct(rng, n, H, c.vocab_size - 1)
  length_B1 = rng.integers(max(2, (c.seq_len + 1) // 4), H + 1, (n, 1))
  position_S = np.arange(c.seq_len + 1)
  in_first_BS = position_S < length_B1
  in_second_BS = ~in_first_BS & (position_S < 2 * length_B1)
  source_BS = np.where(in_first_BS, position_S, position_S - length_B1)
  tokens_BS = np.take_along_axis(first_BH, np.clip(source_BS, 0, H - 1), axis=1)
  stream = np.where(in_first_BS | in_second_BS, tokens_BS, 0).astype(np.int32)
  answer = in_second_BS & (position_S > length_B1)
  return stream, answer


def _copy_or_reverse(rng: np.random.Generator, n: int, c: TaskConfig, reverse: bool):
  """Returns copy (or reverse) streams [n, T+1] int32 and answer masks [n, T+1] bool."""
  half = c.seq_len // 2
  first = rng.integers(1, c.vocab_size, (n, half), dtype=np.int32)
  stream = np.zeros((n, c.seq_len + 1), np.int32)
  stream[:, :half] = first
  stream[:, half + 1 : 2 * half + 1] = first[:, ::-1] if reverse else first
  answer = np.zeros((n, c.seq_len + 1), bool)
  answer[:, half + 1 : 2 * half + 1] = True
  return stream, answer


def copy(rng: np.random.Generator, n: int, c: TaskConfig):
  """Returns copy streams [n, T+1] int32 and answer masks [n, T+1] bool."""
  return _copy_or_reverse(rng, n, c, reverse=False)


def reverse(rng: np.random.Generator, n: int, c: TaskConfig):
  """Returns reverse streams [n, T+1] int32 and answer masks [n, T+1] bool."""
  return _copy_or_reverse(rng, n, c, reverse=True)


class LocalDatasetInfo(tfds.core.DatasetInfo):
  """DatasetInfo that never looks for precomputed info on GCS."""

  def initialize_from_bucket(self) -> None:
    # TFDS 4.9.10 creates a temporary directory here before finding GCS disabled and never
    # removes it: one empty /tmp/tmp*tfds per unprepared builder. These data are never on GCS.
    pass


class _TaskBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared TFDS plumbing; subclasses set the config class, checks and generator."""

  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "MQAR queries drawn with replacement; induction copy length varies per example.",
      "1.2.0": "MQAR as in Zoology: distinct queries, answers hidden from the inputs.",
  }
  CONFIG_CLASS: type[TaskConfig] = TaskConfig
  # TFDS 4.9.10 derives `code_path` with `importlib_resources`, a backport it declares only for
  # Python < 3.9 (tensorflow/datasets#11212), so builders defined in a package fail without it.
  # The value it would compute is this file; TFDS only looks next to it for download checksums.
  code_path = tfds.core.Path(__file__)
  # Set by each task: raise ValueError for bad sizes; make (streams, answer masks) [n, T+1].
  check_sizes: Callable[[TaskConfig], None]
  make_streams: Callable[[np.random.Generator, int, TaskConfig], tuple[np.ndarray, np.ndarray]]
  # True: answers are 0 in the inputs, so a model must recall them rather than read earlier ones.
  hides_answers: bool = False

  def _info(self) -> tfds.core.DatasetInfo:
    T = self.builder_config.seq_len
    return LocalDatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "inputs": tfds.features.Tensor(shape=(T,), dtype=np.int32),
            "targets": tfds.features.Tensor(shape=(T,), dtype=np.int32),
            "weights": tfds.features.Tensor(shape=(T,), dtype=np.float32),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in _SPLITS}

  @classmethod
  def examples(cls, config: TaskConfig, split: str) -> dict[str, np.ndarray]:
    """Returns the features of one split, each [num_examples, seq_len]; see `generate`."""
    cls.check_sizes(config)
    if split not in _SPLITS:
      raise ValueError(f"split={split!r}: expected one of {_SPLITS}")
    n = config.num_train if split == "train" else config.num_validation
    rng = np.random.default_rng([config.seed, _SPLITS.index(split)])
    stream, answer = cls.make_streams(rng, n, config)
    inputs = np.where(answer[:, :-1], 0, stream[:, :-1]) if cls.hides_answers else stream[:, :-1]
    return {
        "inputs": inputs,
        "targets": stream[:, 1:],
        "weights": answer[:, 1:].astype(np.float32),
    }

  def _generate_examples(self, split: str):
    features = self.examples(self.builder_config, split)
    for i in range(len(features["inputs"])):
      yield i, {k: v[i] for k, v in features.items()}


class AttnAssociativeRecall(_TaskBuilder):
  """Multi-query associative recall (Zoology MQAR): recall the value paired with each queried key."""

  CONFIG_CLASS = RecallConfig
  BUILDER_CONFIGS = [RecallConfig.from_sizes()]
  check_sizes = staticmethod(_check_recall)
  make_streams = staticmethod(associative_recall)
  hides_answers = True


class AttnInduction(_TaskBuilder):
  """Induction: a random sequence of distinct tokens repeated; predict the repeat."""

  BUILDER_CONFIGS = [TaskConfig.from_sizes()]
  check_sizes = staticmethod(_check_induction)
  make_streams = staticmethod(induction)


class AttnCopy(_TaskBuilder):
  """Copy: a random sequence, separator 0, then the sequence again."""

  BUILDER_CONFIGS = [TaskConfig.from_sizes()]
  check_sizes = staticmethod(_check_copy)
  make_streams = staticmethod(copy)


class AttnReverse(_TaskBuilder):
  """Reverse: a random sequence, separator 0, then the sequence reversed."""

  BUILDER_CONFIGS = [TaskConfig.from_sizes()]
  check_sizes = staticmethod(_check_copy)
  make_streams = staticmethod(reverse)


# The names the runner's config uses (`data.task`).
TASKS: dict[str, type[_TaskBuilder]] = {
    "associative_recall": AttnAssociativeRecall,
    "induction": AttnInduction,
    "copy": AttnCopy,
    "reverse": AttnReverse,
}


def _builder_class(task: str) -> type[_TaskBuilder]:
  """Returns the builder class of a task name, or raises a one-line ValueError."""
  if task not in TASKS:
    raise ValueError(f"task={task!r}: unknown; expected one of {sorted(TASKS)}")
  return TASKS[task]


def make_config(task: str, **sizes: int) -> TaskConfig:
  """Returns the validated builder config of `task` with the given sizes.

  Args:
    task: one of `TASKS`, e.g. "associative_recall".
    **sizes: size fields of the task's config (see `TaskConfig`, `RecallConfig`); missing ones
      take the defaults.

  Returns:
    The config; raises a one-line ValueError naming the field if a size is out of range.
  """
  cls = _builder_class(task)
  config = cls.CONFIG_CLASS.from_sizes(**sizes)
  cls.check_sizes(config)
  return config


def generate(task: str, config: TaskConfig, split: str) -> dict[str, np.ndarray]:
  """Generates one split in memory, exactly as `prepare` stores it.

  Args:
    task: one of `TASKS`.
    config: sizes, e.g. from `make_config`.
    split: "train" or "validation".

  Returns:
    `inputs` int32, `targets` int32 and `weights` float32, each [num_examples, seq_len].
  """
  return _builder_class(task).examples(config, split)


def prepare(task: str, data_dir: str, **sizes: int) -> tfds.core.DatasetBuilder:
  """Returns the builder of `task` at these sizes, generating its data on first use.

  Idempotent: prepared data are reused. Safe for concurrent callers (e.g. every process of a
  multi-host job): TFDS writes into `incomplete.*` and renames it into place atomically; the
  losers of a race get an error from the rename (see lost_preparation_race), discard their copy,
  and here reload the winner's data.

  Args:
    task: one of `TASKS`, e.g. "associative_recall".
    data_dir: root directory of prepared data (never defaulted to the home directory).
    **sizes: size fields of the task's config, e.g. `vocab_size=64, seq_len=64, num_pairs=8`.

  Returns:
    The prepared `tfds.core.DatasetBuilder`; read it with `builder.as_data_source(split)`.
    `builder.builder_config` holds the sizes (e.g. `vocab_size` for the model).
  """
  cls = _builder_class(task)
  config = make_config(task, **sizes)
  # TFDS refuses a config object named like a predefined one (the default sizes are), also
  # when a pickled builder is rebuilt in a grain worker process; so name those by name.
  if any(c.name == config.name for c in cls.BUILDER_CONFIGS):
    config = config.name
  builder = cls(config=config, data_dir=data_dir, file_format="array_record")
  try:
    builder.download_and_prepare(file_format="array_record")
  except OSError as error:
    if not lost_preparation_race(error):
      raise
    # Another process finished first; its data are complete (renamed into place atomically).
    builder = cls(config=config, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      raise
  return builder


def lost_preparation_race(error: OSError) -> bool:
  """Whether TFDS's final rename failed because another process renamed its prepared copy into place first.

  The rename checks for the destination first (FileExistsError, with no errno); a process that renames
  between that check and the rename gets EEXIST or, on Linux, ENOTEMPTY, which Python raises as a plain
  OSError: two test processes preparing one dataset side by side hit that.
  """
  return isinstance(error, FileExistsError) or error.errno in (errno.EEXIST, errno.ENOTEMPTY)

"""Synthetic attention tasks as TFDS builders: associative recall, induction, copy, reverse.

Each task's stream of `seq_len + 1` tokens and its answer positions come from task_streams.py (the
token layouts are described there). Here each stream becomes next-token pairs, all with shape [T]
where T = `seq_len`:

  inputs   int32    stream[:-1] (in associative recall, with the answers replaced by 0)
  targets  int32    stream[1:]
  weights  float32  1.0 exactly where `targets` is an answer the loss and task accuracy count

The builders prepare as array_record without tensorflow (see local_tfds.py). Examples are stored in
generation order (`disable_shuffling=True`): they are i.i.d. already, and `source[i]` is then the i-th
generated example. Changing the generators changes the data stored under the same name: bump
`_TaskBuilder.VERSION` when you do.
"""

from typing import Callable

import numpy as np
import tensorflow_datasets as tfds

from experiments.data import task_streams
from experiments.data.local_tfds import LocalDatasetInfo, announce_preparation, lost_preparation_race, quiet_tfds
from experiments.data.task_streams import RecallConfig, TaskConfig

_SPLITS = ("train", "validation")


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
  # Set by each task: raise ValueError for bad sizes; make n (streams, answer masks), each [n, seq_len + 1].
  check_sizes: Callable[[TaskConfig], None]
  make_streams: Callable[[np.random.Generator, int, TaskConfig], tuple[np.ndarray, np.ndarray]]
  # True: answers are 0 in the inputs, so a model must recall them rather than read earlier ones.
  hides_answers: bool = False

  def _info(self) -> tfds.core.DatasetInfo:
    seq_len = self.builder_config.seq_len
    return LocalDatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "inputs": tfds.features.Tensor(shape=(seq_len,), dtype=np.int32),
            "targets": tfds.features.Tensor(shape=(seq_len,), dtype=np.int32),
            "weights": tfds.features.Tensor(shape=(seq_len,), dtype=np.float32),
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
    stream_BS, answer_BS = cls.make_streams(rng, n, config)
    inputs_BT = np.where(answer_BS[:, :-1], 0, stream_BS[:, :-1]) if cls.hides_answers else stream_BS[:, :-1]
    return {
        "inputs": inputs_BT,
        "targets": stream_BS[:, 1:],
        "weights": answer_BS[:, 1:].astype(np.float32),
    }

  def _generate_examples(self, split: str):
    features = self.examples(self.builder_config, split)
    for i in range(len(features["inputs"])):
      yield i, {k: v[i] for k, v in features.items()}


class AttnAssociativeRecall(_TaskBuilder):
  """Multi-query associative recall (Zoology MQAR): recall the value paired with each queried key."""

  CONFIG_CLASS = RecallConfig
  BUILDER_CONFIGS = [RecallConfig.from_sizes()]
  check_sizes = staticmethod(task_streams.check_recall)
  make_streams = staticmethod(task_streams.associative_recall)
  hides_answers = True


class AttnInduction(_TaskBuilder):
  """Induction: a random sequence of distinct tokens repeated; predict the repeat."""

  BUILDER_CONFIGS = [TaskConfig.from_sizes()]
  check_sizes = staticmethod(task_streams.check_induction)
  make_streams = staticmethod(task_streams.induction)


class AttnCopy(_TaskBuilder):
  """Copy: a random sequence, separator 0, then the sequence again."""

  BUILDER_CONFIGS = [TaskConfig.from_sizes()]
  check_sizes = staticmethod(task_streams.check_copy)
  make_streams = staticmethod(task_streams.copy)


class AttnReverse(_TaskBuilder):
  """Reverse: a random sequence, separator 0, then the sequence reversed."""

  BUILDER_CONFIGS = [TaskConfig.from_sizes()]
  check_sizes = staticmethod(task_streams.check_copy)
  make_streams = staticmethod(task_streams.reverse)


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
  with quiet_tfds():
    builder = cls(config=config, data_dir=data_dir, file_format="array_record")
    announce_preparation(builder)
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

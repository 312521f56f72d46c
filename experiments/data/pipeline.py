"""Grain input pipelines over prepared task data: endless shuffled training batches, padded eval batches.

Batches are dicts of numpy arrays `inputs` int32 [B, T], `targets` int32 [B, T] and `weights`
float32 [B, T], where B is the per-process batch size. Data come from a prepared TFDS builder
(`tasks.prepare`) read with `builder.as_data_source(split)`, or from any random-access source
(`len` and `[i]` returning such dicts of [T] arrays). `in_memory` reads a small split whole into an
`ArraySource`, whose batches are one numpy gather per feature instead of a decode per record; the runs of
built-in tasks read theirs that way (experiments/data/datasets.py). Batches and iterator states are the same
either way.

Both pipelines are `grain.MapDataset`s whose element k is batch k, read in one call from the indices of
its examples (for training, shuffled per epoch and sharded): pure functions of the step index. A training
iterator's whole state is the index of its next batch, so `get_state()` / `set_state()` restore
it exactly, whatever the number of read threads. Batches are read ahead by `read_threads`
background threads (`grain.ReadOptions`), so reading overlaps with the train step; worker
processes (`worker_count`, `mp_prefetch`) are optional and off by default.

Checkpointing the training iterator with orbax, next to the train state, uses the handler that
grain 0.2.18 registers with orbax (`grain.checkpoint.CheckpointHandler`):

    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator)))
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(iterator)))  # restores `iterator` in place

The handler writes `process_<i>-of-<n>.json` per process, with i and n from
`jax.process_index()` / `jax.process_count()`, so pass those as `process_index` /
`process_count` here. Restore into an iterator built with the same arguments (batch size, seed,
processes, workers); the state is only an index, so other arguments would silently resume
elsewhere in a different stream.
"""

import sys
import threading
from typing import Mapping, Sequence

import grain
from grain.experimental import index_shuffle
import numpy as np
import tensorflow_datasets as tfds

Batch = dict[str, np.ndarray]
Source = Sequence[Mapping[str, np.ndarray]]  # random access to examples of [T] arrays


# A split up to this size is read into memory once (`in_memory`): 20,000 recall examples of 32 tokens take 7.7 MB.
IN_MEMORY_MAX_BYTES = 1 << 30


class ArraySource:
  """A split held in memory as one [N, ...] array per feature: a batch is one gather per feature.

  Reading a batch from an array_record source decodes each of its records in Python, holding the GIL that the
  training loop needs; here it is a numpy take. Rows are the same as the source's, so batches are too.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1:
      raise ValueError(f"ArraySource: features of different lengths {sorted(lengths)}")
    self.arrays = dict(arrays)
    self._length = lengths.pop()

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: a[index] for k, a in self.arrays.items()}

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    return [self[i] for i in indices]

  def batch(self, indices: Sequence[int]) -> Batch:
    """The examples at `indices` stacked, index -1 being an all-zero example."""
    indices = np.asarray(indices, np.int64)
    padding = indices < 0
    batch = {k: a[np.where(padding, 0, indices)] for k, a in self.arrays.items()}
    if padding.any():
      for array in batch.values():
        array[padding] = 0
    return batch


def in_memory(source: Source, max_bytes: int = IN_MEMORY_MAX_BYTES, chunk: int = 4096) -> Source:
  """`source` read whole into an ArraySource when it holds at most `max_bytes`, else `source` itself.

  The size is estimated from the first example (a task's examples all have the same shapes).
  """
  if isinstance(source, ArraySource) or len(source) == 0:
    return source
  first = source[0]
  if sum(np.asarray(v).nbytes for v in first.values()) * len(source) > max_bytes:
    return source
  arrays = {k: np.empty((len(source),) + np.shape(v), np.asarray(v).dtype) for k, v in first.items()}
  for start in range(0, len(source), chunk):
    for offset, example in enumerate(_read_examples(source, range(start, min(start + chunk, len(source))))):
      for k, array in arrays.items():
        array[start + offset] = example[k]
  return ArraySource(arrays)


class InMemoryWhenIterated:
  """`source`, read into memory (`in_memory`) when the first iterator is built over it, not before.

  A run's data are opened by every command, but only training iterates over the training split: evaluating,
  sampling and inspecting a checkpoint do not wait for it to be read (about half a second for 20,000 recall
  examples). The read happens before the training loop starts, not in its first timed interval. Single
  examples are read from `source` itself until then.
  """

  def __init__(self, source: Source, max_bytes: int = IN_MEMORY_MAX_BYTES):
    self._source, self._max_bytes = source, max_bytes
    self._loaded: Source | None = None
    self._lock = threading.Lock()  # iterators may be built in several threads

  def load(self) -> Source:
    """The source in memory (or `source` itself, when it is larger than `max_bytes`), read once."""
    with self._lock:
      if self._loaded is None:
        self._loaded = in_memory(self._source, self._max_bytes)
      return self._loaded

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> Mapping[str, np.ndarray]:
    return (self._source if self._loaded is None else self._loaded)[index]


def _read_examples(source: Source, indices: Sequence[int]) -> list[Mapping[str, np.ndarray]]:
  # TFDS sources read a list of records in one call, faster than one by one (docs/performance.md).
  read_many = getattr(source, "__getitems__", None)
  return list(read_many(list(indices))) if read_many else [source[i] for i in indices]


def _source(data: tfds.core.DatasetBuilder | Source, split: str) -> Source:
  """Returns the random-access source of `split` of a builder, or `data` itself if it is one."""
  if isinstance(data, tfds.core.DatasetBuilder):
    return data.as_data_source(split=split)
  return data.load() if isinstance(data, InMemoryWhenIterated) else data


class _BatchReader:
  """Reads the examples at a batch of indices and stacks them; index -1 is an all-zero example."""

  def __init__(self, source: Source):
    self._source = source
    self._padding = {k: np.zeros_like(v) for k, v in source[0].items()}

  def __call__(self, indices: Sequence[int]) -> Batch:
    indices = list(indices)
    if isinstance(self._source, ArraySource):
      return self._source.batch(indices)
    examples = iter(_read_examples(self._source, [int(i) for i in indices if i >= 0]))
    rows = [next(examples) if i >= 0 else self._padding for i in indices]
    return {k: np.stack([row[k] for row in rows]) for k in self._padding}


class _EpochBatch:
  """Global batch k of shuffled epochs (this process's rows of it), from its index alone.

  Every epoch is a permutation of the split, cut into len // G batches of G examples (drop_remainder). The
  permutation is grain's `MapDataset.shuffle(seed)` of the range, epoch e with seed + e (the order this
  pipeline had when it was that shuffle, batched: earlier checkpoints resume to the same batches). Computed per
  batch with grain's `index_shuffle`, it costs G calls of microseconds; through the shuffled dataset each
  example's index went through grain's per-element machinery, several times that, a cost the training loop
  waited for on small steps (docs/performance.md).
  """

  _ROUNDS = 4  # as grain's ShuffleMapDataset

  def __init__(self, source: Source, seed: int, global_batch: int, rows: slice):
    if not 0 <= seed < 2**32:
      raise ValueError(f"seed={seed}: must be in [0, 2**32)")
    self._length, self._seed, self._global_batch, self._rows = len(source), seed, global_batch, rows
    self._per_epoch = self._length // global_batch
    self._read = _BatchReader(source)

  def __call__(self, k: int) -> Batch:
    epoch, in_epoch = divmod(k, self._per_epoch)
    seed, last = (self._seed + epoch) % 2**32, self._length - 1
    first = in_epoch * self._global_batch
    positions = range(first + self._rows.start, first + self._rows.stop)
    return self._read([index_shuffle(p, last, seed, self._ROUNDS) for p in positions])


def _check(batch_size: int, process_index: int, process_count: int, num_examples: int) -> None:
  """Raises a one-line ValueError naming the bad argument."""
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size}: must be positive")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index}: must be in [0, {process_count})")
  if num_examples < 1:
    raise ValueError("data: the split is empty")


def prefetch_for(steps_per_call: int) -> int:
  """Batches to read ahead for a loop that takes `steps_per_call` batches per compiled call: two calls' worth.

  With fewer, the reading threads cannot have a whole call's batches ready while the previous call computes,
  and the loop waits for the rest (8 for calls of 10 steps: 0.45 ms a batch on the README's main job, against
  0.05 with 16; docs/performance.md).
  """
  return max(8, 2 * steps_per_call)


def _read_options(read_threads: int, prefetch_batches: int) -> grain.ReadOptions:
  # Each element read ahead is a whole batch, so a few are enough; decoding holds the GIL, so
  # more threads than cores buy little.
  return grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)


def train_iterator(
    data: tfds.core.DatasetBuilder | Source,
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    split: str = "train",
    worker_count: int = 0,
    read_threads: int = 2,
    prefetch_batches: int = 8,
) -> grain.DatasetIterator:
  """Returns an endless iterator of shuffled training batches for this process.

  Every epoch is a fresh permutation of the whole split (same `seed` on every process), cut into
  global batches of `batch_size * process_count` examples with drop_remainder, so batches never
  mix epochs and the dropped examples differ from epoch to epoch. Process p reads rows
  [p * B, (p + 1) * B) of each global batch. So the global batch of every step is the same, row
  for row, whatever the number of processes: a multi-host run trains like one process with the
  same global batch. (Striding the permutation between processes and batching each share would
  not: when the split does not divide evenly, shares get different numbers of batches per epoch
  and the processes drift into different epochs.)

  Args:
    data: a prepared builder (see `tasks.prepare`) or a random-access source of examples.
    batch_size: per-process batch size B.
    seed: shuffle seed in [0, 2**32); must be equal on all processes.
    process_index: this process, usually `jax.process_index()`.
    process_count: number of processes, usually `jax.process_count()`.
    split: which split of a builder to read.
    worker_count: worker processes for `mp_prefetch`; 0 reads in this process. Workers need
      absl flags parsed (as under `app.run`) and should be stopped with `iterator.close()`.
    read_threads: background threads reading batches ahead.
    prefetch_batches: how many batches to read ahead.

  Returns:
    A `grain.DatasetIterator` of dicts of [B, T] arrays, with `get_state` / `set_state`.
  """
  source = _source(data, split)
  _check(batch_size, process_index, process_count, len(source))
  if len(source) < batch_size * process_count:
    raise ValueError(
        f"batch_size={batch_size}: the global batch of {process_count} x {batch_size} is larger"
        f" than the {len(source)} examples of the split"
    )
  # Element k is global batch k of an endless run of epochs, read in one call (_EpochBatch): all processes
  # batch the same global permutation and each reads only its rows of a global batch.
  epoch_batch = _EpochBatch(source, seed, batch_size * process_count,
                            slice(process_index * batch_size, (process_index + 1) * batch_size))
  batches = grain.MapDataset.range(sys.maxsize).map(epoch_batch)
  batches = batches.to_iter_dataset(_read_options(read_threads, prefetch_batches))
  if worker_count > 0:
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(batches)


def eval_batches(
    data: tfds.core.DatasetBuilder | Source,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    split: str = "validation",
    read_threads: int = 2,
    prefetch_batches: int = 8,
) -> grain.IterDataset:
  """Returns one ordered pass over this process's share of `split`, padded to full batches.

  Process p reads examples p, p + n, p + 2n, ... (n = process_count). No example is dropped:
  the last batches are filled with all-zero examples (weights 0, so they count nowhere), and
  every process gets the same number of batches, enough for the largest share, so collective
  eval steps stay in lockstep.

  Args:
    data: a prepared builder (see `tasks.prepare`) or a random-access source of examples.
    batch_size: per-process batch size B.
    process_index: this process, usually `jax.process_index()`.
    process_count: number of processes, usually `jax.process_count()`.
    split: which split of a builder to read.
    read_threads: background threads reading batches ahead.
    prefetch_batches: how many batches to read ahead.

  Returns:
    A re-iterable `grain.IterDataset`; each `iter()` is a new pass of
    ceil(ceil(num_examples / process_count) / B) dicts of [B, T] arrays.
  """
  source = _source(data, split)
  _check(batch_size, process_index, process_count, len(source))
  indices = grain.MapDataset.range(process_index, len(source), process_count)
  largest_share = -(-len(source) // process_count)
  num_batches = -(-largest_share // batch_size)
  num_padding = num_batches * batch_size - len(indices)
  if num_padding:
    padding = grain.MapDataset.source([-1] * num_padding)  # -1: all-zero example
    indices = grain.MapDataset.concatenate([indices, padding])
  batches = indices.batch(batch_size, batch_fn=_BatchReader(source))
  return batches.to_iter_dataset(_read_options(read_threads, prefetch_batches))

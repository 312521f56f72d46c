"""Tests of experiments/data/pipeline.py: shuffling, sharding, exact resumption, eval padding."""

from absl import flags
import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.data import pipeline, tasks

SIZES = dict(vocab_size=16, seq_len=16, num_train=40, num_validation=23, num_pairs=3, num_queries=2)


@pytest.fixture(scope="module")
def builder(tfds_data_dir):
  return tasks.prepare("associative_recall", tfds_data_dir, **SIZES)


def _indexed_source(n: int, seq_len: int = 4) -> list[dict[str, np.ndarray]]:
  """A source whose example i has inputs all equal to i + 1, so batches show what was read."""
  return [{"inputs": np.full(seq_len, i + 1, np.int32), "targets": np.zeros(seq_len, np.int32),
           "weights": np.ones(seq_len, np.float32)} for i in range(n)]


def _ids(batch) -> list[int]:
  """The source indices of the rows of a batch of `_indexed_source` (-1 for padding)."""
  return (batch["inputs"][:, 0] - 1).tolist()


def _take(iterator, n: int) -> list[dict[str, np.ndarray]]:
  return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_train_batches_from_a_builder(builder):
  batch = next(pipeline.train_iterator(builder, batch_size=8, seed=0))
  assert set(batch) == {"inputs", "targets", "weights"}
  assert batch["inputs"].shape == batch["targets"].shape == batch["weights"].shape == (8, 16)
  assert batch["inputs"].dtype == np.int32 and batch["weights"].dtype == np.float32
  np.testing.assert_array_equal(batch["weights"].sum(1), 2)  # two queries per example


def test_each_epoch_is_a_new_permutation():
  iterator = pipeline.train_iterator(_indexed_source(12), batch_size=4, seed=3)
  epochs = [sum((_ids(b) for b in _take(iterator, 3)), []) for _ in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(12))
  assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(12))
  other_seed = pipeline.train_iterator(_indexed_source(12), batch_size=4, seed=4)
  assert sum((_ids(b) for b in _take(other_seed, 3)), []) != epochs[0]


@pytest.mark.parametrize("process_count", [1, 2])
def test_the_order_is_grains_shuffle_batched_per_epoch(process_count):
  """The batches are grain's own MapDataset.shuffle of the range, batched per epoch with drop_remainder and
  repeated (what this pipeline was before it computed a batch's indices itself): earlier runs' checkpoints resume
  to the same batches. Three epochs, seeds near 2**32 (the per-epoch seed wraps), a remainder dropped."""
  n, batch = 27, 4
  for seed in (0, 11, 2**32 - 2):
    reference = grain.MapDataset.range(n).shuffle(seed=seed).batch(batch * process_count, drop_remainder=True)
    reference = reference.repeat(None)
    iterators = [pipeline.train_iterator(_indexed_source(n), batch_size=batch, seed=seed, process_index=p,
                                         process_count=process_count) for p in range(process_count)]
    for k in range(3 * (n // (batch * process_count))):
      rows = [_ids(next(it)) for it in iterators]
      assert sum(rows, []) == [int(i) for i in reference[k]], (seed, k)


def test_drop_remainder_keeps_batches_within_an_epoch():
  iterator = pipeline.train_iterator(_indexed_source(10), batch_size=4, seed=0)
  for _ in range(4):  # two batches per epoch; the 2 left over are dropped, never mixed in
    first, second = _ids(next(iterator)), _ids(next(iterator))
    assert len(set(first + second)) == 8


@pytest.mark.parametrize("n", [24, 25])
def test_processes_partition_each_epoch(n):
  shards = [pipeline.train_iterator(_indexed_source(n), batch_size=4, seed=7, process_index=p,
                                    process_count=2) for p in range(2)]
  for _ in range(2):  # two epochs, each reshuffled
    seen = [sum((_ids(b) for b in _take(shard, 3)), []) for shard in shards]
    assert not set(seen[0]) & set(seen[1])
    if n == 24:
      assert sorted(seen[0] + seen[1]) == list(range(n))


def test_resumes_exactly_from_saved_state(builder):
  iterator = pipeline.train_iterator(builder, batch_size=8, seed=1)
  _take(iterator, 7)  # crosses an epoch boundary (5 batches per epoch)
  state = iterator.get_state()
  expected = _take(iterator, 6)
  fresh = pipeline.train_iterator(builder, batch_size=8, seed=1)
  fresh.set_state(state)
  _assert_same_batches(_take(fresh, 6), expected)


def test_resumes_exactly_through_orbax(builder, tmp_path):
  iterator = pipeline.train_iterator(builder, batch_size=8, seed=2)
  _take(iterator, 3)
  with ocp.CheckpointManager(tmp_path) as manager:
    manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
  expected = _take(iterator, 4)
  fresh = pipeline.train_iterator(builder, batch_size=8, seed=2)
  with ocp.CheckpointManager(tmp_path) as manager:
    manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  _assert_same_batches(_take(fresh, 4), expected)


def test_worker_processes_give_the_same_batches(builder):
  """mp_prefetch pickles the TFDS source into a worker; the batches must not change."""
  # grain's workers read absl flags, which app.run parses in the real runner.
  parsed = flags.FLAGS.is_parsed()
  flags.FLAGS.mark_as_parsed()
  try:
    with_workers = pipeline.train_iterator(builder, batch_size=8, seed=5, worker_count=1)
    batches = _take(with_workers, 6)
    state = with_workers.get_state()
    with_workers.close()
  finally:
    if not parsed:
      flags.FLAGS.unparse_flags()
  in_process = pipeline.train_iterator(builder, batch_size=8, seed=5)
  _assert_same_batches(batches, _take(in_process, 6))
  assert state  # the worker pipeline's state is checkpointable too


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_covers_every_example_once_and_pads_with_zero_weights(process_count):
  n, batch_size = 23, 5
  source = _indexed_source(n)
  passes = [list(pipeline.eval_batches(source, batch_size=batch_size, process_index=p,
                                       process_count=process_count))
            for p in range(process_count)]
  assert len({len(batches) for batches in passes}) == 1  # all processes step together
  real = []
  for p, batches in enumerate(passes):
    ids = sum((_ids(b) for b in batches), [])
    weights = np.concatenate([b["weights"] for b in batches])
    mine = [i for i in ids if i >= 0]
    assert mine == list(range(p, n, process_count))  # ordered, strided
    assert ids[len(mine):] == [-1] * (len(ids) - len(mine))  # padding only at the end
    assert np.all(weights[len(mine):] == 0) and np.all(weights[: len(mine)] == 1)
    real += mine
  assert sorted(real) == list(range(n))


def test_eval_from_a_builder_is_re_iterable(builder):
  batches = pipeline.eval_batches(builder, batch_size=8)
  first, second = list(batches), list(batches)
  assert len(first) == 3  # 23 examples: 8 + 8 + 7 and one padding row
  _assert_same_batches(first, second)
  assert first[-1]["weights"][-1].sum() == 0 and first[-1]["weights"][-2].sum() == 2
  np.testing.assert_array_equal(first[-1]["inputs"][-1], 0)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=4, process_index=2, process_count=2), "process_index"),
        (dict(batch_size=7, process_count=2), "batch_size"),  # more than a shard of 12
    ],
)
def test_bad_arguments_raise(kwargs, field):
  with pytest.raises(ValueError, match=f"^{field}"):
    pipeline.train_iterator(_indexed_source(12), seed=0, **kwargs)


@pytest.mark.parametrize("process_index,process_count", [(0, 1), (1, 2)])
def test_in_memory_train_batches_equal_the_prepared_sources(builder, process_index, process_count):
  """The arrays give the array_record source's batches row for row, across epochs, and resume the same way."""
  arguments = dict(batch_size=4, seed=9, process_index=process_index, process_count=process_count)
  from_records = pipeline.train_iterator(builder.as_data_source("train"), **arguments)
  held = pipeline.in_memory(builder.as_data_source("train"))
  assert isinstance(held, pipeline.ArraySource) and len(held) == SIZES["num_train"]
  from_arrays = pipeline.train_iterator(held, **arguments)
  _assert_same_batches(_take(from_arrays, 12), _take(from_records, 12))  # 12 x 8 > 40: three epochs
  for x, y in zip(_take(from_arrays, 1)[0].values(), _take(from_records, 1)[0].values()):
    assert x.dtype == y.dtype
  state = from_arrays.get_state()
  expected = _take(from_arrays, 5)
  resumed = pipeline.train_iterator(builder.as_data_source("train"), **arguments)
  resumed.set_state(state)  # a checkpoint of an in-memory run resumes on the records, and the other way
  _assert_same_batches(_take(resumed, 5), expected)


@pytest.mark.parametrize("process_count", [1, 2])
def test_in_memory_eval_batches_equal_the_prepared_sources_padding_included(builder, process_count):
  for process_index in range(process_count):
    arguments = dict(batch_size=8, process_index=process_index, process_count=process_count)
    from_records = list(pipeline.eval_batches(builder.as_data_source("validation"), **arguments))
    from_arrays = list(pipeline.eval_batches(pipeline.in_memory(builder.as_data_source("validation")), **arguments))
    assert from_records[-1]["weights"][-1].sum() == 0  # 23 examples: the last batch is padded
    _assert_same_batches(from_arrays, from_records)


def test_in_memory_keeps_a_source_too_large_for_its_limit(builder):
  source = builder.as_data_source("train")
  one_example = sum(v.nbytes for v in source[0].values())
  assert pipeline.in_memory(source, max_bytes=one_example * len(source) - 1) is source
  assert isinstance(pipeline.in_memory(source, max_bytes=one_example * len(source)), pipeline.ArraySource)


class _CountingSource:
  """A list source that counts the examples read from it."""

  def __init__(self, examples):
    self.examples, self.reads = examples, 0

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, index):
    self.reads += 1
    return self.examples[index]


@pytest.mark.parametrize("max_bytes", [pipeline.IN_MEMORY_MAX_BYTES, 1])
def test_the_training_split_is_read_into_memory_when_an_iterator_is_built(max_bytes):
  """Opening the data reads single examples only; building the training iterator reads the split once (into
  arrays, or, too large for the limit, not at all), and the batches are the source's."""
  counting = _CountingSource(_indexed_source(30))
  lazy = pipeline.InMemoryWhenIterated(counting, max_bytes=max_bytes)
  assert len(lazy) == 30 and lazy[3]["inputs"][0] == 4
  assert counting.reads == 1, "the split was read before an iterator was built over it"
  iterator = pipeline.train_iterator(lazy, batch_size=4, seed=5)
  if max_bytes > 1:
    assert counting.reads == 1 + 1 + 30  # the first example (its size), then every example once
  expected = pipeline.train_iterator(_indexed_source(30), batch_size=4, seed=5)
  _assert_same_batches(_take(iterator, 16), _take(expected, 16))
  again = pipeline.train_iterator(lazy, batch_size=4, seed=5)
  _assert_same_batches(_take(again, 3), _take(pipeline.train_iterator(_indexed_source(30), batch_size=4, seed=5), 3))
  if max_bytes > 1:
    assert counting.reads == 1 + 1 + 30, "the split was read again"

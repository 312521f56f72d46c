"""The data of a run, whatever its kind: a built-in task or tokenized text, as random-access sources."""

from __future__ import annotations

import dataclasses

from ml_collections import ConfigDict

from experiments.data import pipeline, tasks, text, tokenizers

TEXT = "text"  # data.task of language modelling on a corpus


@dataclasses.dataclass(frozen=True)
class Data:
  """Training and evaluation examples of a run, and what the model must know of them."""

  train: pipeline.Source
  validation: pipeline.Source
  vocab_size: int  # tokens the model must embed
  tokenizer: tokenizers.Tokenizer | None  # None for built-in tasks (their tokens are ids)


def task_sizes(data: ConfigDict) -> dict[str, int]:
  """The size fields of a built-in data.task, taken from the `data` section."""
  fields = tasks.TASKS[data.task].CONFIG_CLASS.size_fields() if data.task in tasks.TASKS else ()
  return {name: data[name] for name in fields if name in data}


def known_vocab_size(data: ConfigDict) -> int | None:
  """The vocabulary the data will have, when the config alone says it (None: the char and gpt2 tokenizers')."""
  if data.task != TEXT or data.tokenizer == "sentencepiece":
    return data.vocab_size
  return 256 if data.tokenizer == "byte" else None


def load(data: ConfigDict, data_dir: str) -> Data:
  """Prepares (on first use) and opens the data a `data` config section describes.

  Raises:
    ValueError: one line naming the data field at fault.
  """
  if data.task != TEXT:
    builder = tasks.prepare(data.task, data_dir, **task_sizes(data))
    # A task's splits are small (experiments/data/pipeline.py, in_memory): batches are then gathers, not decodes.
    # The training split is read when training iterates over it: the other commands open the data too.
    return Data(train=pipeline.InMemoryWhenIterated(builder.as_data_source("train")),
                validation=pipeline.in_memory(builder.as_data_source("validation")),
                vocab_size=builder.builder_config.vocab_size, tokenizer=None)
  builder = text.prepare_builder(data.dataset, data_dir, text_files=data.text_files,
                                 validation_fraction=data.validation_fraction, manual_dir=data.manual_dir)
  for key in ("train_split", "eval_split"):
    missing = [name for name in data[key].split("+") if name not in builder.info.splits]
    if missing:
      raise ValueError(f"{key}={data[key]!r}: {builder.name} has no split {missing[0]!r}; it has "
                       f"{', '.join(sorted(builder.info.splits))}")
  if data.text_feature not in builder.info.features:
    raise ValueError(f"text_feature={data.text_feature!r}: {builder.name} has the features "
                     f"{', '.join(sorted(builder.info.features))}")
  tokenized = text.tokenize(builder, data_dir, [data.train_split, data.eval_split], tokenizer=data.tokenizer,
                            vocab_size=data.vocab_size, sentencepiece_type=data.sentencepiece_type,
                            train_split=data.train_split, feature=data.text_feature,
                            tokenizer_dir=data.get("tokenizer_dir", ""))  # absent in older runs' configs
  return Data(train=text.RandomWindows(tokenized.streams[data.train_split], data.seq_len),
              validation=text.SequentialWindows(tokenized.streams[data.eval_split], data.seq_len, tokenized.tokenizer),
              vocab_size=tokenized.tokenizer.vocab_size, tokenizer=tokenized.tokenizer)

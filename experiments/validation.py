"""Checks a whole run config before anything is compiled or written: one clear line per problem."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
from ml_collections import ConfigDict

from experiments import population, sharding, targets
from experiments.data import byte_pair, datasets, tasks, text, tokenizers
from experiments.inspection import parsing
from experiments.optimizer import NO_DECAY_KINDS, SCHEDULES
from transformer import ModelConfig, TransformerLM, model_config_from


class ConfigError(ValueError):
  """The config is invalid; the message has one line per problem."""


# Which config key sets the size of each logical parameter axis, for sharding messages.
AXIS_KEYS = {"heads": "model.num_heads", "kv_heads": "model.num_kv_heads", "mlp": "model.mlp_dim",
             "vocab": "model.vocab_size", "embed": "model.d_model", "head_dim": "model.head_dim",
             "value_rank": "model.value_rank", "layers": "model.num_layers"}
# What every evaluation computes (steps.summarize_eval), and what only text adds: its batches carry the characters
# and bytes behind each token.
TASK_EVAL_METRICS = ("eval/loss", "eval/accuracy", "eval/sequence_accuracy", "eval/perplexity")
EVAL_METRICS = (*TASK_EVAL_METRICS, "eval/bits_per_char", "eval/bits_per_byte")
# A stand-in vocabulary for checking the model before the char tokenizer has read the text.
_UNKNOWN_VOCAB = 2


def resolve(config: ConfigDict, data_vocab_size: int | None = None) -> ConfigDict:
  """A copy with the derived values filled in: model.vocab_size and model.max_len from the data when 0.

  Args:
    config: the run config.
    data_vocab_size: the vocabulary of the loaded data; needed for text with the char tokenizer,
      whose vocabulary only reading the text tells.
  """
  config = ConfigDict(config.to_dict())
  if config.model.vocab_size == 0:
    vocab = data_vocab_size if data_vocab_size is not None else datasets.known_vocab_size(config.data)
    config.model.vocab_size = vocab or 0
  if config.model.max_len == 0:
    config.model.max_len = config.data.seq_len
  return config


def _text_errors(d: ConfigDict) -> list[str]:
  """Problems of the text fields of a `data` section whose task is text."""
  errors = []
  if d.dataset == text.TEXT_FILES:
    if not d.text_files:
      errors.append(f"data.text_files is empty: with data.dataset={text.TEXT_FILES!r} give a file, folder or glob")
    else:
      try:
        text.expand_text_files(d.text_files)
      except ValueError as error:
        errors.append(f"data.{error}")
    if not 0 < d.validation_fraction < 1:
      errors.append(f"data.validation_fraction={d.validation_fraction} must be in (0, 1)")
  elif not d.dataset:
    errors.append("data.dataset is empty: name a TFDS catalog dataset (e.g. tiny_shakespeare) or "
                  f"{text.TEXT_FILES!r}")
  if d.manual_dir and not os.path.isdir(os.path.expanduser(d.manual_dir)):
    errors.append(f"data.manual_dir={d.manual_dir!r} is not a folder: give the folder holding the files "
                  f"TFDS would download, or '' to download")
  if d.tokenizer not in tokenizers.KINDS:
    errors.append(f"data.tokenizer={d.tokenizer!r} is unknown: expected one of {', '.join(tokenizers.KINDS)}")
  elif d.tokenizer == "sentencepiece":
    if d.sentencepiece_type not in tokenizers.SENTENCEPIECE_TYPES:
      errors.append(f"data.sentencepiece_type={d.sentencepiece_type!r} is unknown: expected one of "
                    f"{', '.join(tokenizers.SENTENCEPIECE_TYPES)}")
    # Byte fallback takes 256 pieces, plus newline and the control pieces.
    if d.vocab_size < 300:
      errors.append(f"data.vocab_size={d.vocab_size}: SentencePiece needs at least 300 (256 byte pieces and "
                    f"more); try 1024")
  elif d.vocab_size != 0:
    errors.append(f"data.vocab_size={d.vocab_size}: the {d.tokenizer} tokenizer sets the vocabulary itself; set 0")
  errors.extend(_tokenizer_dir_errors(d))
  for key in ("train_split", "eval_split", "text_feature"):
    if not d[key]:
      errors.append(f"data.{key} is empty")
  if d.seq_len < 1:
    errors.append(f"data.seq_len={d.seq_len} must be >= 1")
  return errors


def eval_metrics(d: ConfigDict) -> tuple[str, ...]:
  """The eval metrics a run with this `data` section produces."""
  return EVAL_METRICS if d.task == datasets.TEXT else TASK_EVAL_METRICS


def _stop_when_errors(t: ConfigDict, d: ConfigDict) -> list[str]:
  """Problems of train.stop_when: its syntax, a metric this run's evaluation lacks, no evaluation to check it at."""
  try:
    target = targets.parse_target(t.stop_when)
  except ValueError as error:
    return [f"train.stop_when={t.stop_when!r}: {error}"]
  if target is None:
    return []
  errors = []
  produced = eval_metrics(d)
  if target.metric not in produced:
    reason = (f"{target.metric} is computed on text only (data.task={d.task!r})" if target.metric in EVAL_METRICS
              else f"{target.metric!r} is not an eval metric")
    errors.append(f"train.stop_when={t.stop_when!r}: {reason}: expected one of {', '.join(produced)}")
  if t.eval_every == 0:
    errors.append(f"train.stop_when={t.stop_when!r} needs evaluations during the run, but train.eval_every=0 "
                  f"evaluates only at the end: set train.eval_every to the steps between checks (e.g. 100)")
  return errors


def _tokenizer_dir_errors(d: ConfigDict) -> list[str]:
  """data.tokenizer_dir: the gpt2 tokenizer's folder with both its files, and no folder for the other kinds."""
  folder = d.get("tokenizer_dir", "")  # absent in the configs of runs older than the key
  if d.tokenizer != "gpt2":
    return [f"data.tokenizer_dir={folder!r}: only data.tokenizer='gpt2' reads a folder; set ''"] if folder else []
  if not folder:
    return ["data.tokenizer_dir is empty: the gpt2 tokenizer is read from a folder, e.g. the tokenizer/ of a "
            "workdir written by experiments.import_hf"]
  missing = [name for name in (byte_pair.VOCAB_FILE, byte_pair.MERGES_FILE)
             if not os.path.isfile(os.path.join(os.path.expanduser(folder), name))]
  if missing:
    return [f"data.tokenizer_dir={folder!r} has no {missing[0]}: give a folder with GPT-2's vocab.json and "
            f"merges.txt, e.g. the tokenizer/ of a workdir written by experiments.import_hf"]
  return []


def model_config(config: ConfigDict) -> ModelConfig:
  """The ModelConfig of a run config (after `resolve`)."""
  return model_config_from(resolve(config).model)


def validate(config: ConfigDict, device_count: int | None = None, process_count: int | None = None) -> list[str]:
  """Returns every problem of the config as one line each (empty when the config is good).

  Only root causes: a check of a value derived from one already reported (a size the data section sets, a
  bound another key gives, a batch size the eval takes from training) is skipped, so one mistake is one line.

  Args:
    config: the run config.
    device_count: devices of the whole job (default: jax.device_count()).
    process_count: processes of the job (default: jax.process_count()).
  """
  device_count = jax.device_count() if device_count is None else device_count
  process_count = jax.process_count() if process_count is None else process_count
  errors: list[str] = []

  def check(ok: bool, message: str) -> bool:
    if not ok:
      errors.append(message)
    return ok

  d, o, t, ck, e = config.data, config.optimizer, config.train, config.checkpoint, config.eval
  if d.task == datasets.TEXT:
    errors.extend(_text_errors(d))
  elif d.task not in tasks.TASKS:
    errors.append(f"data.task={d.task!r} is unknown: expected one of {', '.join([*tasks.TASKS, datasets.TEXT])}")
  else:
    try:
      tasks.make_config(d.task, **datasets.task_sizes(d))
    except ValueError as error:
      errors.append(f"data.{error}")
  known_vocab = datasets.known_vocab_size(d)
  # Sizes the model takes from the data are checked with the data: a bad one gets a stand-in here.
  resolved = resolve(config, max(known_vocab or 0, _UNKNOWN_VOCAB))
  if config.model.max_len == 0:
    resolved.model.max_len = max(d.seq_len, 1)
  model = None
  try:
    model = model_config_from(resolved.model)
  except ValueError as error:
    errors.append(str(error))
  if model is not None:
    check(known_vocab is None or model.vocab_size >= known_vocab,
          f"model.vocab_size={model.vocab_size} is smaller than the data's {known_vocab} tokens: "
          f"set 0 to follow the data")
    check(model.max_len >= d.seq_len,
          f"data.seq_len={d.seq_len} is longer than model.max_len={model.max_len} (the position table): "
          f"raise model.max_len or set it to 0")

  learning_rate_ok = check(o.learning_rate > 0, f"optimizer.learning_rate={o.learning_rate} must be positive")
  check(o.schedule in SCHEDULES,
        f"optimizer.schedule={o.schedule!r} is unknown: expected one of {', '.join(SCHEDULES)}")
  check(o.warmup_steps >= 0, f"optimizer.warmup_steps={o.warmup_steps} must be >= 0")
  check(o.decay_steps >= 0, f"optimizer.decay_steps={o.decay_steps} must be >= 0 (0 = train.steps)")
  decay_steps = o.decay_steps or t.steps
  check(o.warmup_steps < 0 or decay_steps < 1 or o.warmup_steps <= decay_steps,
        f"optimizer.warmup_steps={o.warmup_steps} exceeds the decay steps {decay_steps}")
  check(0 <= o.end_learning_rate and (not learning_rate_ok or o.end_learning_rate <= o.learning_rate),
        f"optimizer.end_learning_rate={o.end_learning_rate} must be in [0, learning_rate={o.learning_rate}]")
  check(0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"optimizer.b1={o.b1}, b2={o.b2}: Adam betas must be in [0, 1)")
  check(o.eps > 0, f"optimizer.eps={o.eps} must be positive")
  check(o.weight_decay >= 0, f"optimizer.weight_decay={o.weight_decay} must be >= 0")
  check(o.grad_clip >= 0, f"optimizer.grad_clip={o.grad_clip} must be >= 0 (0 = off)")
  check(o.accumulation_steps >= 1, f"optimizer.accumulation_steps={o.accumulation_steps} must be >= 1")
  kinds = [k.strip() for k in o.no_decay.split(",") if k.strip()]
  unknown = [k for k in kinds if k not in NO_DECAY_KINDS]
  check(not unknown, f"optimizer.no_decay names unknown kind {unknown[0] if unknown else ''!r}: "
                     f"expected a comma list of {', '.join(NO_DECAY_KINDS)}")

  check(t.steps >= 1, f"train.steps={t.steps} must be >= 1")
  check(t.batch_size >= 1, f"train.batch_size={t.batch_size} must be >= 1")
  check(t.log_every >= 1, f"train.log_every={t.log_every} must be >= 1")
  check(t.steps_per_call >= 1,
        f"train.steps_per_call={t.steps_per_call} must be >= 1 (1 = one step per compiled call)")
  check(t.eval_every >= 0, f"train.eval_every={t.eval_every} must be >= 0 (0 = only at the end)")
  check(t.checkpoint_every >= 0, f"train.checkpoint_every={t.checkpoint_every} must be >= 0 (0 = only at the end)")
  check(0 <= t.seed < 2**32, f"train.seed={t.seed} must be in [0, 2**32)")
  errors.extend(_stop_when_errors(t, d))

  mesh_shape = None
  try:
    mesh_shape = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(config.mesh, device_count)))
  except ValueError as error:
    errors.append(str(error))
  rules = None
  try:
    rules = sharding.parse_rules(config.mesh.rules)
  except ValueError as error:
    errors.append(str(error))
  if mesh_shape is not None:
    batch_ways = mesh_shape["data"] * mesh_shape["fsdp"]
    micro = t.batch_size // max(o.accumulation_steps, 1)
    # Each division is checked only on a batch the checks before it passed (a bad size is reported above).
    batch_ok = t.batch_size >= 1 and o.accumulation_steps >= 1 and check(
        t.batch_size % o.accumulation_steps == 0,
        f"train.batch_size={t.batch_size} is not divisible by optimizer.accumulation_steps={o.accumulation_steps}")
    if batch_ok:
      divides_mesh = check(micro % batch_ways == 0,
                           f"train.batch_size={t.batch_size} (micro-batch {micro}) is not divisible by the "
                           f"data-parallel size {batch_ways} (mesh.data x mesh.fsdp)")
      divides_processes = check(t.batch_size % process_count == 0,
                                f"train.batch_size={t.batch_size} is not divisible by the {process_count} processes")
      batch_ok = divides_mesh and divides_processes
    # Every process reads its own batch rows, so the devices that share rows (one tensor group, the
    # innermost mesh axis) must all belong to one process; otherwise training is silently wrong.
    local_devices = device_count // max(process_count, 1)
    check(process_count == 1 or local_devices % mesh_shape["tensor"] == 0,
          f"mesh.tensor={mesh_shape['tensor']} spans processes ({local_devices} devices each): a tensor group must "
          f"lie within one process; shrink mesh.tensor or use data/fsdp across processes")
    eval_batch = e.batch_size or t.batch_size
    check(e.batch_size >= 0, f"eval.batch_size={e.batch_size} must be >= 0 (0 = train.batch_size)")
    # An eval batch of 0 takes the train batch size: one already found wrong is not reported again here.
    eval_ok = e.batch_size > 0 or (e.batch_size == 0 and batch_ok)
    check(not eval_ok or (eval_batch % batch_ways == 0 and eval_batch % process_count == 0),
          f"eval.batch_size={eval_batch} is not divisible by the data-parallel size {batch_ways} and "
          f"the {process_count} processes")
    if model is not None and rules is not None:
      errors.extend(_sharding_errors(model, mesh_shape, dict(rules)))
  check(e.max_batches >= 0, f"eval.max_batches={e.max_batches} must be >= 0 (0 = the whole split)")

  check(ck.keep >= 1, f"checkpoint.keep={ck.keep} must be >= 1")
  check(ck.keep_best >= 0, f"checkpoint.keep_best={ck.keep_best} must be >= 0")
  check(ck.best_mode in ("min", "max"), f"checkpoint.best_mode={ck.best_mode!r} must be 'min' or 'max'")
  check(ck.best_metric in eval_metrics(d),
        f"checkpoint.best_metric={ck.best_metric!r} is not an eval metric of this run (data.task={d.task!r}): "
        f"expected one of {', '.join(eval_metrics(d))}")
  if ck.restore_from:
    check(os.path.isdir(os.path.join(ck.restore_from, "checkpoints"))
          or population.population_of(ck.restore_from) is not None,
          f"checkpoint.restore_from={ck.restore_from!r} has no checkpoints/ folder: give a training run's workdir "
          f"(or a population member's directory)")
  if "inspect" in config:
    errors.extend(_inspect_errors(config.inspect, model))
  population_errors = population.errors(config)
  errors.extend(population_errors)
  if not population_errors and population.size_of(config) > 1:
    errors.extend(_member_errors(config, errors, mesh_shape, rules, device_count, process_count))
  return errors


def _member_errors(config: ConfigDict, errors: list[str], mesh_shape: dict[str, int] | None, rules: Any,
                   device_count: int, process_count: int) -> list[str]:
  """Problems of a population beyond its section: one that spans processes or that the mesh does not divide, and a
  member's own value (a learning rate of 0) the shared config does not have."""
  size = population.size_of(config)
  problems = []
  if process_count > 1:
    problems.append(f"population.size={size}: a population trains in one process, not {process_count}; run it on "
                    f"one host, or train its members as separate runs")
  if mesh_shape is not None and rules is not None:
    axes = sharding.member_axes(rules)
    ways = 1
    for axis in axes:
      ways *= mesh_shape[axis]
    if size % ways:
      problems.append(f"population.size={size} is not divisible by mesh {'x'.join(axes)}={ways}, which the rule "
                      f"'{sharding.POPULATION}=' in mesh.rules splits the members over")
  for index in range(size):
    member = population.member_config(config, index)
    problems += [f"population member {index}: {line}" for line in validate(member, device_count, process_count)
                 if line not in errors]
  return problems


def _inspect_errors(section: ConfigDict, model: ModelConfig | None) -> list[str]:
  """Problems of the probe settings: prompts that are not text, layers or heads the model does not have."""
  errors = []
  try:
    parsing.prompt_list(section.probe_prompts)
  except ValueError as error:
    errors.append(str(error))
  default_probe = section.get("default_probe", False)
  if not isinstance(default_probe, bool):
    errors.append(f"inspect.default_probe={default_probe!r} must be True or False")
  for name, count in (("layers", model.num_layers if model else None), ("heads", model.num_heads if model else None)):
    value = section[name]
    if not isinstance(value, str):
      errors.append(f"inspect.{name}={value!r} must be a comma list of indices such as \"0,1\" (\"\" = all)")
    elif count is not None:
      try:
        parsing.parse_indices(value, count, f"inspect.{name}")
      except ValueError as error:
        errors.append(str(error))
  return errors


def _sharding_errors(model: ModelConfig, mesh_shape: dict[str, int], rules: dict) -> list[str]:
  """Parameter axes whose size the mesh axes they are mapped to do not divide."""
  if not model.scan_layers:
    # Unrolled blocks all have the same parameters: one is enough (tracing GPT-3's 96 is slow).
    model = dataclasses.replace(model, num_layers=1)
  abstract = jax.eval_shape(lambda: TransformerLM(model).init(jax.random.key(0), jax.numpy.zeros((1, 1), int)))
  errors = {}
  for boxed in jax.tree.leaves(abstract["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)):
    if not isinstance(boxed, nn.LogicallyPartitioned):
      continue
    for size, name in zip(boxed.value.shape, boxed.names):
      target = rules.get(name)
      if target is None:
        continue
      axes = (target,) if isinstance(target, str) else target
      ways = 1
      for axis in axes:
        ways *= mesh_shape[axis]
      if size % ways and name not in errors:
        key = AXIS_KEYS.get(name, name)
        errors[name] = (f"{key}: the '{name}' axis has size {size}, which mesh {'x'.join(axes)}={ways} does not "
                        f"divide; change the size, the mesh, or the rule '{name}=' in mesh.rules")
  return list(errors.values())

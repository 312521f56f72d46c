"""What a run wrote for TensorBoard, read back with TensorBoard's own event reader (no TensorFlow): the hparams
the HParams dashboard shows, the config text, images and scalars."""

from __future__ import annotations

import os
from typing import Any

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import api_pb2, metadata

CONFIG_TEXT_TAG = "config/text_summary"  # tensorboardX's tag for add_text("config", ...)


def read_run(workdir: str) -> event_accumulator.EventAccumulator:
  """Every event of the run's tensorboard/ folder (all its files, as TensorBoard loads one run), none sampled away."""
  everything = {event_accumulator.IMAGES: 0, event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0}
  run = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"), size_guidance=everything)
  run.Reload()
  return run


def _value(value: Any) -> Any:
  kind = value.WhichOneof("kind")
  return {"number_value": value.number_value, "string_value": value.string_value,
          "bool_value": value.bool_value}[kind]


def session_hparams(run: event_accumulator.EventAccumulator) -> dict[str, Any]:
  """The hparams of the run's session start, as Python values (numbers as floats)."""
  content = run.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
  start = metadata.parse_session_start_info_plugin_data(content)
  return {name: _value(value) for name, value in start.hparams.items()}


def experiment(run: event_accumulator.EventAccumulator) -> api_pb2.Experiment:
  """The run's experiment record: the hparams' names and types, and the metrics the dashboard compares."""
  return metadata.parse_experiment_plugin_data(run.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG])


def session_status(run: event_accumulator.EventAccumulator) -> int | None:
  """The session end's status (api_pb2.Status), or None when the run wrote no end."""
  content = run.PluginTagToContent(metadata.PLUGIN_NAME).get(metadata.SESSION_END_INFO_TAG)
  return None if content is None else metadata.parse_session_end_info_plugin_data(content).status


def config_texts(run: event_accumulator.EventAccumulator) -> list[tuple[int, str]]:
  """(step, text) of each config text the run recorded."""
  return [(event.step, event.tensor_proto.string_val[0].decode()) for event in run.Tensors(CONFIG_TEXT_TAG)]

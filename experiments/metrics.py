"""Where metrics go: metrics.jsonl, TensorBoard and the progress bar, via the train log that keeps them on the
devices between host syncs; and what TensorBoard records of the run itself: its config as text, its hparams for the
HParams dashboard.

Also the device peak that MFU divides by: a table for accelerators, a measured matmul peak on CPUs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from experiments.config_paths import flatten
from experiments.files import METRICS_FILE

# Dense peak FLOP/s per device: (bfloat16, float32 as the default matmul precision runs it).
# On NVIDIA GPUs float32 matmuls use TF32 tensor cores by default in XLA.
ACCELERATOR_PEAKS = {
    "h200": (989e12, 494e12),
    "h100": (989e12, 494e12),
    "a100": (312e12, 156e12),
    "l4": (121e12, 60e12),
    "a10": (125e12, 62e12),
    "v100": (125e12, 15.7e12),
    "tpu v6": (918e12, 918e12),
    "tpu v5p": (459e12, 459e12),
    "tpu v5 lite": (197e12, 197e12),
    "tpu v5e": (197e12, 197e12),
    "tpu v4": (275e12, 275e12),
}


def measure_matmul_peak(dtype: str = "float32", size: int = 1024, repeats: int = 10) -> float:
  """FLOP/s of a jitted matmul in `dtype` on the default device: the CPU 'peak' MFU is measured against.

  The fastest of `repeats` runs: a peak is what the machine can do, and on a shared machine the median
  of a few runs moves from one measurement to the next. In the compute dtype, accumulated in float32 as
  the model's matmuls are, since a CPU with bfloat16 instructions runs that faster than float32 (figures
  in docs/performance.md).
  """
  a = jnp.ones((size, size), jnp.dtype(dtype))
  matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  matmul(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * size**3 / min(times)


def device_peak_flops(dtype: str) -> tuple[float, str]:
  """Peak FLOP/s of all devices together, and where the figure comes from."""
  device = jax.devices()[0]
  kind = device.device_kind.lower()
  if device.platform != "cpu":
    for name, (bf16, fp32) in ACCELERATOR_PEAKS.items():
      if name in kind:
        return (bf16 if dtype == "bfloat16" else fp32) * jax.device_count(), f"table ({device.device_kind})"
    return math.nan, f"unknown accelerator {device.device_kind!r}: no MFU"
  # One XLA CPU device runs on all of the host's cores, so a measured matmul is its peak.
  return measure_matmul_peak(dtype) * jax.process_count(), f"measured {dtype} matmul"


CONFIG_TEXT = "config"  # the TensorBoard text tag of the run's config (tensorboardX adds "/text_summary")
# What the HParams dashboard compares runs by: the model, optimizer and data sections and these train keys; not
# where the data's files are or how they are read.
HPARAM_SECTIONS = ("model", "optimizer", "data")
TRAIN_HPARAMS = ("train.seed", "train.steps", "train.batch_size")
NOT_HPARAMS = ("data.data_dir", "data.manual_dir", "data.worker_count")


def config_text(config: ConfigDict) -> str:
  """The config as `path = value` lines, indented four spaces: a Markdown code block in TensorBoard's text view."""
  return "\n".join(f"    {path} = {value!r}" for path, value in flatten(config).items())


def hparams_of(config: ConfigDict) -> dict[str, bool | int | float | str]:
  """The run's hparams for the HParams dashboard: numbers, booleans and strings as they are, None and anything else
  as its text.

  Every key of the chosen sections, unset ones too: the dashboard takes its list of hparams from the first run it
  reads, so every run of a sweep must name the same ones.
  """
  chosen = {}
  for path, value in flatten(config).items():
    if path in TRAIN_HPARAMS or (path.split(".")[0] in HPARAM_SECTIONS and path not in NOT_HPARAMS):
      chosen[path] = value if isinstance(value, (bool, int, float, str)) else str(value)
  return chosen


def hparams_summaries(hparams: dict[str, bool | int | float | str], metrics: list[str], start_time: float,
                      succeeded: bool) -> list[Any]:
  """The HParams dashboard's records of one run, as tensorboardX Summary protos: the experiment (its hparams with
  their types and the metrics to compare), the session's start (this run's values) and, when it succeeded, its end.

  Built with tensorboard's own hparams summaries, which need no TensorFlow; the dashboard reads each metric's last
  value from the run's scalars. A run stopped by a signal or pruned records no end: TensorBoard keeps a run's
  first end, and a rerun may still finish it.
  """
  # Imported here, as tensorboardX is: only the writing process needs them.
  # pylint: disable=g-import-not-at-top
  from tensorboard.compat.proto import summary_pb2
  from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2
  from tensorboardX.proto import summary_pb2 as tensorboardx_pb2
  # pylint: enable=g-import-not-at-top

  def typed(value: bool | int | float | str) -> int:
    if isinstance(value, bool):
      return api_pb2.DATA_TYPE_BOOL
    return api_pb2.DATA_TYPE_STRING if isinstance(value, str) else api_pb2.DATA_TYPE_FLOAT64

  def summary(tag: str, plugin_data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
    pb = summary_pb2.Summary()
    pb.value.add(tag=tag, metadata=metadata.create_summary_metadata(plugin_data), tensor=metadata.NULL_TENSOR)
    return pb

  # Types without domains: a domain would be this run's values only, and the dashboard's filters would hide the
  # other runs' values.
  experiment = api_pb2.Experiment(
      hparam_infos=[api_pb2.HParamInfo(name=name, type=typed(value)) for name, value in hparams.items()],
      metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics])
  records = [summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
             summary_v2.hparams_pb(hparams, start_time_secs=start_time)]
  if succeeded:
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    records.append(summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)))
  # The same messages in tensorboardX's generated classes, which its writer takes.
  return [tensorboardx_pb2.Summary.FromString(record.SerializeToString()) for record in records]


def _torn(path: str) -> bool:
  """True when the file exists and its last line has no end (a kill in the middle of a write)."""
  if not os.path.exists(path) or not os.path.getsize(path):
    return False
  with open(path, "rb") as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) != b"\n"


class MetricWriter:
  """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard.

  Only process 0 writes; other processes get a writer that does nothing.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tensorboard = None
    if enabled:
      path = os.path.join(workdir, METRICS_FILE)
      torn = _torn(path)
      self._jsonl = open(path, "a", encoding="utf-8")
      if torn:
        self._jsonl.write("\n")  # the rows appended now stay whole lines
      from tensorboardX import SummaryWriter  # imported here: only the writing process needs it

      self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    """Records scalar metrics of one step."""
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    self._jsonl.flush()
    for name, value in clean.items():
      self._tensorboard.add_scalar(name, value, int(step))

  def write_image(self, step: int, name: str, rgb_image: np.ndarray) -> None:
    """Records an RGB image (uint8, height x width x 3) in TensorBoard."""
    if self.enabled:
      self._tensorboard.add_image(name, rgb_image, int(step), dataformats="HWC")

  def write_config(self, step: int, config: ConfigDict) -> None:
    """Records the run's config as TensorBoard text at the step it starts from.

    A resumed run records it again at the step it resumes from (TensorBoard keeps both steps): what changed on
    the resume reads off the two.
    """
    if self.enabled:
      self._tensorboard.add_text(CONFIG_TEXT, config_text(config), int(step))

  def write_hparams(self, step: int, config: ConfigDict, metrics: list[str], start_time: float,
                    succeeded: bool) -> None:
    """Records the run's hparams (hparams_of) and the metric tags the HParams dashboard compares, at its last step.

    TensorBoard keeps the first hparams a run's files hold: a resumed run that ends again changes nothing there,
    while the metrics' values, its last scalars, follow the resumed run.
    """
    if self.enabled:
      for record in hparams_summaries(hparams_of(config), metrics, start_time, succeeded):
        self._tensorboard.file_writer.add_summary(record, int(step))

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tensorboard.close()


class NonFiniteLoss(RuntimeError):
  """Training produced a NaN or infinite loss."""


class Throughput:
  """Wall time, steps and time waiting for data since the last restart: the perf/ metrics of an interval."""

  def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float):
    self.tokens_per_step, self.flops_per_token, self.peak_flops = tokens_per_step, flops_per_token, peak_flops
    self.restart()

  def restart(self) -> None:
    self.start, self.steps, self.data_wait = time.perf_counter(), 0, 0.0

  @contextlib.contextmanager
  def waiting_for_data(self) -> Iterator[None]:
    start = time.perf_counter()
    yield
    self.data_wait += time.perf_counter() - start

  def metrics(self) -> dict[str, float]:
    elapsed = time.perf_counter() - self.start
    tokens_per_sec = self.tokens_per_step * self.steps / max(elapsed, 1e-9)
    return {"perf/tokens_per_sec": tokens_per_sec, "perf/step_time": elapsed / max(self.steps, 1),
            "perf/mfu": self.flops_per_token * tokens_per_sec / self.peak_flops,
            "perf/data_wait_fraction": self.data_wait / max(elapsed, 1e-9)}


def _mean_metrics(pending: list[tuple[int, dict[str, jax.Array]]]) -> tuple[dict[str, float], int | None]:
  """Averages the steps' metrics fetched in one transfer; returns them and the first non-finite step.

  `pending` holds (first step, metrics stacked one row a step) for each compiled call since the last fetch.
  """
  values = jax.device_get([metrics for _, metrics in pending])
  # A finite loss with a non-finite gradient still makes the step's parameters NaN: check both.
  finite = [np.isfinite(m["train/loss"]) & np.isfinite(m["train/grad_norm"]) for m in values]
  bad = [first + int(np.argmin(ok)) for (first, _), ok in zip(pending, finite) if not ok.all()]
  mean = {k: float(np.mean(np.concatenate([m[k] for m in values]))) for k in values[0] if k != "train/tokens"}
  mean["train/learning_rate"] = float(values[-1]["train/learning_rate"][-1])
  return mean, (bad[0] if bad else None)


class TrainLog:
  """The train metrics of the calls since the last log, still on the devices until `flush` fetches them."""

  def __init__(self, writer: MetricWriter, throughput: Throughput, bar: Any, workdir: str):
    self.writer, self.throughput, self.bar, self.workdir = writer, throughput, bar, workdir
    self.pending: list[tuple[int, dict[str, jax.Array]]] = []
    self.last: dict[str, float] = {}

  def add(self, first_step: int, count: int, metrics: dict[str, jax.Array]) -> None:
    """Keeps the stacked metrics of one call of `count` steps from `first_step` on, without fetching them."""
    self.pending.append((first_step, metrics))
    self.throughput.steps += count
    if self.bar is not None:
      self.bar.update(count)

  def flush(self, step: int) -> None:
    """Fetches the pending metrics (the only host sync of the loop), writes their means, stops on a NaN.

    Raises:
      NonFiniteLoss: a step's loss or gradient norm was NaN or infinite.
    """
    if not self.pending:
      return
    mean, bad_step = _mean_metrics(self.pending)
    self.pending.clear()
    if bad_step is not None:
      raise NonFiniteLoss(f"the training loss or gradient became NaN or infinite at step {bad_step}; the last good "
                          f"checkpoint is kept in {self.workdir}/checkpoints (try a lower optimizer.learning_rate "
                          f"or optimizer.grad_clip)")
    mean.update(self.throughput.metrics())
    self.writer.write(step, mean)
    self.last = mean
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{mean['train/loss']:.4f}", tok_s=f"{mean['perf/tokens_per_sec']:,.0f}",
                           refresh=False)
    self.throughput.restart()

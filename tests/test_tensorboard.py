"""What a run leaves for TensorBoard besides its curves: its config as text, its hparams with the metrics the
HParams dashboard compares runs by, and the default probe's attention grid at each evaluation.

One tiny trained run (slow) is read back with TensorBoard's event reader and checked against the config.json and
summary.json the run wrote, flattened here by the test's own code.
"""

from __future__ import annotations

import io
import json
import os

import matplotlib.image
import numpy as np
import pytest
from tensorboard.plugins.hparams import api_pb2

from experiments import validation
from experiments.files import CONFIG_FILE, read_metrics
from experiments.inspection import training_probes
from experiments.runner import train_and_evaluate
from tests.helpers import tensorboard_files
from tests.helpers.tiny_config import tiny_config

STEPS, EVAL_EVERY = 4, 2


def flattened(node: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in node.items():
    flat.update(flattened(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
  return flat


@pytest.fixture(scope="module")
def run(tmp_path_factory, tfds_data_dir) -> dict:
  workdir = str(tmp_path_factory.mktemp("tensorboard_run"))
  config = tiny_config(tfds_data_dir, {"train.steps": STEPS, "train.eval_every": EVAL_EVERY,
                                       "eval.max_batches": 1, "inspect.default_probe": True})
  summary = train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, CONFIG_FILE), encoding="utf-8") as f:
    saved = flattened(json.load(f))
  return {"workdir": workdir, "summary": summary, "saved": saved, "events": tensorboard_files.read_run(workdir)}


@pytest.mark.slow
def test_the_hparams_are_the_configs_values_and_the_metrics_the_final_evaluations(run):
  hparams, saved = tensorboard_files.session_hparams(run["events"]), run["saved"]
  chosen = {path for path in saved if path.split(".")[0] in ("model", "optimizer", "data")} - {
      "data.data_dir", "data.manual_dir", "data.worker_count"}
  assert set(hparams) == chosen | {"train.seed", "train.steps", "train.batch_size"}
  for path in hparams:
    expected = "None" if saved[path] is None else saved[path]  # an unset key still names its hparam
    assert hparams[path] == expected, path
  assert hparams["data.task"] == "associative_recall" and hparams["model.num_heads"] == 2
  assert hparams["train.steps"] == STEPS and hparams["model.tie_embeddings"] is True
  types = {info.name: info.type for info in tensorboard_files.experiment(run["events"]).hparam_infos}
  assert (types["data.task"], types["optimizer.learning_rate"], types["model.post_ln"]) == (
      api_pb2.DATA_TYPE_STRING, api_pb2.DATA_TYPE_FLOAT64, api_pb2.DATA_TYPE_BOOL)
  final = run["summary"]["final"]
  metrics = [info.name.tag for info in tensorboard_files.experiment(run["events"]).metric_infos]
  assert sorted(metrics) == sorted(k for k in final if k.startswith("eval/")) and "eval/loss" in metrics
  # The dashboard shows each metric's last scalar: the final evaluation's, as the summary has it.
  for tag in metrics:
    last = run["events"].Scalars(tag)[-1]
    assert (last.step, last.value) == (STEPS, pytest.approx(final[tag], rel=1e-6)), tag
  assert tensorboard_files.session_status(run["events"]) == api_pb2.STATUS_SUCCESS


@pytest.mark.slow
def test_the_config_text_is_every_key_of_config_json_at_the_first_step(run):
  texts = tensorboard_files.config_texts(run["events"])
  assert [step for step, _ in texts] == [0]
  lines = texts[0][1].splitlines()
  assert all(line.startswith("    ") for line in lines)  # a Markdown code block: aligned as written
  for path, value in run["saved"].items():
    # config.json holds tuples as lists: the text shows the config's own values.
    shown = tuple(value) if isinstance(value, list) else value
    assert f"    {path} = {shown!r}" in lines, path
  assert len(lines) == len(run["saved"])


@pytest.mark.slow
def test_the_default_probe_draws_the_first_validation_example_at_each_evaluation(run):
  images = run["events"].Images(training_probes.DEFAULT_PROBE_IMAGE)
  assert [image.step for image in images] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
  for image in images:
    pixels = matplotlib.image.imread(io.BytesIO(image.encoded_image_string), format="png")
    assert pixels.shape[:2] == (image.height, image.width) and np.std(pixels) > 0  # a drawing, not a blank
  # One forward pass, no scores: nothing but the image; metrics.jsonl has no row without a metric.
  assert not any(tag.startswith("heads/") for tag in run["events"].Tags()["scalars"])
  assert all(len(row) > 1 for row in read_metrics(run["workdir"]))


def test_default_probe_is_a_boolean():
  config = tiny_config("unused", {"inspect.default_probe": "yes"})
  assert "inspect.default_probe='yes' must be True or False" in validation.validate(config)

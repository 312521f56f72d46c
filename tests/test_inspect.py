"""Tests of inspection: the PNG grid draws the model's weights, head scores, context similarity, training probes.

One small run on the induction task (with probes on) is trained once for the module and shared.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from experiments import checkpoint, inspect, validation
from experiments.files import read_metrics
from experiments.inspection import forward_pass, head_scores, html_page, plots
from experiments.runner import train_and_evaluate
from experiments.validation import ConfigError
from tests.helpers.metrics import train_losses
from tests.helpers.tiny_config import tiny_config
from transformer import ModelConfig, TransformerLM

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 800
PROMPT = "3 9 4 12 7 3 9 4 12 7"


def induction_config(data_dir: str, steps: int = STEPS):
  """The tiny runner config on the induction task, with probes at each evaluation."""
  c = tiny_config(data_dir, {"data.task": "induction", "train.steps": steps})
  c.optimizer.learning_rate = 1e-2
  c.train.log_every, c.train.eval_every, c.eval.max_batches = 100, steps // 2, 1
  c.inspect.probe_prompts = (PROMPT, "1 2 3")
  c.inspect.heads = "1"
  return c


@pytest.fixture(scope="module")
def trained(tfds_data_dir, tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp("induction_run"))
  train_and_evaluate(induction_config(tfds_data_dir), workdir)
  return workdir


def reference_weights(model: TransformerLM, params, tokens_BL) -> np.ndarray:
  """weights_NBHLM straight from model.apply with the reference implementation (independent of forward_pass.forward)."""
  reference = TransformerLM(dataclasses.replace(model.config, attention_impl="reference"))
  _, state = reference.apply({"params": params}, jnp.asarray(tokens_BL), mutable=["intermediates"])
  inter = state["intermediates"]
  if model.config.scan_layers:
    return np.asarray(inter["blocks"]["block"]["attention"]["attention_weights"][0])
  return np.stack([np.asarray(inter[f"block_{n}"]["attention"]["attention_weights"][0])
                   for n in range(model.config.num_layers)])


def panels(figure) -> dict[str, object]:
  return {ax.get_label(): ax for ax in figure.axes if ax.get_label().startswith("attention layer")}


@pytest.mark.slow
def test_png_has_one_panel_per_layer_and_head_drawing_the_models_weights(trained, tmp_path):
  result = inspect.run_attention(trained, PROMPT, layers="0,1", heads="1", out=str(tmp_path / "a.png"))
  assert result["step"] == STEPS
  [figure] = result["figures"]
  drawn = panels(figure)
  assert sorted(drawn) == [plots.panel_label(0, 1), plots.panel_label(1, 1)]
  model, params, _ = checkpoint.load_model(trained)
  ids = np.asarray([int(t) for t in PROMPT.split()], np.int32)
  expected_NHLM = reference_weights(model, params, ids[None])[:, 0]
  allowed_LM = np.tril(np.ones((len(ids), len(ids)), bool))  # the run's mask is causal
  for layer in (0, 1):
    image = drawn[plots.panel_label(layer, 1)].images[0].get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(image), ~allowed_LM)  # masked cells are not drawn as weights
    np.testing.assert_allclose(image.filled(0.0), expected_NHLM[layer, 1], atol=1e-6)
    ax = drawn[plots.panel_label(layer, 1)]
    assert [t.get_text() for t in ax.get_xticklabels()] == PROMPT.split()
  png = matplotlib.image.imread(result["pngs"][0])
  assert png.ndim == 3 and png.shape[0] > 200
  with open(result["html"], encoding="utf-8") as f:
    assert "<script" in f.read()


@pytest.mark.slow
def test_long_prompt_is_truncated_with_a_note(trained, tmp_path):
  long_prompt = " ".join(str(1 + i % 30) for i in range(40))  # the model's max_len is 24
  result = inspect.run_attention(trained, long_prompt, out=str(tmp_path / "long.png"))
  assert result["weights_NHLM"].shape[-1] == 24
  [figure] = result["figures"]
  assert "truncated" in figure._suptitle.get_text()
  assert len(panels(figure)) == 2 * 2  # all layers and heads by default


@pytest.mark.slow
def test_bad_layer_is_one_clear_error(trained, tmp_path):
  with pytest.raises(ValueError, match=r"--layers='0,5': 5 is out of range 0..1"):
    inspect.run_attention(trained, PROMPT, layers="0,5", out=str(tmp_path / "a.png"))


def untrained(config: ModelConfig):
  model = TransformerLM(config)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, config.max_len), jnp.int32))["params"])
  return model, params


@pytest.mark.slow
def test_trained_heads_copy_and_untrained_ones_attend_alike_to_repeats_and_controls(trained):
  """The hand-built circuits of test_head_scores.py check each score; here, what a real run shows.

  800 steps leave this run at about 0.46 accuracy with no head that the induction score separates from its
  control (its best, layer 0 head 1: about 0.30 against 0.24; a fixed-period score gave it 0.4 and more).
  """
  model, params, _ = checkpoint.load_model(trained)
  tokens_BL = head_scores.random_tokens(model.config.vocab_size, model.config.max_len, 8)
  trained_scores = head_scores.head_scores(model, params, tokens_BL)
  fresh_scores = head_scores.head_scores(*untrained(model.config), tokens_BL)
  for name, scores in (("trained", trained_scores), ("untrained", fresh_scores)):
    print(name, {key: scores[key].round(3).tolist() for key in ("induction", "induction_control", "copying")})
  assert trained_scores["copying"].max() > 0.9 > np.abs(fresh_scores["copying"]).max()  # trained to copy tokens
  # Nearly uniform attention at initialization puts the same weight on the targets of repeats and controls.
  np.testing.assert_allclose(fresh_scores["induction"], fresh_scores["induction_control"], atol=0.05)
  assert not head_scores.induction_heads(fresh_scores).any()


@pytest.mark.slow
def test_context_similarity_is_one_for_identical_contexts(trained, tmp_path):
  a, b = "1 2 3 4 5 6 7", "9 8 5 11 12"
  result = inspect.run_context(trained, token="5", prompts=[a, a, b], out=str(tmp_path / "c.png"))
  similarity_NXX = result["similarity_NXX"]
  assert result["positions"] == [4, 4, 2]
  assert similarity_NXX.shape == (3, 3, 3)  # embedding + 2 blocks
  np.testing.assert_allclose(similarity_NXX[:, 0, 1], 1.0, atol=1e-6)
  np.testing.assert_allclose(similarity_NXX[0], 1.0, atol=1e-6)  # before any context: the same embedding
  assert similarity_NXX[-1, 0, 2] < 0.999  # different contexts move the same token apart
  assert "cos(0,1)" in result["table"] and os.path.exists(result["png"])
  with pytest.raises(ValueError, match="does not occur"):
    inspect.run_context(trained, token="5", prompts=[a, "1 2"], out=str(tmp_path / "c.png"))


@pytest.mark.slow
def test_a_text_run_is_inspected_in_words(tfds_data_dir, tmp_path):
  """A character-level run: probes encode text prompts; a word of several tokens is followed at its last one."""
  from experiments.data import text

  corpus = tmp_path / "corpus.txt"
  rng = np.random.default_rng(0)
  words = ["the", "mole", "dug", "a", "hole", "of", "carbon", "weighs", "grams"]
  corpus.write_text("\n".join(" ".join(rng.choice(words, 6)) + "." for _ in range(300)) + "\n", encoding="utf-8")
  c = tiny_config(tfds_data_dir, {"train.steps": 4})
  c.data.task, c.data.dataset, c.data.text_files, c.data.tokenizer = "text", text.TEXT_FILES, str(corpus), "char"
  c.data.vocab_size, c.data.seq_len, c.data.validation_fraction = 0, 24, 0.1
  c.train.eval_every, c.eval.max_batches = 4, 1
  digging, chemistry = "the mole dug a hole.", "a mole of carbon."
  c.inspect.probe_prompts = digging
  workdir = str(tmp_path / "run")
  train_and_evaluate(c, workdir)
  assert ("attention/prompt0", 4) in _tensorboard_images(workdir)
  result = inspect.run_context(workdir, token="mole", prompts=[digging, chemistry, digging],
                               out=str(tmp_path / "mole.png"))
  assert result["positions"] == [digging.index("mole") + 3, chemistry.index("mole") + 3, digging.index("mole") + 3]
  np.testing.assert_allclose(result["similarity_NXX"][:, 0, 2], 1.0, atol=1e-6)
  result = inspect.run_attention(workdir, digging, out=str(tmp_path / "mole_attention.png"))
  ax = panels(result["figures"][0])[plots.panel_label(0, 0)]
  assert [t.get_text() for t in ax.get_yticklabels()][:5] == ["t", "h", "e", "␣", "m"]  # whitespace made visible


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=180,
                        check=False)


@pytest.mark.slow
def test_heads_command_prints_a_row_per_head_and_writes_the_heat_map(trained, tmp_path):
  out = tmp_path / "heads.png"
  result = _cli("experiments.inspect", "heads", f"--workdir={trained}", f"--out={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
  columns = 2 + len(head_scores.SCORE_TITLES) + 1  # layer, head, the scores, induction head yes or no
  assert [(int(r[0]), int(r[1])) for r in rows if len(r) == columns] == [(0, 0), (0, 1), (1, 0), (1, 1)]
  assert rows and {r[-1] for r in rows} <= {"yes", "no"}
  assert "induction_control" in result.stdout and out.exists()
  result = _cli("experiments.params", f"--workdir={trained}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "total" in result.stdout and "attention" in result.stdout


def _tensorboard_images(workdir: str) -> dict[tuple[str, int], bytes]:
  """{(tag, step): PNG bytes} of every image in the run's TensorBoard event files (TFRecord framing)."""
  from tensorboardX.proto import event_pb2

  images = {}
  folder = os.path.join(workdir, "tensorboard")
  for name in os.listdir(folder):
    with open(os.path.join(folder, name), "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        if value.HasField("image"):
          images[(value.tag, event.step)] = value.image.encoded_image_string
  return images


@pytest.mark.slow
def test_training_writes_pattern_images_and_head_scalars_at_each_evaluation(trained):
  images = _tensorboard_images(trained)
  for step in (STEPS // 2, STEPS):
    for prompt in (0, 1):
      png = matplotlib.image.imread(io.BytesIO(images[(f"attention/prompt{prompt}", step)]))
      assert png.shape[0] > 100 and png.shape[1] > 100
  by_step = {m["step"]: m for m in read_metrics(trained) if "heads/induction/layer0_head0" in m}
  assert sorted(by_step) == [STEPS // 2, STEPS]
  names = {k for k in by_step[STEPS] if k.startswith("heads/")}
  assert len(names) == len(head_scores.SCORE_TITLES) * 2 * 2 + 1  # each score x 2 layers x 2 heads, the count
  model, params, _ = checkpoint.load_model(trained)
  probe = head_scores.induction_probe(model.config.vocab_size, model.config.max_len)
  logged = by_step[STEPS]
  # The detector's score by hand: the weight each query puts on the keys right after its token's earlier
  # occurrences, over the queries that have one; the control scored on the same query-key pairs.
  for name, tokens_BL in (("induction", probe.repeats_BL), ("induction_control", probe.controls_BL)):
    weights_NBHLM = reference_weights(model, params, tokens_BL)
    on_targets = {(n, h): [] for n, h in np.ndindex(2, 2)}
    for b, l in np.ndindex(*probe.repeats_BL.shape):
      keys = [m for m in range(1, l + 1) if probe.repeats_BL[b, m - 1] == probe.repeats_BL[b, l]]
      for n, h in on_targets if keys else ():
        on_targets[n, h].append(weights_NBHLM[n, b, h, l, keys].sum())
    for (n, h), values in on_targets.items():
      assert logged[f"heads/{name}/layer{n}_head{h}"] == pytest.approx(float(np.mean(values)), abs=1e-5), (name, n, h)
  circuits_NHRR = head_scores.ov_circuits(model.config, params)
  for (n, h), value in np.ndenumerate(head_scores.copying_score(circuits_NHRR)):
    assert logged[f"heads/copying/layer{n}_head{h}"] == pytest.approx(float(value), abs=1e-5)
  flagged = {(n, h) for n, h in np.ndindex(2, 2) if logged[f"heads/induction/layer{n}_head{h}"]
             >= max(logged[f"heads/induction_control/layer{n}_head{h}"] + head_scores.INDUCTION_MARGIN,
                    head_scores.INDUCTION_RATIO * logged[f"heads/induction_control/layer{n}_head{h}"])}
  assert logged["heads/induction_heads"] == len(flagged)


@pytest.mark.slow
def test_probes_leave_training_unchanged(tfds_data_dir, tmp_path):
  with_probes = induction_config(tfds_data_dir, steps=6)
  with_probes.train.eval_every, with_probes.train.log_every = 2, 1
  without = induction_config(tfds_data_dir, steps=6)
  without.train.eval_every, without.train.log_every = 2, 1
  without.inspect.probe_prompts = ""
  train_and_evaluate(with_probes, str(tmp_path / "with"))
  train_and_evaluate(without, str(tmp_path / "without"))
  assert train_losses(str(tmp_path / "with")) == train_losses(str(tmp_path / "without"))
  assert not any(k.startswith("heads/") for m in read_metrics(str(tmp_path / "without")) for k in m)


def test_probe_settings_are_validated(tfds_data_dir, tmp_path):
  config = induction_config(tfds_data_dir, steps=2)
  config.inspect.heads = "0,7"
  assert any(e.startswith("inspect.heads='0,7'") for e in validation.validate(config))
  config.inspect.heads, config.inspect.probe_prompts = "", 17
  assert any(e.startswith("inspect.probe_prompts=17") for e in validation.validate(config))
  config.inspect.probe_prompts = "1 2 x"
  with pytest.raises(ConfigError, match=r"inspect.probe_prompts\[0\]='1 2 x'"):
    train_and_evaluate(config, str(tmp_path))


VARIANTS = [
    dict(mask="causal", value_mode="factored"),
    dict(mask="none", value_mode="full", num_kv_heads=1),
    dict(mask="sliding_window", window=3, num_kv_heads=2, value_rank=4),
    dict(mask="prefix", prefix_length=5, value_mode="full", num_kv_heads=2),
    dict(mask="causal", attention_impl="chunked", chunk_size=4, scan_layers=True, positions="rope"),
    dict(mask="sliding_window", window=2, attention_impl="auto", positions="sinusoidal", post_ln=True),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()))
def test_every_mask_value_mode_and_grouped_heads(variant):
  config = ModelConfig(vocab_size=16, max_len=12, num_layers=2, d_model=16, num_heads=4, **variant)
  model, params = untrained(config)
  tokens_BL = head_scores.random_tokens(16, 12, 2, seed=1)
  out = forward_pass.forward(model, params, tokens_BL)
  weights_NBHLM = np.asarray(out["weights_NBHLM"])
  assert weights_NBHLM.shape == (2, 2, 4, 12, 12)
  np.testing.assert_allclose(weights_NBHLM, reference_weights(model, params, tokens_BL), atol=1e-6)
  # The inspected pass computes the trained model's function, whatever implementation training used.
  np.testing.assert_allclose(out["logits_BLV"], model.apply({"params": params}, jnp.asarray(tokens_BL)), atol=2e-5)
  allowed_LM = forward_pass.allowed_matrix(model, 12)
  assert not weights_NBHLM[..., ~allowed_LM].any()
  np.testing.assert_allclose(weights_NBHLM.sum(-1), 1.0, atol=1e-5)
  scores = head_scores.head_scores(model, params, tokens_BL)
  assert all(s.shape == (2, 4) and np.isfinite(s).all() for s in scores.values())
  [figure] = plots.attention_figures(weights_NBHLM[:, 0], allowed_LM, [str(t) for t in tokens_BL[0]], [1],
                                     [0, 2, 3], "variant")
  assert len(panels(figure)) == 3
  assert plots.to_image(figure).shape[-1] == 3  # it renders


def test_probe_prompt_list():
  from experiments.inspection.parsing import prompt_list

  assert prompt_list("") == [] and prompt_list(()) == []
  assert prompt_list("1 2") == ["1 2"] and prompt_list(("1 2", "3")) == ["1 2", "3"]
  assert prompt_list(["1 2"]) == ["1 2"]  # a tuple read back from config.json is a list
  with pytest.raises(ValueError, match="inspect.probe_prompts"):
    prompt_list(("1", 2))


def test_png_cuts_long_sequences_with_a_note():
  weights_NHLM = np.full((1, 1, 12, 12), 1 / 12)
  [figure] = plots.attention_figures(weights_NHLM, np.ones((12, 12), bool), list("abcdefghijkl"), [0], [0], "t",
                                     png_max_tokens=5)
  assert "first 5 of 12 tokens" in figure._suptitle.get_text()
  assert panels(figure)[plots.panel_label(0, 0)].images[0].get_array().shape == (5, 5)


def test_png_panels_and_labels_keep_their_size_as_panels_grow(monkeypatch):
  """More panels make more figures, never smaller panels or labels; every panel is drawn once.

  A small FIGURE_MAX_INCHES makes 9 panels of 8 tokens need several figures (fast: few ticks to draw).
  """
  monkeypatch.setattr(plots, "FIGURE_MAX_INCHES", 8.0)

  def grids(length, layers, heads):
    weights_NHLM = np.full((layers, heads, length, length), 1 / length)
    return plots.attention_figures(weights_NHLM, np.ones((length, length), bool), [f"t{i}" for i in range(length)],
                                   list(range(layers)), list(range(heads)), "t")

  def per_panel_inches(figure):
    rows, columns = figure.axes[0].get_subplotspec().get_geometry()[:2]
    return figure.get_size_inches() / (columns, rows)

  [single] = grids(8, 1, 1)
  many = grids(8, 3, 3)
  assert len(many) > 1
  drawn = [label for figure in many for label in panels(figure)]
  assert drawn == [plots.panel_label(layer, head) for layer in range(3) for head in range(3)]  # each once, in order
  for figure in many:
    assert (figure.get_size_inches() <= 8.0).all()
    assert "part" in figure._suptitle.get_text()
    assert per_panel_inches(figure).min() >= 3.0  # 300 pixels a side, however many panels
  [longest] = grids(plots.PNG_MAX_TOKENS, 1, 1)
  for figure, length in [(single, 8), (longest, plots.PNG_MAX_TOKENS)] + [(figure, 8) for figure in many]:
    for ax in panels(figure).values():
      sizes = {label.get_fontsize() for label in ax.get_xticklabels() + ax.get_yticklabels()}
      assert min(sizes) * 100 / 72 >= 9.0  # pixels at the 100 dpi of `save`
    # Room per token along a panel: at least the labels' size, so neighbouring labels do not overlap.
    assert per_panel_inches(figure).min() * 72 / length >= max(sizes)


@pytest.mark.slow
def test_training_probes_write_a_grid_too_big_for_one_figure_as_numbered_images(monkeypatch):
  from ml_collections import ConfigDict

  from experiments.data.tokenizers import ByteTokenizer
  from experiments.inspection import training_probes

  class Images:
    enabled = True

    def __init__(self):
      self.tags = []

    def write(self, step, metrics):
      pass

    def write_image(self, step, name, rgb_image):
      assert rgb_image.ndim == 3 and rgb_image.shape[-1] == 3
      self.tags.append(name)

  monkeypatch.setattr(plots, "FIGURE_MAX_INCHES", 4.5)  # one panel of a short prompt per figure
  model, params = untrained(ModelConfig(vocab_size=256, max_len=8, num_layers=2, d_model=8, num_heads=2))
  config = ConfigDict({"inspect": {"probe_prompts": "a:b:", "layers": "", "heads": "1"}})
  images = Images()
  training_probes.TrainingProbes(config, model, ByteTokenizer()).write(3, params, images)
  assert images.tags == ["attention/prompt0_part1", "attention/prompt0_part2"]  # layers 0 and 1 of head 1


def test_head_score_maps_share_a_fixed_scale_per_kind_of_score():
  """0.34 and 0.19 get different colours: weight scores on 0..1, entropy up to log L, distance up to L - 1."""
  rng = np.random.default_rng(0)
  scores = {name: rng.uniform(0.0, 0.1, (2, 3)) for name in head_scores.SCORE_TITLES}
  scores["induction"][1, 2], scores["induction_control"][0, 1] = 0.34, 0.19
  length = 16
  figure = plots.score_maps(scores, "t", length)
  maps = {ax.get_label()[len("scores "):]: ax.images[0] for ax in figure.axes if ax.get_label().startswith("scores ")}
  assert list(maps) == list(head_scores.SCORE_TITLES)
  limits = {name: (image.norm.vmin, image.norm.vmax) for name, image in maps.items()}
  for name in ("previous_token", "induction", "induction_control"):
    assert limits[name] == (0.0, 1.0)
  assert limits["entropy"] == pytest.approx((0.0, np.log(length)))  # uniform attention over L keys
  assert limits["distance"] == (0.0, length - 1.0)
  assert limits["copying"] == (-1.0, 1.0)
  assert not np.allclose(maps["induction"].to_rgba(0.34), maps["induction_control"].to_rgba(0.19))
  halved = plots.score_maps({name: values / 2 for name, values in scores.items()}, "t", length)
  assert [(ax.images[0].norm.vmin, ax.images[0].norm.vmax) for ax in halved.axes if ax.images] == list(limits.values())
  meanings = {name: image.colorbar.ax.get_xlabel() for name, image in maps.items()}
  assert "0 to 1" in meanings["induction"] and "nats" in meanings["entropy"] and "logit" in meanings["copying"]


def test_big_models_get_a_page_of_bounded_size():
  assert html_page.html_tokens(20, 8) == 20
  assert html_page.html_tokens(1024, 1) == html_page.HTML_MAX_TOKENS
  shown = html_page.html_tokens(1024, 12 * 12)  # every head of GPT-2 small
  assert 100 < shown and 12 * 12 * shown**2 <= html_page.HTML_MAX_CELLS


@pytest.mark.slow
def test_saved_config_records_the_probe_settings(trained):
  with open(os.path.join(trained, "config.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["inspect"]["probe_prompts"] == [PROMPT, "1 2 3"]

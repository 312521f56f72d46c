"""Hugging Face GPT-2 checkpoints imported: transformers' logits and greedy tokens, GPT-2's tokenizer, refusals.

The models are random GPT2LMHeadModels of transformers (torch, CPU), seeded and saved with save_pretrained:
nothing is downloaded. transformers and torch are test-only dependencies (requirements-dev.txt): without them
the comparisons skip, and under CI=true they fail (tests/helpers/components.py). Importing them costs ~8 s of
CPU, so every test that does is slow; the refusals and the reader's checks use folders written without them
(tests/helpers/hf_checkpoints.py) and are fast.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from configs import base, gpt2
from experiments import checkpoint, evaluate, hugging_face, runner, sample
from experiments.data import text, tokenizers
from experiments.validation import ConfigError
from tests.helpers.components import unavailable
from tests.helpers.hf_checkpoints import gpt2_config, gpt2_tensors, write_checkpoint, write_safetensors
from transformer import model_config_from

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MERGES = ["h e", "Ġ t", "Ġt he", "l l"]
CONTEXT = 32  # n_positions of the random models, and the windows their workdirs evaluate
# (n_embd, n_head): a power-of-two head count and an odd one.
SIZES = {"four_heads": (32, 4), "three_heads": (48, 3)}
CORPUS_LINE = "the king and the queen speak of war and peace, my lord! what say you? naïve café über 12\n"
SAMPLES = ["Hello world", " leading and  double  spaces ", "lines\n\nand\ttabs\r\n", "naïve café — Über!",
           "日本語のテキスト 😀", "don't we'll it's 'quoted'", "12345 678.9", "the<|endoftext|>end", ""]


def _config(text_files: str = "", data_dir: str = "", **model):
  """configs/base.py for an import: windows of CONTEXT tokens, text_files data when given."""
  c = base.get_config()
  c.data.seq_len = CONTEXT
  if text_files:
    c.data.dataset, c.data.text_files, c.data.data_dir = "text_files", text_files, data_dir
  for key, value in model.items():
    c.model[key] = value
  return c


# ---------------------------------------------------------------------------------------------------------------------
# Refusals: folders written with numpy, the import stopped with one line before it writes anything.


def _truncate(folder):
  path = os.path.join(folder, "model.safetensors")
  os.truncate(path, os.path.getsize(path) - 64)


def _garble_header(folder):
  with open(os.path.join(folder, "model.safetensors"), "r+b") as f:
    f.seek(8)
    f.write(b"\xff\xfe not json")


def _rewrite(folder, config_changes=None, tensor_changes=None, drop=()):
  with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
    config = {**json.load(f), **(config_changes or {})}
  tensors = {k: v for k, v in {**gpt2_tensors(gpt2_config(300)), **(tensor_changes or {})}.items() if k not in drop}
  write_checkpoint(folder, config, tensors, MERGES)


REFUSALS = {
    "truncated": (_truncate, ["model.safetensors", "tensor transformer.", "truncated"]),
    "header-not-json": (_garble_header, ["model.safetensors", "header is not JSON"]),
    "foreign-architecture": (lambda f: _rewrite(f, {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}),
                             ["config.json", "'llama'", "only GPT-2"]),
    "other-activation": (lambda f: _rewrite(f, {"activation_function": "relu"}),
                         ["config.json", "activation_function='relu'"]),
    "wrong-shape": (lambda f: _rewrite(f, tensor_changes={"transformer.h.1.attn.c_proj.weight": np.zeros((32, 31))}),
                    ["model.safetensors", "tensor transformer.h.1.attn.c_proj.weight", "[32, 31]", "[32, 32]"]),
    "missing-tensor": (lambda f: _rewrite(f, drop=("transformer.ln_f.bias",)),
                       ["model.safetensors", "tensor transformer.ln_f.bias is missing"]),
    "extra-tensor": (lambda f: _rewrite(f, tensor_changes={"transformer.h.0.attn.rotary": np.zeros(4)}),
                     ["model.safetensors", "tensor transformer.h.0.attn.rotary is not part of a GPT-2"]),
    "no-weights": (lambda f: os.rename(os.path.join(f, "model.safetensors"), os.path.join(f, "pytorch_model.bin")),
                   ["model.safetensors is missing", "pytorch_model.bin"]),
    "no-tokenizer": (lambda f: os.remove(os.path.join(f, "vocab.json")), ["vocab.json is missing", "tokenizer.json"]),
    "vocabulary-larger-than-the-model": (lambda f: _rewrite(f, {"vocab_size": 100}),
                                         ["has 261 tokens, more than the 100"]),
    "context-shorter-than-the-windows": (lambda f: _rewrite(f, {"n_positions": 16}),
                                         ["data.seq_len=32", "n_positions=16", "config.json"]),
    "no-folder": (shutil.rmtree, ["--checkpoint=", "no such folder, nor a hub name"]),
}


@pytest.mark.parametrize("fault", REFUSALS)
def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line_naming_the_file_and_tensor(fault, tmp_path):
  folder = str(tmp_path / "checkpoint")
  os.mkdir(folder)
  write_checkpoint(folder, gpt2_config(300), gpt2_tensors(gpt2_config(300)), MERGES)
  damage, named = REFUSALS[fault]
  damage(folder)
  workdir = tmp_path / "runs" / "imported"
  with pytest.raises(hugging_face.ImportFailure) as caught:
    hugging_face.import_checkpoint(folder, str(workdir), _config())
  message = str(caught.value)
  assert "\n" not in message and all(name in message for name in named), message
  assert not workdir.exists() and not (tmp_path / "runs").exists()  # nothing written, not even a staging folder


def test_the_untouched_folder_imports_and_a_used_workdir_is_refused(tmp_path):
  """The refusals' folder itself is a checkpoint (so each refusal is its fault alone); a workdir is never reused."""
  folder = str(tmp_path / "checkpoint")
  os.mkdir(folder)
  write_checkpoint(folder, gpt2_config(300), gpt2_tensors(gpt2_config(300)), MERGES)
  result = hugging_face.import_checkpoint(folder, str(tmp_path / "imported"), _config())
  assert result["vocab_size"] == 261 and result["model"]["vocab_size"] == 300
  assert sorted(os.listdir(tmp_path)) == ["checkpoint", "imported"]
  assert sorted(os.listdir(tmp_path / "imported")) == ["checkpoints", "config.json", "tokenizer"]
  with pytest.raises(hugging_face.ImportFailure, match="exists and is not an empty folder"):
    hugging_face.import_checkpoint(folder, str(tmp_path / "imported"), _config())


@pytest.mark.parametrize("size", gpt2.VARIANTS)
def test_the_released_gpt2_configs_map_to_configs_gpt2(size):
  """The hub's gpt2 ... gpt2-xl config.json sizes give configs/gpt2.py's models (whose parameter counts are the
  released ones: tests/test_accounting.py), so --config=configs/gpt2.py:<size> fine-tunes an imported GPT-2."""
  num_layers, d_model, num_heads = gpt2.SIZES[size]
  released = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "activation_function": "gelu_new",
              "vocab_size": 50257, "n_positions": 1024, "n_ctx": 1024, "n_embd": d_model, "n_layer": num_layers,
              "n_head": num_heads, "layer_norm_epsilon": 1e-05}  # as the hub's files have them (no n_inner: 4D)
  section = hugging_face.model_section(released, "config.json")
  expected = gpt2.get_config(size).model
  assert {key: expected[key] for key in section} == section


def test_safetensors_of_each_float_dtype_read_as_float32(tmp_path):
  values = np.array([[1.5, -2.0], [0.15625, 24576.0]], np.float32)  # exact in every dtype, bfloat16's 8 bits too
  path = str(tmp_path / "model.safetensors")
  write_safetensors(path, {"a": values, "b": values, "c": values, "d": values.ravel()},
                    {"b": "F16", "c": "BF16", "d": "F64"})
  tensors = hugging_face.read_safetensors(path)
  for name in "abc":
    assert tensors[name].dtype == np.float32
    np.testing.assert_array_equal(tensors[name], values)
  np.testing.assert_array_equal(tensors["d"], values.ravel())


def test_a_sharded_checkpoint_reads_every_shard_its_index_lists(tmp_path):
  tensors = gpt2_tensors(gpt2_config(300))
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[:10], "model-00002-of-00002.safetensors": names[10:]}
  for shard, shard_names in shards.items():
    write_safetensors(str(tmp_path / shard), {name: tensors[name] for name in shard_names})
  index = {"weight_map": {name: shard for shard, shard_names in shards.items() for name in shard_names}}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
  read, source = hugging_face.read_weights(str(tmp_path))
  assert source.endswith("model.safetensors.index.json") and sorted(read) == names
  for name in names:
    np.testing.assert_array_equal(read[name], tensors[name])
  os.remove(tmp_path / "model-00002-of-00002.safetensors")
  with pytest.raises(hugging_face.ImportFailure, match="model-00002-of-00002.safetensors is missing"):
    hugging_face.read_weights(str(tmp_path))


def test_the_hubs_names_without_the_prefix_and_with_mask_buffers_give_the_same_parameters():
  """The hub's gpt2 stores `h.0.attn.c_attn.weight` (GPT2Model's names) and each layer's causal mask as
  `h.N.attn.bias` [1, 1, T, T] (older files also `masked_bias`); save_pretrained of GPT2LMHeadModel neither."""
  c = gpt2_config(300)
  tensors = gpt2_tensors(c)
  hub = {name.removeprefix("transformer."): array for name, array in tensors.items()}
  for i in range(c["n_layer"]):
    hub[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
    hub[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
  model = model_config_from(hugging_face.model_section(c, "config.json"))
  ours, theirs = hugging_face.gpt2_params(tensors, model, "m"), hugging_face.gpt2_params(hub, model, "m")
  jax.tree.map(np.testing.assert_array_equal, ours, theirs)
  with pytest.raises(hugging_face.ImportFailure, match="m: tensor h.0.ln_1.bias is missing"):
    hugging_face.gpt2_params({k: v for k, v in hub.items() if k != "h.0.ln_1.bias"}, model, "m")


def test_an_untied_head_becomes_the_unembedding_and_a_tied_copy_is_accepted():
  c = gpt2_config(300)
  tensors = gpt2_tensors(c)
  head = np.random.default_rng(1).normal(size=(300, 32)).astype(np.float32)
  untied = hugging_face.model_section({**c, "tie_word_embeddings": False}, "config.json")
  params = hugging_face.gpt2_params({**tensors, "lm_head.weight": head}, model_config_from(untied), "m")
  np.testing.assert_array_equal(params["unembed"], head.T)
  tied = model_config_from(hugging_face.model_section(c, "config.json"))
  copied = {**tensors, "lm_head.weight": tensors["transformer.wte.weight"]}  # older checkpoints save the tie
  assert "unembed" not in hugging_face.gpt2_params(copied, tied, "m")
  with pytest.raises(hugging_face.ImportFailure, match="m: tensor lm_head.weight differs from wte.weight"):
    hugging_face.gpt2_params({**tensors, "lm_head.weight": head}, tied, "m")
  with pytest.raises(hugging_face.ImportFailure, match="m: tensor lm_head.weight is missing"):
    hugging_face.gpt2_params(tensors, model_config_from(untied), "m")


# ---------------------------------------------------------------------------------------------------------------------
# Against transformers: random GPT-2s saved by save_pretrained.


@pytest.fixture(scope="module")
def hf():
  """torch and transformers (and tokenizers, which transformers installs), or a skip (a failure under CI=true)."""
  try:
    import tokenizers as hf_tokenizers  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    unavailable(f"{error.name} is not installed (pip install -r requirements-dev.txt)")
  transformers.logging.set_verbosity_error()  # its warnings of a vocabulary without GPT-2's token 50256
  return torch, transformers, hf_tokenizers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "text.txt"
  rng = np.random.default_rng(0)
  words = CORPUS_LINE.split(" ")
  path.write_text("".join(" ".join(rng.choice(words, 9)) + "\n" for _ in range(300)), encoding="utf-8")
  return str(path)


@pytest.fixture(scope="module")
def bpe_files(hf, corpus, tmp_path_factory):
  """vocab.json + merges.txt, and tokenizer.json, of a byte-level BPE that Hugging Face's tokenizers learns."""
  _, _, hf_tokenizers = hf
  learner = hf_tokenizers.ByteLevelBPETokenizer()
  with open(corpus, encoding="utf-8") as f:
    learner.train_from_iterator([f.read(), *SAMPLES], vocab_size=400, min_frequency=2,
                                special_tokens=["<|endoftext|>"], show_progress=False)
  folder = str(tmp_path_factory.mktemp("bpe"))
  learner.save_model(folder)  # vocab.json, merges.txt
  learner.save(os.path.join(folder, "tokenizer.json"))
  return folder


@pytest.fixture(scope="module")
def reference_tokenizer(hf, bpe_files):
  """transformers' GPT2Tokenizer of those files."""
  return hf[1].GPT2Tokenizer(os.path.join(bpe_files, "vocab.json"), os.path.join(bpe_files, "merges.txt"))


@pytest.fixture(scope="module")
def checkpoints(hf, bpe_files, reference_tokenizer, tmp_path_factory):
  """{size: (folder, model)}: GPT2LMHeadModels from seeded random weights, with the tokenizer saved beside them.

  Weights of std 0.2 instead of GPT-2's 0.02, so logits spread over several units and greedy decoding varies
  (at 0.02 the logits are near-uniform). The four-head folder holds vocab.json + merges.txt, the three-head one
  only tokenizer.json, so both ways of reading the tokenizer are imported.
  """
  torch, transformers, _ = hf
  found = {}
  for index, (size, (width, heads)) in enumerate(SIZES.items()):
    torch.manual_seed(index)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(reference_tokenizer), n_positions=CONTEXT, n_embd=width, n_layer=2, n_head=heads,
        initializer_range=0.2, bos_token_id=None, eos_token_id=None)).eval()
    folder = str(tmp_path_factory.mktemp(size))
    model.save_pretrained(folder)
    for name in ("vocab.json", "merges.txt") if size == "four_heads" else ("tokenizer.json",):
      shutil.copy(os.path.join(bpe_files, name), folder)
    found[size] = (folder, model)
  return found


@pytest.fixture(scope="module")
def imported(checkpoints, corpus, tfds_data_dir, tmp_path_factory):
  """{size: its workdir}, imported in this process, evaluating on the corpus."""
  runs = tmp_path_factory.mktemp("runs")
  return {size: hugging_face.import_checkpoint(folder, str(runs / size), _config(corpus, tfds_data_dir))["workdir"]
          for size, (folder, _) in checkpoints.items()}


@pytest.mark.slow
@pytest.mark.parametrize("size, scan_layers", [("four_heads", False), ("three_heads", False), ("three_heads", True)])
def test_logits_equal_transformers(hf, checkpoints, imported, size, scan_layers, tmp_path):
  torch = hf[0]
  folder, reference = checkpoints[size]
  workdir = imported[size]
  if scan_layers:  # the blocks' parameters stacked on a layer axis, as nn.scan wants them
    workdir = hugging_face.import_checkpoint(folder, str(tmp_path / "run"), _config(scan_layers=True))["workdir"]
  model, params, step = checkpoint.load_model(workdir)
  assert step == 0 and model.config.scan_layers == scan_layers
  tokens_BL = np.random.default_rng(0).integers(0, reference.config.vocab_size, (2, CONTEXT))
  ours_BLV = np.asarray(model.apply({"params": params}, tokens_BL))
  with torch.no_grad():
    theirs_BLV = reference(torch.tensor(tokens_BL)).logits.numpy()
  assert np.abs(theirs_BLV).max() > 2.0  # logits that differ, not a near-uniform distribution
  np.testing.assert_allclose(ours_BLV, theirs_BLV, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_greedy_sampling_with_the_cache_equals_transformers_generate(hf, checkpoints, imported):
  torch = hf[0]
  _, reference = checkpoints["three_heads"]
  model, params, _ = checkpoint.load_model(imported["three_heads"])
  prompt = tokenizers.load_from_workdir(imported["three_heads"]).encode("the king said")
  new = CONTEXT - len(prompt)  # up to the full context, all of it decoded with the cache
  ours = list(sample.generate(model, params, prompt, max_new_tokens=new, temperature=0))
  with torch.no_grad():
    generated = reference.generate(torch.tensor(prompt[None]), max_new_tokens=new, do_sample=False, pad_token_id=0)
    top2 = reference(generated[:, :-1]).logits[0, len(prompt) - 1:].topk(2).values
  theirs = generated[0, len(prompt):].tolist()
  assert ours == theirs
  # The comparison means something: varied tokens, none chosen by a margin that rounding could flip.
  assert len(set(theirs)) >= 5 and float((top2[:, 0] - top2[:, 1]).min()) > 1e-3


def _random_texts() -> list[str]:
  """Seeded strings of the corpus's characters and a few others: words the merges split in many ways."""
  rng = np.random.default_rng(0)
  alphabet = sorted(set(CORPUS_LINE + "  \n\t'é😀日"))
  return ["".join(rng.choice(alphabet, rng.integers(1, 40))) for _ in range(200)]


@pytest.mark.slow
def test_the_tokenizer_is_saved_in_the_workdir_and_encodes_as_transformers(reference_tokenizer, imported):
  reference = reference_tokenizer
  with open(os.path.join(imported["three_heads"], "config.json"), encoding="utf-8") as f:
    data = json.load(f)["data"]
  assert (data["tokenizer"], data["tokenizer_dir"]) == ("gpt2", os.path.join(imported["three_heads"], "tokenizer"))
  for size, workdir in imported.items():  # read from vocab.json + merges.txt, and from tokenizer.json
    assert sorted(os.listdir(os.path.join(workdir, "tokenizer"))) == ["merges.txt", "tokenizer.json", "vocab.json"]
    ours = tokenizers.load_from_workdir(workdir)
    assert isinstance(ours, tokenizers.GPT2Tokenizer) and ours.vocab_size == len(reference), size
    for sample_text in SAMPLES + _random_texts():
      ids = ours.encode(sample_text).tolist()
      assert ids == reference(sample_text)["input_ids"], (size, sample_text)
      assert ours.decode(ids) == sample_text == reference.decode(ids)
  assert len(ours.encode(CORPUS_LINE)) < 0.5 * len(CORPUS_LINE.encode())  # the merges merge


def _run(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                        check=False, env=env)


@pytest.mark.slow
def test_import_then_evaluate_and_sample_give_transformers_loss_and_text(hf, checkpoints, reference_tokenizer, corpus,
                                                                        tfds_data_dir, tmp_path):
  """The commands as a user runs them: the imported workdir evaluates to transformers' loss on the same windows."""
  torch = hf[0]
  folder, reference = checkpoints["four_heads"]
  workdir = str(tmp_path / "gpt2")
  done = _run("experiments.import_hf", f"--checkpoint={folder}", f"--workdir={workdir}",
              f"--config.data.seq_len={CONTEXT}", "--config.data.dataset=text_files",
              f"--config.data.text_files={corpus}", f"--config.data.data_dir={tfds_data_dir}")
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads(done.stdout)["parameters"] == sum(p.numel() for p in reference.parameters())

  loss = evaluate.evaluate(workdir)["eval/loss"]
  # transformers' loss over the same windows: evaluation predicts every token of the validation text once, in
  # consecutive windows of CONTEXT inputs.
  builder = text.prepare_builder(text.TEXT_FILES, tfds_data_dir, text_files=corpus, validation_fraction=0.1)
  tokens = reference_tokenizer("".join(text.split_texts(builder, "validation")))["input_ids"]
  total = 0.0
  with torch.no_grad():
    for start in range(0, len(tokens) - 1, CONTEXT):
      window = torch.tensor([tokens[start:start + CONTEXT + 1]])
      total += float(torch.nn.functional.cross_entropy(reference(window[:, :-1]).logits[0], window[0, 1:],
                                                       reduction="sum"))
  assert math.isclose(loss, total / (len(tokens) - 1), rel_tol=1e-5), (loss, total / (len(tokens) - 1))

  done = _run("experiments.sample", f"--workdir={workdir}", "--prompt=the king", "--max_new_tokens=12",
              "--temperature=0")
  assert done.returncode == 0, done.stderr[-3000:]
  prompt = torch.tensor([reference_tokenizer("the king")["input_ids"]])
  with torch.no_grad():
    new = reference.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, prompt.shape[1]:]
  assert done.stdout == "the king" + reference_tokenizer.decode(new.tolist()) + "\n"


@pytest.mark.slow
def test_fine_tuning_starts_from_the_imported_parameters(imported, tmp_path):
  """restore_from=an imported workdir: one step at a learning rate of 1e-7 leaves GPT-2's parameters in place."""
  source = imported["three_heads"]
  with open(os.path.join(source, "config.json"), encoding="utf-8") as f:
    config = ConfigDict(json.load(f))  # its model, and its text through GPT-2's tokenizer
  config.train.update({"steps": 1, "batch_size": 8, "log_every": 1})
  config.optimizer.update({"learning_rate": 1e-7, "end_learning_rate": 0.0, "warmup_steps": 0})
  config.checkpoint.update({"restore_from": source, "async_save": False})
  config.eval.max_batches = 1
  runner.train_and_evaluate(config, str(tmp_path / "fine_tuned"))
  _, tuned, step = checkpoint.load_model(str(tmp_path / "fine_tuned"))
  _, original, _ = checkpoint.load_model(source)
  assert step == 1
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5), tuned, original)
  assert tokenizers.load_from_workdir(str(tmp_path / "fine_tuned")).vocab_size == config.model.vocab_size
  # A run in the imported workdir itself has nothing to resume: it is told where to train instead.
  config.checkpoint.restore_from = ""
  with pytest.raises(ConfigError, match="holds a model's parameters alone.*restore_from="):
    runner.train_and_evaluate(config, source)


@pytest.mark.slow  # the command imports JAX: ~3 s of CPU
def test_a_hub_name_offline_is_one_line_and_status_2(tmp_path):
  offline = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))  # never a download, even online
  done = _run("experiments.import_hf", "--checkpoint=gpt2", f"--workdir={tmp_path / 'run'}", env=offline)
  lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(("I", "W"))]
  assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
  # Without huggingface_hub installed, the line says to install it instead.
  assert lines[0].startswith("error: --checkpoint=gpt2: no such folder") and "Hugging Face hub" in lines[0], lines
  assert not (tmp_path / "run").exists()

"""Hugging Face GPT-2 checkpoints as workdirs of this project: sizes, parameters in the factored layout, tokenizer.

A checkpoint is a folder as `save_pretrained` writes it (config.json, model.safetensors or its shards with
model.safetensors.index.json, and the tokenizer's vocab.json + merges.txt or tokenizer.json), or a hub name
(`gpt2`, `openai-community/gpt2-medium`) that huggingface_hub downloads. Safetensors are read here, without
torch: an 8-byte little-endian header length, a JSON header (each tensor's dtype, shape and byte range), then
the raw little-endian data.

Hugging Face's GPT-2 keeps its projections as Conv1D weights, stored [in, out], so x @ W needs no transpose:
  h.i.attn.c_attn   [D, 3D]  columns [0, D) queries, [D, 2D) keys, [2D, 3D) values, each head h at h*K..h*K+K-1:
                             query, key and value_down [D, H, K] (R = K), their biases [H, K]
  h.i.attn.c_proj   [D, D]   rows are the heads' concatenated values: value_up [H, K, D], its bias value_up_bias
  h.i.mlp.c_fc, c_proj       mlp up [D, F] and down [F, D] with their biases
  h.i.ln_1, ln_2, ln_f       attention_norm, mlp_norm, final_norm (scale, bias)
  wte [V, D], wpe [T, D]     embed.embedding, position_embedding; the unembedding is wte, tied (lm_head when not)
Every weight maps as it is, only split or reshaped, so the imported model computes GPT-2's logits up to
float rounding (tests/test_import_hf.py compares them with transformers').
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from ml_collections import ConfigDict

from experiments import checkpoint, validation
from experiments.data import byte_pair, tokenizers
from experiments.files import CONFIG_FILE, write_json
from transformer import ModelConfig, TransformerLM, model_config_from

HF_CONFIG, WEIGHTS, WEIGHTS_INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")
# GPT-2's MLP activation: the tanh approximation of GELU, as transformer/model.py computes it (both names).
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
_DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
# Buffers older GPT-2 checkpoints store beside the weights: the causal mask, which the model builds itself.
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_FILES = [HF_CONFIG, "*.safetensors", WEIGHTS_INDEX, byte_pair.VOCAB_FILE, byte_pair.MERGES_FILE,
              byte_pair.HF_TOKENIZER_FILE]


class ImportFailure(ValueError):
  """The checkpoint cannot be imported: one line naming the file (and the tensor or key) and what is wrong."""


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The tensors of one safetensors file as float32 arrays (F32 ones mapped from the file, not copied).

  Raises:
    ImportFailure: the file is truncated, its header is not JSON, or a tensor's dtype, shape or byte range is
      wrong (naming the tensor).
  """
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    length = int.from_bytes(f.read(8), "little")
    if size < 8 or length > size - 8:
      raise ImportFailure(f"{path}: a header of {length} bytes in a file of {size}: truncated or not safetensors")
    try:
      header = json.loads(f.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError):
      raise ImportFailure(f"{path}: the header is not JSON: the file is corrupted or not safetensors") from None
  if not isinstance(header, dict):
    raise ImportFailure(f"{path}: the header is not a JSON object: the file is corrupted or not safetensors")
  data = np.memmap(path, np.uint8, mode="r", offset=8 + length) if size > 8 + length else np.zeros(0, np.uint8)
  tensors = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype, shape, (begin, end) = _DTYPES.get(entry["dtype"]), [int(n) for n in entry["shape"]], entry["data_offsets"]
    except (KeyError, TypeError, ValueError):
      raise ImportFailure(f"{path}: tensor {name}: its header entry lacks dtype, shape or data_offsets") from None
    if dtype is None:
      raise ImportFailure(f"{path}: tensor {name} has dtype {entry['dtype']}; readable: {', '.join(_DTYPES)}")
    needed = math.prod(shape) * dtype.itemsize
    if not 0 <= begin <= end <= len(data) or end - begin != needed:
      raise ImportFailure(f"{path}: tensor {name} ({entry['dtype']} {shape}, {needed} bytes) has the bytes "
                          f"[{begin}, {end}) of {len(data)}: the file is truncated or corrupted")
    raw = data[begin:end].view(dtype).reshape(shape)
    if entry["dtype"] == "BF16":  # the upper half of a float32
      raw = (raw.astype(np.uint32) << 16).view(np.float32)
    tensors[name] = raw if raw.dtype == np.float32 else raw.astype(np.float32)
  return tensors


def read_weights(folder: str) -> tuple[dict[str, np.ndarray], str]:
  """All tensors of a checkpoint folder (one file, or the shards its index lists), and the file(s) they came from."""
  index = os.path.join(folder, WEIGHTS_INDEX)
  if os.path.isfile(index):
    with open(index, encoding="utf-8") as f:
      try:
        files = sorted(set(json.load(f)["weight_map"].values()))
      except (json.JSONDecodeError, KeyError, AttributeError):
        raise ImportFailure(f"{index}: not a safetensors index (no weight_map)") from None
    tensors = {}
    for name in files:
      path = os.path.join(folder, name)
      if not os.path.isfile(path):
        raise ImportFailure(f"{path} is missing (listed in {index})")
      tensors.update(read_safetensors(path))
    return tensors, index
  path = os.path.join(folder, WEIGHTS)
  if not os.path.isfile(path):
    others = [n for n in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack") if os.path.exists(os.path.join(
        folder, n))]
    also = f" (it has {others[0]}, which needs its framework to read: save the model with safe_serialization)" \
        if others else ""
    raise ImportFailure(f"{path} is missing{also}")
  return read_safetensors(path), path


def model_section(hf: Mapping[str, Any], path: str) -> dict[str, Any]:
  """The `model` section of this project that is the GPT-2 a Hugging Face config.json describes.

  Raises:
    ImportFailure: the config is not GPT-2's, or asks for something GPT-2's architecture here lacks (naming the key).
  """
  architectures = list(hf.get("architectures") or ["GPT2LMHeadModel"])
  if hf.get("model_type") != "gpt2" or not set(architectures) <= set(ARCHITECTURES):
    raise ImportFailure(f"{path}: model_type {hf.get('model_type')!r}, architectures {architectures}: only GPT-2 "
                        f"imports (model_type 'gpt2', {' or '.join(ARCHITECTURES)})")
  refused = {"activation_function": (hf.get("activation_function", "gelu_new") not in ACTIVATIONS,
                                     f"the MLP here uses GPT-2's tanh GELU ({' or '.join(ACTIVATIONS)})"),
             "scale_attn_by_inverse_layer_idx": (bool(hf.get("scale_attn_by_inverse_layer_idx")),
                                                 "every layer here scales scores by 1/sqrt(K) alone"),
             "add_cross_attention": (bool(hf.get("add_cross_attention")), "a decoder here attends to itself only")}
  for key, (bad, why) in refused.items():
    if bad:
      raise ImportFailure(f"{path}: {key}={hf.get(key)!r} is not supported: {why}")
  sizes = {}
  for key in ("vocab_size", "n_positions", "n_layer", "n_embd", "n_head"):
    value = hf.get(key, hf.get("n_ctx") if key == "n_positions" else None)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ImportFailure(f"{path}: {key}={value!r}: expected a positive integer")
    sizes[key] = value
  if sizes["n_embd"] % sizes["n_head"]:
    raise ImportFailure(f"{path}: n_embd={sizes['n_embd']} is not a multiple of n_head={sizes['n_head']}")
  return {"vocab_size": sizes["vocab_size"], "max_len": sizes["n_positions"], "num_layers": sizes["n_layer"],
          "d_model": sizes["n_embd"], "num_heads": sizes["n_head"], "num_kv_heads": None, "head_dim": None,
          "value_mode": "factored", "value_rank": None, "mlp_dim": hf.get("n_inner") or 4 * sizes["n_embd"],
          "mask": "causal", "window": 0, "prefix_length": 0,
          "score_scale": "rsqrt" if hf.get("scale_attn_weights", True) else "none", "positions": "learned",
          "post_ln": False, "tie_embeddings": bool(hf.get("tie_word_embeddings", True)), "use_bias": True,
          "layer_norm_epsilon": float(hf.get("layer_norm_epsilon", 1e-5))}


class _Tensors:
  """Takes each expected tensor once by its GPT-2 name, checking its shape; what is never taken is left over.

  Messages name a tensor as the file does: GPT2LMHeadModel saves its transformer under "transformer.",
  GPT2Model (and the hub's gpt2) without it.
  """

  def __init__(self, tensors: Mapping[str, np.ndarray], path: str):
    self._prefix = "transformer." if any(name.startswith("transformer.") for name in tensors) else ""
    self._tensors = {name.removeprefix(self._prefix): array for name, array in tensors.items()
                     if not _MASK_BUFFER.search(name)}
    self._path = path

  def _stored(self, name: str) -> str:
    return name if name.startswith("lm_head.") else self._prefix + name

  def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in self._tensors:
      raise ImportFailure(f"{self._path}: tensor {self._stored(name)} is missing")
    array = self._tensors.pop(name)
    if tuple(array.shape) != shape:
      raise ImportFailure(f"{self._path}: tensor {self._stored(name)} has shape {list(array.shape)}, but config.json's "
                          f"sizes make it {list(shape)}")
    return array

  def take_if_present(self, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    return self.take(name, shape) if name in self._tensors else None

  def check_all_taken(self) -> None:
    if self._tensors:
      name = sorted(self._tensors)[0]
      raise ImportFailure(f"{self._path}: tensor {self._stored(name)} is not part of a GPT-2 as config.json describes "
                          f"it ({len(self._tensors)} such tensors)")


def _block_params(tensors: _Tensors, i: int, c: ModelConfig) -> dict[str, Any]:
  d, h, k, f = c.d_model, c.num_heads, c.key_dim, c.hidden_dim
  prefix = f"h.{i}."

  def norm(name: str) -> dict[str, np.ndarray]:
    return {"scale": tensors.take(f"{prefix}{name}.weight", (d,)), "bias": tensors.take(f"{prefix}{name}.bias", (d,))}

  qkv = tensors.take(f"{prefix}attn.c_attn.weight", (d, 3 * d))
  qkv_bias = tensors.take(f"{prefix}attn.c_attn.bias", (3 * d,))
  attention = {}
  for index, name in enumerate(("query", "key", "value_down")):
    attention[name] = qkv[:, index * d:(index + 1) * d].reshape(d, h, k)
    attention[f"{name}_bias"] = qkv_bias[index * d:(index + 1) * d].reshape(h, k)
  attention["value_up"] = tensors.take(f"{prefix}attn.c_proj.weight", (d, d)).reshape(h, k, d)
  attention["value_up_bias"] = tensors.take(f"{prefix}attn.c_proj.bias", (d,))
  mlp = {"up": tensors.take(f"{prefix}mlp.c_fc.weight", (d, f)),
         "up_bias": tensors.take(f"{prefix}mlp.c_fc.bias", (f,)),
         "down": tensors.take(f"{prefix}mlp.c_proj.weight", (f, d)),
         "down_bias": tensors.take(f"{prefix}mlp.c_proj.bias", (d,))}
  return {"attention_norm": norm("ln_1"), "attention": attention, "mlp_norm": norm("ln_2"), "mlp": mlp}


def gpt2_params(tensors: Mapping[str, np.ndarray], c: ModelConfig, path: str) -> dict[str, Any]:
  """The parameters of TransformerLM(c), laid out as model.init lays them out, from GPT-2's tensors.

  Raises:
    ImportFailure: a tensor is missing, has another shape, or is not GPT-2's (naming it and `path`).
  """
  taken = _Tensors(tensors, path)
  v, d = c.vocab_size, c.d_model
  embedding = taken.take("wte.weight", (v, d))
  params: dict[str, Any] = {"embed": {"embedding": embedding},
                            "position_embedding": taken.take("wpe.weight", (c.max_len, d))}
  blocks = [_block_params(taken, i, c) for i in range(c.num_layers)]
  if c.scan_layers:
    params["blocks"] = {"block": jax.tree.map(lambda *layers: np.stack(layers), *blocks)}
  else:
    params.update({f"block_{i}": block for i, block in enumerate(blocks)})
  params["final_norm"] = {"scale": taken.take("ln_f.weight", (d,)), "bias": taken.take("ln_f.bias", (d,))}
  head = taken.take_if_present("lm_head.weight", (v, d))
  if c.tie_embeddings:
    if head is not None and not np.array_equal(head, embedding):
      raise ImportFailure(f"{path}: tensor lm_head.weight differs from wte.weight, but config.json ties them "
                          f"(tie_word_embeddings)")
  elif head is None:
    raise ImportFailure(f"{path}: tensor lm_head.weight is missing (config.json unties it from wte.weight)")
  else:
    params["unembed"] = head.T
  taken.check_all_taken()
  expected = nn.unbox(jax.eval_shape(lambda: TransformerLM(c).init(jax.random.key(0), np.zeros((1, 1), np.int32))))
  # A mismatch here is a bug of this mapping, not a fault of the checkpoint.
  assert jax.tree.map(lambda x: x.shape, expected["params"]) == jax.tree.map(lambda x: x.shape, params)
  return params


def read_tokenizer(folder: str, vocab_size: int) -> tokenizers.GPT2Tokenizer:
  """The checkpoint's tokenizer: vocab.json + merges.txt, else Hugging Face's tokenizer.json.

  Raises:
    ImportFailure: neither is there, they do not make a byte-level BPE, or they have more tokens than the model.
  """
  try:
    if os.path.isfile(os.path.join(folder, byte_pair.VOCAB_FILE)):
      encoding = byte_pair.read_vocab_and_merges(folder)
    elif os.path.isfile(os.path.join(folder, byte_pair.HF_TOKENIZER_FILE)):
      encoding = byte_pair.read_hf_tokenizer_json(os.path.join(folder, byte_pair.HF_TOKENIZER_FILE))
    else:
      raise ImportFailure(f"{os.path.join(folder, byte_pair.VOCAB_FILE)} is missing, and so is "
                          f"{byte_pair.HF_TOKENIZER_FILE}: save the tokenizer beside the model "
                          f"(tokenizer.save_pretrained)")
  except (OSError, ValueError) as error:
    raise ImportFailure(str(error)) from None
  if encoding.vocab_size > vocab_size:
    raise ImportFailure(f"{folder}: the tokenizer has {encoding.vocab_size} tokens, more than the {vocab_size} of "
                        f"config.json's vocab_size")
  return tokenizers.GPT2Tokenizer(encoding)


def local_folder(checkpoint_name: str) -> str:
  """The folder of a checkpoint given as a path, or downloaded (its model and tokenizer files) for a hub name.

  Raises:
    ImportFailure: not a folder and not a hub name, or the download failed (offline: one line saying so).
  """
  path = os.path.expanduser(checkpoint_name)
  if os.path.isdir(path):
    return path
  if os.path.exists(path):
    raise ImportFailure(f"--checkpoint={checkpoint_name} is a file: give the folder that holds {HF_CONFIG} and "
                        f"{WEIGHTS}")
  if not _HUB_NAME.match(checkpoint_name) or checkpoint_name.startswith((".", "~")):
    raise ImportFailure(f"--checkpoint={checkpoint_name}: no such folder, nor a hub name such as gpt2 or "
                        f"openai-community/gpt2-medium")
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top  (only a hub name needs it)
  except ImportError:
    raise ImportFailure(f"--checkpoint={checkpoint_name}: no such folder; to download it from the Hugging Face "
                        f"hub, pip install huggingface_hub") from None
  try:
    return huggingface_hub.snapshot_download(checkpoint_name, allow_patterns=_HUB_FILES)
  except Exception as error:  # pylint: disable=broad-except  (network, authentication and lookup errors alike)
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    raise ImportFailure(f"--checkpoint={checkpoint_name}: no such folder, and downloading it from the Hugging Face "
                        f"hub failed (no internet here, or no such model?): {type(error).__name__}: {reason}"
                        ) from None


def import_checkpoint(checkpoint_name: str, workdir: str, config: ConfigDict) -> dict[str, Any]:
  """Writes a workdir holding the GPT-2 of a Hugging Face checkpoint, at step 0.

  The workdir's config is `config` with the checkpoint's model section (dtype, attention implementation, dropout
  and scan_layers stay the config's) and text data through GPT-2's tokenizer, saved in workdir/tokenizer/; its
  checkpoint holds the parameters alone, which evaluation, sampling, inspection and `checkpoint.restore_from`
  read. Everything is read and checked before anything is written.

  Args:
    checkpoint_name: a checkpoint folder or a hub name.
    workdir: the new workdir (it must not hold a run).
    config: the run config whose other sections the workdir keeps (its data section chooses what evaluate reads).

  Returns:
    {"workdir", "source": the folder read, "parameters", "vocab_size", "model": the model section}.

  Raises:
    ImportFailure: one line naming the file, tensor or key at fault.
  """
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise ImportFailure(f"--workdir={workdir} exists and is not an empty folder: give a new one")
  folder = local_folder(checkpoint_name)
  hf_config_path = os.path.join(folder, HF_CONFIG)
  if not os.path.isfile(hf_config_path):
    raise ImportFailure(f"{hf_config_path} is missing")
  try:
    with open(hf_config_path, encoding="utf-8") as f:
      hf_config = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise ImportFailure(f"{hf_config_path}: not valid JSON ({error})") from None
  section = model_section(hf_config, hf_config_path)
  tokenizer = read_tokenizer(folder, section["vocab_size"])
  tensors, weights_path = read_weights(folder)
  config = ConfigDict(config.to_dict())
  config.model.update(section)
  config.data.update({"task": "text", "tokenizer": "gpt2", "vocab_size": 0,
                      "tokenizer_dir": os.path.join(os.path.abspath(workdir), tokenizers.TOKENIZER_DIR)})
  if config.data.seq_len > section["max_len"]:
    raise ImportFailure(f"data.seq_len={config.data.seq_len} is longer than the checkpoint's context (n_positions="
                        f"{section['max_len']} in {hf_config_path}): give --config.data.seq_len={section['max_len']} "
                        f"or less")
  try:
    model_config = model_config_from(config.model)
  except ValueError as error:  # a knob the config keeps (dtype, attention_impl...) does not fit
    raise ImportFailure(f"the workdir's config would be invalid: {error}") from None
  params = gpt2_params(tensors, model_config, weights_path)

  # Written beside the workdir and renamed into place: an import that fails leaves no half a workdir.
  workdir = os.path.abspath(workdir)
  os.makedirs(os.path.dirname(workdir), exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(workdir)}.importing-", dir=os.path.dirname(workdir))
  try:
    tokenizer.save(os.path.join(staging, tokenizers.TOKENIZER_DIR))
    staged = ConfigDict(config.to_dict())
    staged.data.tokenizer_dir = os.path.join(staging, tokenizers.TOKENIZER_DIR)
    errors = validation.validate(staged)
    if errors:
      raise ImportFailure(f"the workdir's config would be invalid: {errors[0]}")
    device = jax.local_devices()[0]
    checkpoint.save_params(staging, jax.tree.map(lambda x: jax.device_put(np.ascontiguousarray(x), device), params))
    write_json(os.path.join(staging, CONFIG_FILE), config.to_dict())
    if os.path.isdir(workdir):
      os.rmdir(workdir)  # empty (checked above): rename needs the name free
    os.rename(staging, workdir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  return {"workdir": workdir, "source": folder, "parameters": count, "vocab_size": tokenizer.vocab_size,
          "model": section}

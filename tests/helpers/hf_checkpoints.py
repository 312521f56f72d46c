"""Hugging Face GPT-2 checkpoint folders written without torch or transformers, for the import's refusals.

The safetensors writer follows the format's description (8-byte little-endian header length, a JSON header of
each tensor's dtype, shape and byte range, padded with spaces, then the raw data), not the reader under test.
"""

from __future__ import annotations

import json
import os

import numpy as np

from experiments.data import byte_pair


def write_safetensors(path: str, tensors: dict[str, np.ndarray], dtypes: dict[str, str] | None = None) -> None:
  """Writes tensors to `path` in the safetensors format.

  Args:
    path: the file.
    tensors: {name: array}.
    dtypes: {name: "F32" (the default), "F16", "F64" or "BF16"}; BF16 keeps the upper 16 bits of each float32.
  """
  header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
  for name, array in tensors.items():
    dtype = (dtypes or {}).get(name, "F32")
    if dtype == "BF16":
      blob = (np.ascontiguousarray(array, "<f4").view("<u4") >> 16).astype("<u2").tobytes()
    else:
      blob = np.ascontiguousarray(array, {"F32": "<f4", "F16": "<f2", "F64": "<f8"}[dtype]).tobytes()
    header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
  text = json.dumps(header).encode()
  text += b" " * (-len(text) % 8)
  with open(path, "wb") as f:
    f.write(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def gpt2_config(vocab_size: int, n_positions: int = 32, n_embd: int = 32, n_layer: int = 2, n_head: int = 4) -> dict:
  """A config.json of GPT2LMHeadModel with these sizes (the keys the import reads, as transformers writes them)."""
  return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "activation_function": "gelu_new",
          "vocab_size": vocab_size, "n_positions": n_positions, "n_embd": n_embd, "n_layer": n_layer,
          "n_head": n_head, "n_inner": None, "layer_norm_epsilon": 1e-5, "scale_attn_weights": True,
          "scale_attn_by_inverse_layer_idx": False, "tie_word_embeddings": True}


def gpt2_tensors(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """Random tensors named and shaped as GPT2LMHeadModel.save_pretrained writes them (Conv1D weights [in, out])."""
  rng = np.random.default_rng(seed)
  d, v, t = config["n_embd"], config["vocab_size"], config["n_positions"]
  shapes = {"transformer.wte.weight": (v, d), "transformer.wpe.weight": (t, d)}
  for i in range(config["n_layer"]):
    for name, shape in (("ln_1.weight", (d,)), ("ln_1.bias", (d,)), ("attn.c_attn.weight", (d, 3 * d)),
                        ("attn.c_attn.bias", (3 * d,)), ("attn.c_proj.weight", (d, d)), ("attn.c_proj.bias", (d,)),
                        ("ln_2.weight", (d,)), ("ln_2.bias", (d,)), ("mlp.c_fc.weight", (d, 4 * d)),
                        ("mlp.c_fc.bias", (4 * d,)), ("mlp.c_proj.weight", (4 * d, d)), ("mlp.c_proj.bias", (d,))):
      shapes[f"transformer.h.{i}.{name}"] = shape
  shapes.update({"transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)})
  return {name: rng.normal(0, 0.02, shape).astype(np.float32) for name, shape in shapes.items()}


def write_bpe(folder: str, merges: list[str]) -> int:
  """Writes vocab.json and merges.txt: the 256 byte pieces as ids 0-255, each merge's result, <|endoftext|> last.

  Args:
    folder: where to write them.
    merges: "a b" lines in rank order, pieces written with GPT-2's byte stand-ins ("Ġ" for a space).

  Returns:
    The vocabulary size.
  """
  vocab = {piece: i for i, piece in enumerate(byte_pair.BYTE_STAND_INS)}
  for merge in merges:
    vocab[merge.replace(" ", "")] = len(vocab)
  vocab[byte_pair.END_OF_TEXT] = len(vocab)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, byte_pair.VOCAB_FILE), "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(folder, byte_pair.MERGES_FILE), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "".join(f"{m}\n" for m in merges))
  return len(vocab)


def write_checkpoint(folder: str, config: dict, tensors: dict[str, np.ndarray], merges: list[str]) -> None:
  """A save_pretrained-like folder: config.json, model.safetensors, vocab.json and merges.txt."""
  write_bpe(folder, merges)
  with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f)
  write_safetensors(os.path.join(folder, "model.safetensors"), tensors)

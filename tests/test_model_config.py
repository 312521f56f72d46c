"""Tests of transformer/config.py: ModelConfig's derived sizes, its validation (each bad field named in the
message), and model_config_from."""

import dataclasses

import numpy as np
import pytest
from ml_collections import config_dict

from transformer.config import ModelConfig, model_config_from

pytestmark = pytest.mark.usefixtures("fast_compilation")


def test_derived_sizes():
  c = ModelConfig(vocab_size=10, max_len=16, d_model=64, num_heads=8)
  assert (c.kv_heads, c.key_dim, c.value_dim, c.hidden_dim) == (8, 8, 8, 256)
  assert c.scale == pytest.approx(1 / np.sqrt(8))
  assert c.is_causal
  c = dataclasses.replace(c, num_heads=4, num_kv_heads=2, value_rank=3, mlp_dim=10, score_scale="none", mask="none")
  assert (c.kv_heads, c.key_dim, c.value_dim, c.hidden_dim, c.scale) == (2, 16, 3, 10, 1.0)
  assert not c.is_causal
  c = dataclasses.replace(c, value_mode="full", value_rank=None, head_dim=5, score_scale=0.25)
  assert (c.key_dim, c.value_dim, c.scale) == (5, 64, 0.25)
  assert ModelConfig(vocab_size=10, max_len=16, score_scale="0.125").scale == 0.125


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(max_len=-1), "max_len"),
        (dict(num_layers=0), "num_layers"),
        (dict(d_model=2.5), "d_model"),
        (dict(num_heads=True), "num_heads"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(num_kv_heads=0), "num_kv_heads"),
        (dict(head_dim=-4), "head_dim"),
        (dict(value_rank=0), "value_rank"),
        (dict(mlp_dim=0), "mlp_dim"),
        (dict(num_heads=3), "num_heads"),  # 128 is not a multiple of 3
        (dict(num_kv_heads=3), "num_kv_heads"),  # does not divide 4
        (dict(num_kv_heads=8), "num_kv_heads"),  # more kv heads than heads
        (dict(mask="bidirectional"), "mask"),
        (dict(value_mode="low_rank"), "value_mode"),
        (dict(positions="alibi"), "positions"),
        (dict(attention_impl="flash"), "attention_impl"),
        (dict(dtype="float16"), "dtype"),
        (dict(remat_policy="everything", scan_layers=True), "remat_policy"),
        (dict(remat_policy="full"), "remat_policy"),  # needs scan_layers
        (dict(value_mode="full", value_rank=4), "value_rank"),
        (dict(mask="sliding_window"), "window"),  # window 0
        (dict(mask="sliding_window", window=-1), "window"),
        (dict(window=3), "window"),  # only for sliding_window
        (dict(mask="prefix"), "prefix_length"),  # prefix_length 0
        (dict(mask="prefix", prefix_length=65), "prefix_length"),  # > max_len
        (dict(prefix_length=2), "prefix_length"),  # only for prefix
        (dict(score_scale="sqrt"), "score_scale"),
        (dict(score_scale=0.0), "score_scale"),
        (dict(score_scale=-1.0), "score_scale"),
        (dict(score_scale=float("inf")), "score_scale"),
        (dict(positions="rope", head_dim=5), "head_dim"),  # rope rotates pairs
        (dict(dropout_rate=1.0), "dropout_rate"),
        (dict(dropout_rate=-0.1), "dropout_rate"),
        (dict(attention_dropout_rate=1.5), "attention_dropout_rate"),
        (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon"),
        (dict(init_std=-1.0), "init_std"),
        (dict(rope_base=1.0), "rope_base"),
    ],
)
def test_invalid_config_raises_naming_the_field(overrides, field):
  fields = dict(vocab_size=10, max_len=64)
  fields.update(overrides)
  # The message starts "model.<field>=" (one check names three fields: "model.a/b/c=").
  with pytest.raises(ValueError, match=rf"^model\.([a-z_]+/)*{field}(/[a-z_]+)*="):
    ModelConfig(**fields)


def test_valid_edge_configs():
  ModelConfig(vocab_size=1, max_len=1, num_layers=1, d_model=1, num_heads=1)
  ModelConfig(vocab_size=10, max_len=8, mask="prefix", prefix_length=8)
  ModelConfig(vocab_size=10, max_len=8, num_heads=4, num_kv_heads=1, positions="rope")
  ModelConfig(vocab_size=10, max_len=8, d_model=10, num_heads=3, head_dim=4)  # head_dim set: D % H is free


def test_model_config_from_mapping_and_config_dict():
  section = {"vocab_size": 10, "max_len": 16, "num_heads": 2, "num_kv_heads": None}
  assert model_config_from(section) == ModelConfig(vocab_size=10, max_len=16, num_heads=2)
  cd = config_dict.ConfigDict({"vocab_size": 10, "max_len": 16, "mask": "sliding_window", "window": 4})
  cd.num_kv_heads = config_dict.placeholder(int)
  assert model_config_from(cd) == ModelConfig(vocab_size=10, max_len=16, mask="sliding_window", window=4)


def test_model_config_from_rejects_unknown_and_missing_keys():
  with pytest.raises(ValueError, match=r"model\.num_head is not a model setting"):
    model_config_from({"vocab_size": 10, "max_len": 16, "num_head": 2})
  with pytest.raises(ValueError, match=r"model\.vocab_size is required"):
    model_config_from({"max_len": 16})
  with pytest.raises(ValueError, match=r"model\.max_len is required"):
    model_config_from({"vocab_size": 3, "max_len": None})
  with pytest.raises(ValueError, match=r"model\.mask="):
    model_config_from({"vocab_size": 3, "max_len": 4, "mask": "diagonal"})

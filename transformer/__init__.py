"""A library of pure Flax modules for studying attention: heads, masks, value factorization."""

from transformer.accounting import count_tree, flops_per_token, format_table, parameter_counts
from transformer.attention import MultiHeadAttention
from transformer.config import ModelConfig, model_config_from
from transformer.decoding import decode_step, init_cache
from transformer.masks import MaskSpec, mask_matrix
from transformer.model import TransformerLM

__all__ = [
    "MaskSpec",
    "ModelConfig",
    "MultiHeadAttention",
    "TransformerLM",
    "decode_step",
    "init_cache",
    "mask_matrix",
    "model_config_from",
    "count_tree",
    "flops_per_token",
    "format_table",
    "parameter_counts",
]

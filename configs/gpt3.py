"""The eight GPT-3 sizes of Table 2.1 of Brown et al. 2020, "Language Models are Few-Shot Learners".

Select one as `--config=configs/gpt3.py:<size>`, size in VARIANTS (small ... 175b). All sizes: context
2048, vocabulary 50257 (the GPT-2 BPE), learned positions, tied embeddings, biases, pre-LN, MLP 4D.

Where Table 2.1 is inconsistent, the values here are the ones whose total matches the stated size:
- XL: the table gives d_model 2048 with 24 heads of d_head 128, but 24 x 128 = 3072 != 2048 and 2048 / 24
  is not an integer. Taken literally (head_dim=128) the model has 1.52B parameters, not the stated 1.3B;
  16 heads of 128 (H K = D, as in every other row) gives 1,315,723,264 = 1.3B, so XL uses 16 heads here.
  (32 heads of 64 would count the same.)
- 13B: the table gives d_model 5140 with 40 heads of 128 (H K = 5120 != D). 5140 is likely a typo for
  5120, but both round to the stated 13B (5140: 12,936,488,380; 5120: 12,853,386,240), so the table's
  values are kept: head_dim=128 sets K apart from D / H, which the library supports.
- Sizes rounded loosely: medium's 350M counts 355,871,744 (GPT-2 medium's 354.8M plus 1024 more positions;
  GPT-2's own sizes were miscounted too, see gpt2.py); 13B is written "13.0B" and counts 12.94B; 175B is
  written "175.0B" and counts 174,604,259,328. All are within 2% of the stated size.
The other stated sizes (125M, 760M, 1.3B, 2.7B, 6.7B) are the counts rounded to their last stated digit.

GPT-3 alternates dense and locally banded sparse attention layers (as the Sparse Transformer); these
configs use dense causal attention in every layer. The parameter counts are the same; the attention
FLOPs of the sparse layers are lower than accounting.flops_per_token reports.
"""

from ml_collections import config_dict

from configs import base

# Table 2.1: (n_layers, d_model, n_heads, d_head, batch size in tokens, learning rate), and the stated size.
SIZES = {
    "small": (12, 768, 12, 64, 0.5e6, 6.0e-4),
    "medium": (24, 1024, 16, 64, 0.5e6, 3.0e-4),
    "large": (24, 1536, 16, 96, 0.5e6, 2.5e-4),
    "xl": (24, 2048, 16, 128, 1e6, 2.0e-4),  # the table's 24 heads replaced by 16: see the docstring
    "2.7b": (32, 2560, 32, 80, 1e6, 1.6e-4),
    "6.7b": (32, 4096, 32, 128, 2e6, 1.2e-4),
    "13b": (40, 5140, 40, 128, 2e6, 1.0e-4),  # d_model 5140 != 40 x 128: see the docstring
    "175b": (96, 12288, 96, 128, 3.2e6, 0.6e-4),
}
STATED_SIZES = {
    "small": 125e6, "medium": 350e6, "large": 760e6, "xl": 1.3e9, "2.7b": 2.7e9, "6.7b": 6.7e9, "13b": 13e9,
    "175b": 175e9,
}
VARIANTS = tuple(SIZES)

CONTEXT = 2048
# Appendix B: every model was trained on 300B tokens, with a linear warmup over the first 375M tokens and
# a cosine decay to 10% of the peak learning rate over 260B tokens (then constant at 10%).
TRAIN_TOKENS, WARMUP_TOKENS, DECAY_TOKENS = 300e9, 375e6, 260e9


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """The base config with the model and training of one GPT-3 size.

  Args:
    arg: the size, one of VARIANTS (the part after ':' in `--config=configs/gpt3.py:175b`).

  Returns:
    The config.

  Raises:
    ValueError: arg is not a GPT-3 size.
  """
  if arg not in SIZES:
    raise ValueError(f"configs/gpt3.py needs a size, e.g. --config=configs/gpt3.py:175b; got {arg!r}, "
                     f"expected one of {', '.join(VARIANTS)}")
  num_layers, d_model, num_heads, head_dim, batch_tokens, learning_rate = SIZES[arg]
  c = base.get_config()

  m = c.model
  m.vocab_size = 50257  # the GPT-2 byte-level BPE
  m.max_len = CONTEXT  # n_ctx
  m.num_layers = num_layers  # n_layers
  m.d_model = d_model  # d_model
  m.num_heads = num_heads  # n_heads
  m.head_dim = head_dim  # d_head (equal to d_model / n_heads except for 13B)
  m.value_mode = "factored"  # with R = K: value_down and value_up are GPT's value and output projections
  m.mlp_dim = 4 * d_model  # d_ff
  m.mask = "causal"
  m.positions = "learned"
  m.post_ln = False
  m.tie_embeddings = True
  m.use_bias = True
  m.init_std = 0.02

  c.data.seq_len = CONTEXT  # training sequences fill the context

  # "0.5M" ... "3.2M" tokens are read as multiples of 2^20 tokens: 256, 512, 1024 and 1536 sequences of
  # 2048 (3.2M is 1536 x 2048 = 3,145,728 tokens, the usual reading; 3.2e6 is not a whole number of them).
  sequences = {0.5e6: 256, 1e6: 512, 2e6: 1024, 3.2e6: 1536}[batch_tokens]
  tokens_per_step = sequences * CONTEXT
  # The paper also ramps the batch up from 32k tokens over the first 4-12B tokens: not modeled here.
  c.train.batch_size = sequences
  c.train.steps = round(TRAIN_TOKENS / tokens_per_step)  # 300B tokens

  o = c.optimizer
  o.learning_rate = learning_rate  # Table 2.1
  o.schedule = "cosine"
  o.warmup_steps = round(WARMUP_TOKENS / tokens_per_step)  # 375M tokens
  o.decay_steps = round(DECAY_TOKENS / tokens_per_step)  # 260B tokens
  o.end_learning_rate = learning_rate / 10  # decay to 10% of the peak
  o.b1 = 0.9  # Appendix B: Adam beta1 0.9, beta2 0.95, epsilon 1e-8
  o.b2 = 0.95
  o.eps = 1e-8
  o.weight_decay = 0.1  # Appendix B
  o.grad_clip = 1.0  # Appendix B: global norm clipped at 1.0
  return c

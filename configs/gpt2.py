"""The four GPT-2 sizes of Radford et al. 2019, "Language Models are Unsupervised Multitask Learners".

Select one as `--config=configs/gpt2.py:<size>`, size in VARIANTS (small, medium, large, xl). All sizes:
context 1024, vocabulary 50257, learned positions, tied embeddings, biases everywhere (LayerNorm too),
pre-LN with a final LayerNorm, MLP 4D with GELU (tanh approximation), init std 0.02 with the residual
projections scaled by 1/sqrt(2N).

The paper's Table 2 states 117M, 345M, 762M and 1542M parameters. These are known miscounts: the released
checkpoints have 124,439,808 / 354,823,168 / 774,030,080 / 1,557,611,200 parameters (e.g. Hugging Face
`gpt2` ... `gpt2-xl`, token and position embeddings included, the unembedding tied), and these configs
reproduce the released counts exactly (tests/test_accounting.py checks it).
"""

from ml_collections import config_dict

from configs import base

# (n_layer, d_model, n_head): Table 2 of the paper, heads from the released hparams.json.
SIZES = {
    "small": (12, 768, 12),
    "medium": (24, 1024, 16),
    "large": (36, 1280, 20),
    "xl": (48, 1600, 25),
}
STATED_SIZES = {"small": 117e6, "medium": 345e6, "large": 762e6, "xl": 1542e6}  # the paper's (miscounted)
RELEASED_SIZES = {"small": 124_439_808, "medium": 354_823_168, "large": 774_030_080, "xl": 1_557_611_200}
VARIANTS = tuple(SIZES)


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """The base config with the model of one GPT-2 size.

  Args:
    arg: the size, one of VARIANTS (the part after ':' in `--config=configs/gpt2.py:xl`).

  Returns:
    The config.

  Raises:
    ValueError: arg is not a GPT-2 size.
  """
  if arg not in SIZES:
    raise ValueError(f"configs/gpt2.py needs a size, e.g. --config=configs/gpt2.py:small; got {arg!r}, "
                     f"expected one of {', '.join(VARIANTS)}")
  num_layers, d_model, num_heads = SIZES[arg]
  c = base.get_config()

  m = c.model
  m.vocab_size = 50257  # byte-level BPE
  m.max_len = 1024  # n_ctx
  m.num_layers = num_layers  # n_layer
  m.d_model = d_model  # n_embd
  m.num_heads = num_heads  # n_head; head width 64 in every size
  m.value_mode = "factored"  # with R = K: value_down and value_up are GPT-2's value and c_proj maps
  m.mlp_dim = 4 * d_model
  m.mask = "causal"
  m.positions = "learned"
  m.post_ln = False
  m.tie_embeddings = True
  m.use_bias = True
  m.layer_norm_epsilon = 1e-5
  m.init_std = 0.02

  c.data.seq_len = 1024  # training sequences fill the context
  # The paper trains with a batch of 512 sequences; its learning rates were tuned per size and not reported.
  c.train.batch_size = 512
  return c

r"""nanoGPT's Shakespeare-character recipes: a GPT on the characters of Tiny Shakespeare.

  python -m experiments.train --config=configs/shakespeare_char.py --workdir=runs/shakespeare_char
  python -m experiments.train --config=configs/shakespeare_char.py:cpu --workdir=runs/shakespeare_char_cpu \
      --config.data.manual_dir=../shared/data/tinyshakespeare      # offline: a local copy of input.txt

The default is nanoGPT's `config/train_shakespeare_char.py` (val loss 1.4697 on one A100); `:cpu` is
the CPU variant its README gives (4 layers, 4 heads, width 128, context 64, batch 12, 2,000 steps,
no dropout; val loss about 1.88).

What matches nanoGPT: the architecture (pre-LN GPT, learned positions, tied embeddings, no biases,
residual projections initialized with std 0.02 / sqrt(2N)), dropout (the same rate on the attention
weights, the residual branches and the embeddings), AdamW with betas (0.9, 0.99), weight decay 0.1 on
every matrix including the embeddings (nanoGPT decays all parameters of rank 2), clipping at 1.0, 100
warmup steps then cosine decay to 1e-4, and the data: TFDS's `train` split is nanoGPT's training text
(the first 90% of input.txt) and `validation+test` its validation text.
What differs: the vocabulary has one more token (id 0, for characters the training text lacks);
training windows are drawn without replacement within an epoch; the validation loss is the mean
over every character of the validation text, not an estimate from random windows; GELU is tanh;
learned positions start at std 0.01 (GPT-2's), not 0.02.
"""

from configs import base

VARIANTS = ("gpu", "cpu")


def get_config(variant: str = "gpu"):
  """nanoGPT's train_shakespeare_char recipe; `cpu` selects its documented CPU variant."""
  c = base.get_config()
  c.data.task = "text"
  c.data.dataset = "tiny_shakespeare"
  c.data.tokenizer = "char"
  c.data.vocab_size = 0  # the characters of the training text
  c.data.eval_split = "validation+test"  # = nanoGPT's validation text

  m = c.model
  m.positions = "learned"
  m.tie_embeddings = True
  m.use_bias = False
  # GPT's value (D -> K per head) and output projection (K -> D) are value-down and value-up of rank K.
  m.value_mode = "factored"
  m.value_rank = None

  o = c.optimizer
  o.learning_rate = 1e-3
  o.end_learning_rate = 1e-4
  o.warmup_steps = 100
  o.schedule = "cosine"
  o.b1, o.b2 = 0.9, 0.99
  o.weight_decay = 0.1
  o.no_decay = "norms,biases"
  o.grad_clip = 1.0

  t = c.train
  c.checkpoint.best_metric = "eval/loss"
  if variant == "gpu":
    m.num_layers, m.num_heads, m.d_model = 6, 6, 384
    m.dropout_rate = 0.2
    m.attention_dropout_rate = 0.2  # nanoGPT drops attention weights at the same rate
    c.data.seq_len = 256
    t.batch_size = 64
    t.steps = 5_000
    t.eval_every = 250
  elif variant == "cpu":
    m.num_layers, m.num_heads, m.d_model = 4, 4, 128
    m.dropout_rate = 0.0
    c.data.seq_len = 64
    t.batch_size = 12
    t.steps = 2_000
    t.eval_every = 500
  else:
    raise ValueError(f"configs/shakespeare_char.py:{variant}: unknown variant; expected 'gpu' (default) or 'cpu'")
  t.log_every = 50
  t.checkpoint_every = t.eval_every
  return c

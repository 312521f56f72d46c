r"""A language model on the One Billion Word benchmark (TFDS `lm1b`), for accelerators.

  python -m experiments.train --config=configs/lm1b.py --workdir=runs/lm1b
  python -m experiments.train --config=configs/lm1b.py:small --workdir=runs/lm1b_small   # one GPU

TFDS downloads lm1b (about 1.7 GB) and prepares it on first use; the SentencePiece model is fit on
2M sampled training sentences, and both splits are tokenized once and cached in data_dir (tens of
minutes on one host; later runs reuse them). Sentences are joined by newlines into one stream, and
training reads random windows of it, so a window spans several sentences. lm1b has no validation
split: evaluation reads `test`. Not run on the project's CPU machine.
"""

from configs import base

VARIANTS = ("base", "small")


def get_config(variant: str = "base"):
  """A GPT-style model with a 32k SentencePiece vocabulary; `small` halves width and depth."""
  c = base.get_config()
  d = c.data
  d.task, d.dataset = "text", "lm1b"
  d.tokenizer, d.sentencepiece_type, d.vocab_size = "sentencepiece", "bpe", 32_000
  d.train_split, d.eval_split = "train", "test"
  d.seq_len = 256

  m = c.model
  m.positions = "rope"
  m.tie_embeddings = True
  m.use_bias = False
  m.dtype = "bfloat16"
  m.attention_impl = "auto"  # cuDNN flash attention where the variant allows
  m.scan_layers = True
  m.dropout_rate = 0.1
  if variant == "base":
    m.num_layers, m.d_model, m.num_heads = 8, 512, 8
  elif variant == "small":
    m.num_layers, m.d_model, m.num_heads = 4, 256, 4
  else:
    raise ValueError(f"configs/lm1b.py:{variant}: unknown variant; expected one of {VARIANTS}")

  o = c.optimizer
  o.learning_rate, o.end_learning_rate, o.warmup_steps = 1e-3, 1e-5, 2_000
  o.b2, o.weight_decay = 0.95, 0.1
  t = c.train
  t.steps, t.batch_size = 100_000, 256
  t.log_every, t.eval_every, t.checkpoint_every = 100, 5_000, 5_000
  c.eval.max_batches = 200  # of 256 windows: about 13M test tokens
  c.checkpoint.best_metric = "eval/bits_per_byte"
  return c

"""Masking on Shakespeare characters: causal, none, sliding windows and a prefix, then what sampling gives.

  python -m experiments.sweep --config=configs/sweeps/masking_text.py --workdir=runs/masking_text \
      --config.fixed.data.manual_dir=../shared/data/tinyshakespeare     # offline: a local copy of input.txt
  python -m experiments.sample --workdir=runs/masking_text/trials/<id> --prompt="ROMEO:"

On configs/shakespeare_char.py:cpu (4 layers, 4 heads, width 128, 64 characters of context), shortened to
STEPS steps. With mask "none" each position sees the next input, which is its target: the training and
eval losses (teacher-forced) fall towards 0 while sampling, which never has the next character, does not.
"""

from ml_collections import config_dict

from configs.sweeps import common

VARIANTS = common.SCALES
STEPS = 300

# (model.mask, model.window, model.prefix_length)
MASKS = [["causal", 0, 0], ["none", 0, 0], ["sliding_window", 8, 0], ["sliding_window", 32, 0], ["prefix", 0, 32]]


def get_config(scale: str | None = None):
  """The Shakespeare masking sweep at `scale` ('cpu' or 'accel')."""
  scale = common.check_scale(scale)
  c = common.sweep_config("masking_text")
  c.base = "configs/shakespeare_char.py:cpu" if scale == "cpu" else "configs/shakespeare_char.py:gpu"
  f = c.fixed
  f.data = config_dict.ConfigDict()
  f.data.manual_dir = ""  # where input.txt is when TFDS cannot download it (not part of the trial ids)
  f.train = config_dict.ConfigDict()
  f.eval = config_dict.ConfigDict()
  f.checkpoint = config_dict.ConfigDict()
  f.checkpoint.keep, f.checkpoint.keep_best = 1, 0
  if scale == "cpu":
    f.train.steps = STEPS
    f.train.eval_every = STEPS // 2
    f.train.checkpoint_every = STEPS // 2
    f.eval.max_batches = 40  # 40 x 12 windows of 64 characters: about a quarter of the validation text
  c.parameters = [{"paths": ["model.mask", "model.window", "model.prefix_length"], "values": MASKS}]
  c.metric = "eval/loss"
  c.direction = "minimize"
  c.replicates = 5  # the final eval loss of a mask with its interval over seeds
  c.vectorize = True  # a mask's seeds train as one population
  c.workers = 1
  return c

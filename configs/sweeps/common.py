"""The keys every sweep config has, with their defaults; each sweep file fills in what it varies.

A sweep config names a base run config, fixed overrides on it, the parameters to vary, the metric to
optimise and the sampler. `python -m experiments.sweep --config=configs/sweeps/<name>.py[:accel]` runs it;
see experiments/sweeps/space.py for the parameter formats.
"""

from ml_collections import config_dict

SCALES = ("cpu", "accel")


def sweep_config(name: str) -> config_dict.ConfigDict:
  """A sweep config with every key at its default; the caller sets base, fixed and parameters."""
  c = config_dict.ConfigDict()
  c.name = name  # Optuna study name (one storage can hold many studies)
  c.base = "configs/default.py"  # run config file the trials start from (with :arg for a variant)
  c.fixed = config_dict.ConfigDict()  # overrides of every trial, nested like the run config: fixed.train.steps
  # Parameters to vary, a list of dicts: {"path": p, "values": [...]} (grid values or choices);
  # {"paths": [p, q], "values": [[a, b], ...]} (paths zipped, changed together);
  # {"path": p, "low": x, "high": y, "log": bool, "int": bool} (a range; random and tpe samplers only).
  c.parameters = []
  c.metric = "eval/loss"  # final eval metric the sampler optimises and the report ranks by
  c.direction = "minimize"  # minimize | maximize
  c.sampler = "grid"  # grid (every point once) | random | tpe
  c.num_trials = 0  # points to run; 0 = the whole grid (random and tpe need a number)
  # Seeds per point: replicate r trains with train.seed = the point's seed + r (init, dropout, data order; the
  # dataset stays the same unless data.seed is varied too). The report gives each point's mean and interval.
  c.replicates = 1
  # Stops unpromising random/tpe trials at an evaluation: none | median | successive_halving (Optuna's pruners).
  # A point's other replicates are queued once its first one ended unpruned: pruned whole or not at all.
  c.pruner = "none"
  # Trains the trials that differ only in train.seed and the optimizer's learning_rate, weight_decay or
  # warmup_steps (a point's replicates, a learning-rate grid) as one population, one compiled step for all
  # (experiments/population.py), at most max_population to one; each stays a trial of its own in the study and
  # the report. Not with a pruner: a population's members train to the end together.
  c.vectorize = False
  c.max_population = 16
  c.seed = 0  # sampler seed (random/tpe draws, offset per worker); a grid runs point after point, in order
  c.workers = 1  # default --workers: trials in parallel processes on one machine
  return c


def check_scale(scale: str | None) -> str:
  """The scale argument (the part after ':' in configs/sweeps/<name>.py:accel), 'cpu' by default."""
  scale = scale or "cpu"
  if scale not in SCALES:
    raise ValueError(f"unknown scale {scale!r}: expected one of {', '.join(SCALES)}")
  return scale


def recall_study(name: str, scale: str | None, steps: int, parameters: list[dict]) -> config_dict.ConfigDict:
  """A recall study on configs/default.py: `parameters` varied, ranked by final query accuracy, 2 workers.

  Args:
    name: the study's name.
    scale: the config argument ('cpu' by default, or 'accel'; see recall_fixed).
    steps: training steps at the 'cpu' scale.
    parameters: the parameters to vary (formats in sweep_config).
  """
  c = sweep_config(name)
  c.fixed = recall_fixed(check_scale(scale), steps)
  c.parameters = parameters
  c.metric = "eval/accuracy"
  c.direction = "maximize"
  c.workers = 2
  return c


def recall_fixed(scale: str, steps: int) -> config_dict.ConfigDict:
  """Fixed overrides of the recall studies on configs/default.py: a shorter run at 'cpu' scale.

  Args:
    scale: 'cpu' (the whole study in minutes on a 2-core CPU) or 'accel' (longer runs, 4x the data per step).
    steps: training steps at the 'cpu' scale ('accel' trains 4x as many).

  Returns:
    The `fixed` section of a sweep config.
  """
  f = config_dict.ConfigDict()
  f.train = config_dict.ConfigDict()
  f.data = config_dict.ConfigDict()
  f.optimizer = config_dict.ConfigDict()
  f.eval = config_dict.ConfigDict()
  f.checkpoint = config_dict.ConfigDict()
  f.checkpoint.keep_best = 0  # sweeps compare final metrics; one fewer checkpoint to write
  f.checkpoint.keep = 1  # the latest is all a resume needs
  if scale == "cpu":
    f.train.steps = steps
    f.train.eval_every = steps // 4  # four points of the eval curve
    f.train.checkpoint_every = steps // 2  # an interrupted trial loses at most half its steps
    f.data.num_train = 20_000
    f.eval.max_batches = 8  # 512 sequences of 4 queries: accuracy to about +-0.01
  else:
    f.train.steps = 4 * steps
    f.train.batch_size = 256
    f.train.eval_every = steps
    f.train.checkpoint_every = steps
    f.data.num_train = 200_000
    f.data.num_validation = 4_000
  return f

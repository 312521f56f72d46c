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


# The recall studies' protocol (docs/ablations.md): every point trains REPLICATES seeds, each
# seed stopped at TARGET or after BUDGET steps. configs/default.py reached TARGET at steps 1,150 to 1,300 in 5
# seeds (evaluated every 50 steps), so BUDGET is twice the slowest; the learning rate still decays over the
# default's DECAY steps, so that the default point trains as it was measured, and stays at its end value after.
TARGET = "eval/accuracy>=0.99"
BUDGET = 2_600
DECAY = 2_000
REPLICATES = 5
EVAL_EVERY = 50  # the resolution of steps to target


def recall_study(name: str, scale: str | None, parameters: list[dict], steps: int = BUDGET,
                 replicates: int = REPLICATES) -> config_dict.ConfigDict:
  """A recall study on configs/default.py under the protocol above: `parameters` varied, ranked by final query
  accuracy; at the 'accel' scale each point's seeds (and any learning rates varied) train together (`vectorize`),
  at 'cpu' as single runs two at a time.

  Args:
    name: the study's name.
    scale: the config argument ('cpu' by default, or 'accel'; see recall_fixed).
    parameters: the parameters to vary (formats in sweep_config).
    steps: the step budget at the 'cpu' scale.
    replicates: seeds per point (fewer than REPLICATES only where a grid is too large; its file says so).
  """
  c = sweep_config(name)
  scale = check_scale(scale)
  c.fixed = recall_fixed(scale, steps)
  c.parameters = parameters
  c.metric = "eval/accuracy"
  c.direction = "maximize"
  c.replicates = replicates
  # Measured on a 2-core CPU (docs/performance.md): two single runs in parallel finish a point about a sixth
  # sooner than its seeds as one population, which carries the seeds already at their target to the last one's.
  c.vectorize = scale != "cpu"
  c.workers = 2 if scale == "cpu" else 1
  return c


def recall_fixed(scale: str, steps: int) -> config_dict.ConfigDict:
  """Fixed overrides of the recall studies on configs/default.py: the protocol's target and budget.

  Args:
    scale: 'cpu' (a 2-core CPU) or 'accel' (4x the steps and 4x the batch; its budget is not measured).
    steps: the step budget at the 'cpu' scale ('accel' trains 4x as many).

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
  f.inspect = config_dict.ConfigDict()
  # A single run draws an attention image at every evaluation, 50 steps apart here: the studies compare metrics.
  f.inspect.default_probe = False
  f.train.stop_when = TARGET
  scale_steps = 1 if scale == "cpu" else 4
  f.train.steps = scale_steps * steps
  f.train.eval_every = scale_steps * EVAL_EVERY
  f.train.checkpoint_every = max(f.train.steps // 4, f.train.eval_every)  # an interruption loses at most a quarter
  f.optimizer.decay_steps = scale_steps * DECAY if steps > DECAY else 0  # 0: over the budget
  if scale == "cpu":
    f.data.num_train = 20_000
    f.eval.max_batches = 8  # 512 sequences of 4 queries: accuracy to about +-0.01
  else:
    f.train.batch_size = 256
    f.data.num_train = 200_000
    f.data.num_validation = 4_000
  return f

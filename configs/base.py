"""Every setting of a run, with its default. Other config files start from `get_config()` here.

Select variants as `--config=configs/<file>.py:<arg>`; override any key with `--config.<path>=<value>`.
The config is locked: a mistyped key is an error, not a silent new setting.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
  """The defaults: a small causal model on multi-query associative recall."""
  c = config_dict.ConfigDict()

  # The model (transformer.ModelConfig; see its comments and the README's knob table).
  c.model = m = config_dict.ConfigDict()
  m.vocab_size = 0  # V; 0 = the data's vocabulary size
  m.max_len = 0  # longest sequence (position table, decoding cache); 0 = the data's sequence length
  m.num_layers = 2  # N
  m.d_model = 128  # D
  m.num_heads = 4  # H
  m.num_kv_heads = config_dict.placeholder(int)  # G key/value heads (None: = num_heads; 1: multi-query)
  m.head_dim = config_dict.placeholder(int)  # K (None: d_model // num_heads)
  m.value_mode = "factored"  # "factored" (value_down, value_up) or "full" (one D x D value per head)
  m.value_rank = config_dict.placeholder(int)  # R of the factored value map (None: head_dim)
  m.mlp_dim = config_dict.placeholder(int)  # F (None: 4 * d_model)
  m.mask = "causal"  # causal | none | sliding_window | prefix
  m.window = 0  # sliding_window: tokens seen, itself included
  m.prefix_length = 0  # prefix: length of the bidirectional prefix
  m.score_scale = "rsqrt"  # "rsqrt" (1/sqrt(K)), "none", or a number such as "0.125"
  m.attention_impl = "reference"  # reference | chunked (linear memory) | auto (jax.nn.dot_product_attention)
  m.chunk_size = 128  # keys per block of the chunked implementation
  m.positions = "learned"  # learned | sinusoidal (added to embeddings times sqrt(D)) | rope | none
  m.rope_base = 10_000.0  # RoPE wavelength base
  m.post_ln = False  # LayerNorm after the residual add (2017 paper) instead of before (GPT-2)
  m.tie_embeddings = True  # unembedding = embedding transposed
  m.use_bias = True  # biases in attention, MLP and LayerNorm
  m.dropout_rate = 0.0  # dropout on embeddings and residual branches
  m.attention_dropout_rate = 0.0  # dropout on attention weights
  m.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
  m.scan_layers = False  # scan over blocks: compile time independent of depth
  m.remat_policy = "none"  # with scan_layers: none | full | dots | dots_no_batch
  m.layer_norm_epsilon = 1e-5  # LayerNorm epsilon
  m.init_std = 0.02  # std of the normal init of weight matrices (sinusoidal positions: the embedding's is 1/sqrt(D))

  # The data: a built-in attention task, or text for language modelling; prepared with TFDS on first use.
  c.data = d = config_dict.ConfigDict()
  d.task = "associative_recall"  # associative_recall | induction | copy | reverse | text
  d.vocab_size = 64  # tasks: tokens of the task; text: SentencePiece's vocabulary (char and byte: 0)
  d.seq_len = 64  # tokens per example (text: the context T; windows of T + 1 tokens)
  d.num_pairs = 8  # associative_recall: key-value pairs per example
  d.num_queries = 8  # associative_recall: distinct keys queried per example (at most num_pairs)
  d.num_train = 20_000  # examples in the train split
  d.num_validation = 1_000  # examples in the validation split
  d.seed = 0  # seed of the generated data (not of its order, which follows train.seed)
  d.data_dir = ""  # TFDS data dir; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
  d.worker_count = 0  # grain worker processes (0: read in threads of the training process)
  # text only (see experiments/data/text.py):
  d.dataset = "tiny_shakespeare"  # a TFDS catalog dataset with a text feature, or "text_files"
  d.text_files = ""  # text_files: a file, folder or glob of UTF-8 text
  d.validation_fraction = 0.1  # text_files: share of the characters, at the end, held out for validation
  d.manual_dir = ""  # catalog datasets offline: the folder with the files TFDS would download
  d.text_feature = "text"  # the feature that holds the text
  d.train_split = "train"  # split to train (and to fit the tokenizer) on
  d.eval_split = "validation"  # split to evaluate on; "+" joins splits end to end, e.g. "validation+test"
  d.tokenizer = "char"  # char | byte | sentencepiece (fit on the training split, cached in data_dir) | gpt2
  d.sentencepiece_type = "bpe"  # bpe | unigram
  d.tokenizer_dir = ""  # gpt2: the folder of its vocab.json and merges.txt (an import_hf workdir's tokenizer/)

  # The optimizer: AdamW with warmup then a decay schedule.
  c.optimizer = o = config_dict.ConfigDict()
  o.learning_rate = 1e-3  # peak learning rate
  o.schedule = "cosine"  # cosine | linear | constant (after warmup)
  o.warmup_steps = 100  # linear warmup from 0
  o.decay_steps = 0  # steps of the decay (warmup included); 0 = train.steps
  o.end_learning_rate = 1e-4  # learning rate at the end of the decay
  o.b1 = 0.9  # Adam beta1
  o.b2 = 0.99  # Adam beta2
  o.eps = 1e-8  # Adam epsilon
  o.weight_decay = 0.1  # decoupled weight decay
  o.no_decay = "norms,biases,embeddings"  # comma list of parameter kinds exempt from weight decay
  o.grad_clip = 1.0  # clip the global gradient norm to this (0: off)
  o.accumulation_steps = 1  # micro-batches per step: the batch is split and gradients summed

  # The training loop.
  c.train = t = config_dict.ConfigDict()
  t.steps = 2_000  # optimizer steps
  t.batch_size = 64  # global batch (all processes and devices together)
  t.seed = 0  # seed of init, dropout and data order
  t.log_every = 50  # steps between logged training metrics (the only host syncs)
  # Steps per compiled call (a scan over stacked batches); calls end at every log, eval and checkpoint step.
  t.steps_per_call = 10
  t.eval_every = 500  # steps between evaluations (0: only at the end)
  t.checkpoint_every = 500  # steps between checkpoints (0: only at the end)
  t.stop_when = ""  # end the run at the first evaluation that meets this, e.g. "eval/accuracy>=0.99" ("" = off)

  # The device mesh: axis sizes (-1 fills the remaining devices) and logical-to-mesh rules.
  c.mesh = mesh = config_dict.ConfigDict()
  mesh.data = -1  # data parallel: batch split, parameters replicated
  mesh.fsdp = 1  # fully sharded data parallel: batch and parameters split
  mesh.tensor = 1  # tensor parallel: heads and MLP hidden units split
  # Each rule is "logical_name=mesh_axis[+mesh_axis]" or "logical_name=" (replicated).
  mesh.rules = ("batch=data+fsdp,embed=fsdp,heads=tensor,kv_heads=tensor,mlp=tensor,vocab=tensor,"
                "head_dim=,value_rank=,layers=")

  # Checkpoints (orbax): saved asynchronously, the last few and the best kept.
  c.checkpoint = ck = config_dict.ConfigDict()
  ck.keep = 3  # most recent checkpoints kept
  ck.keep_best = 1  # best checkpoints kept besides, by best_metric
  ck.best_metric = "eval/loss"  # metric that ranks checkpoints
  ck.best_mode = "min"  # min | max
  ck.restore_from = ""  # another run's workdir: start from its latest params (fine-tuning, eval)
  ck.async_save = True  # write checkpoints in the background

  # Evaluation on the validation split.
  c.eval = e = config_dict.ConfigDict()
  e.batch_size = 0  # 0 = train.batch_size
  e.max_batches = 0  # 0 = the whole split

  # Probes at each evaluation: attention grids as TensorBoard images, per-head scores as scalars.
  # Not type-checked (type_safe=False), so that probe_prompts takes one string or a tuple of strings.
  c.inspect = i = config_dict.ConfigDict(type_safe=False)
  i.probe_prompts = ""  # a prompt, or a tuple of them, in the run's tokenizer: grids and scores ("" or (): none)
  i.default_probe = True  # without probe_prompts: the grid of validation example 0 (built-in tasks; no populations)
  i.layers = ""  # comma list of the layers drawn in the grids ("" = all)
  i.heads = ""  # comma list of the heads drawn in the grids ("" = all)

  # Several models trained as one compiled step (experiments/population.py); each member is a run of its own in
  # workdir/members/<i>/. Not type-checked (type_safe=False), so that member_values holds lists.
  c.population = p = config_dict.ConfigDict(type_safe=False)
  p.size = 1  # S members (1: a single run); member i has train.seed + i unless member_values lists it
  # One value per member of train.seed, optimizer.learning_rate, weight_decay or warmup_steps, nested by section,
  # e.g. {"optimizer": {"learning_rate": [1e-3, 3e-3]}}; any other path changes the step and needs separate trials.
  p.member_values = config_dict.ConfigDict(type_safe=False)
  return c

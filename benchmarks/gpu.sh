#!/usr/bin/env bash
# The device check, one command on one GPU (about 6-8 minutes on an H100/H200 by the sizes below; not yet run
# on one): prints the tables docs/performance.md keeps for accelerators.
#
#   bash benchmarks/gpu.sh                  # on the GPU machine, from the repository root
#   GPU_SH_SCALE=tiny bash benchmarks/gpu.sh   # the same sections at toy sizes, on any CPU (tests/test_benchmarks.py)
#
# 1. A GPT-2-small-shaped training step (12 layers, width 768, 12 heads, context 1024, vocabulary 50,257) in
#    bfloat16 with attention_impl=auto (cuDNN's flash attention), through the runner: tokens/s and MFU against
#    the card's bfloat16 peak (experiments/metrics.py's table). Its data is the built-in copy task at that
#    vocabulary and length, prepared on the machine: no download. llm.c reaches about 475k tokens/s per H100.
# 2. reference, chunked and auto attention at 1k to 16k tokens, bfloat16: step time and XLA's memory account.
# 3. The README's main job (configs/default.py, associative recall): tokens/s.
# 4. Populations of S = 1, 4, 16 and 64 members of configs/default.py against single runs (one single run
#    stands for the sequential baseline: S runs one after another cost S times one).
#
# The GPU image has JAX, Flax, Optax and Orbax but not ml_collections, grain, tensorflow-datasets, array_record,
# tensorboardX or optuna: carry them as wheels in .whl/ (see the device tool's README); this script installs
# whatever .whl/ holds first. Set GPU_SH_OUT to a folder to keep each section's table and log there.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
if [[ -d .whl ]] && compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
OUT_DIR=${GPU_SH_OUT:-$(mktemp -d)}
mkdir -p "$OUT_DIR"

if [[ "${GPU_SH_SCALE:-full}" == tiny ]]; then
  GPT2=(--config.model.num_layers=2 --config.model.d_model=64 --config.model.num_heads=2
        --config.model.mlp_dim=256 --config.model.max_len=64 --config.model.vocab_size=512
        --config.data.seq_len=64 --config.data.vocab_size=512 --config.data.num_train=64
        --config.data.num_validation=8 --config.train.batch_size=4 --steps=4 --log_every=2)
  LENGTHS=64; RECALL=(--steps=4 --log_every=2); SIZES=2; POPULATION_STEPS=4
else
  GPT2=(--config.data.seq_len=1024 --config.data.vocab_size=50257 --config.data.num_train=4096
        --config.data.num_validation=64 --config.train.batch_size=32 --steps=40 --log_every=10)
  LENGTHS=1024,4096,16384; RECALL=(--steps=400 --log_every=100); SIZES=1,4,16,64; POPULATION_STEPS=60
fi
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-$(mktemp -d)}  # the tasks are prepared there, once

section() {  # title, command...: its table on stdout and in OUT_DIR/<title>.txt, its log in OUT_DIR/<title>.log
  local title=$1; shift
  local name; name=$(echo "$title" | tr -c 'a-zA-Z0-9\n' '_')
  echo; echo "## $title"; echo
  if ! "$@" 2> "$OUT_DIR/$name.log" | tee "$OUT_DIR/$name.txt"; then
    echo "failed; the end of its log ($OUT_DIR/$name.log):"; tail -n 20 "$OUT_DIR/$name.log"; return 1
  fi
}

section "GPT-2 small step, bfloat16, auto attention" \
  "$PYTHON" -m benchmarks.train_step --config=configs/gpt2.py:small --config.model.dtype=bfloat16 \
    --config.model.attention_impl=auto --config.data.task=copy "${GPT2[@]}"
section "Attention implementations, bfloat16" \
  "$PYTHON" -m benchmarks.attention_memory --impls=reference,chunked,auto --lengths="$LENGTHS" \
    --timed_up_to=16384 --dtype=bfloat16
section "The default recall model" \
  "$PYTHON" -m benchmarks.train_step --config=configs/default.py "${RECALL[@]}"
section "Populations of the default recall model" \
  "$PYTHON" -m benchmarks.population --configs=configs/default.py --sizes="$SIZES" --steps="$POPULATION_STEPS" \
    --max_single_runs=1

"""Tests of the benchmarks' comparisons: the PyTorch twins are the project's recipes, each chosen by its config."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import matmul_shapes, profile_step, torch_twins
from configs import shakespeare_char
from transformer.accounting import parameter_counts
from transformer.config import model_config_from

VOCAB = 65  # the characters of Tiny Shakespeare
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _project_parameters(variant: str) -> int:
  config = shakespeare_char.get_config(variant)
  config.model.vocab_size, config.model.max_len = VOCAB, config.data.seq_len
  return parameter_counts(model_config_from(config.model.to_dict()))["total"]


@pytest.mark.parametrize("variant,recipe", [("cpu", "cpu"), ("gpu", "gpu")])
def test_each_config_times_against_its_own_pytorch_recipe(variant, recipe):
  assert torch_twins.recipe_of(shakespeare_char.get_config(variant)) == recipe


@pytest.mark.parametrize("change", ["model.d_model", "train.batch_size", "model.dropout_rate"])
def test_a_config_without_a_pytorch_twin_is_refused(change):
  config = shakespeare_char.get_config("gpu")
  section, key = change.split(".")
  config[section][key] = config[section][key] / 2 if key == "dropout_rate" else config[section][key] * 2
  with pytest.raises(ValueError, match="--torch_python"):
    torch_twins.recipe_of(config)


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_the_pytorch_recipe_has_the_projects_parameters(variant):
  torch = pytest.importorskip("torch")
  from benchmarks import torch_shakespeare_char as twin  # pylint: disable=import-outside-toplevel

  model = twin.GPT(VOCAB, twin.RECIPES[variant])
  # Tied embeddings: named_parameters lists the shared matrix once, as the project counts it.
  assert sum(p.numel() for p in model.parameters()) == _project_parameters(variant)
  assert len(torch.nn.utils.parameters_to_vector(model.parameters())) == _project_parameters(variant)


def test_the_big_pytorch_recipe_drops_out_in_training_only():
  torch = pytest.importorskip("torch")
  from benchmarks import torch_shakespeare_char as twin  # pylint: disable=import-outside-toplevel

  recipe = twin.RECIPES["gpu"]
  small = twin.Recipe(layers=1, heads=recipe.heads, width=recipe.width, context=16, batch=2,
                      dropout=recipe.dropout, steps=recipe.steps)
  torch.manual_seed(0)
  model = twin.GPT(VOCAB, small)
  tokens = torch.randint(VOCAB, (2, 16))
  with torch.no_grad():
    trained = [model(tokens, tokens) for _ in range(2)]
    model.eval()
    evaluated = [model(tokens, tokens) for _ in range(2)]
  assert not torch.equal(*trained)
  assert torch.equal(*evaluated)


@pytest.mark.slow
def test_the_gpu_check_runs_every_section_at_toy_sizes(tmp_path):
  """benchmarks/gpu.sh is run on a lent GPU at most once a task: its every section must work before that."""
  env = dict(os.environ, GPU_SH_SCALE="tiny", PYTHON=sys.executable, TFDS_DATA_DIR=str(tmp_path / "data"),
             GPU_SH_OUT=str(tmp_path / "out"))
  done = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu.sh")], env=env, capture_output=True, text=True,
                        timeout=900, check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  out = done.stdout
  assert out.count("| this project |") == 2  # the GPT-2-shaped step and the recall model
  assert "dtype bfloat16" in out and "attention auto" in out
  assert re.search(r"^\| 64 \| [\d.,]+ \| [\d.,]+ \| [\d.,]+ \| [\d.,]+ \| [\d.,]+ \| [\d.,]+ \|", out, re.M)
  assert re.search(r"^\| configs/default.py \| 2 \| ", out, re.M)
  assert sorted(name.rsplit(".", 1)[1] for name in os.listdir(tmp_path / "out")) == ["log"] * 4 + ["txt"] * 4


@pytest.mark.parametrize("op_name,part", [
    ("jit(train_steps)/while/body/closed_call/transpose(jvp(TransformerLM))/block_1/mlp/dot_general",
     "backward block_N/mlp"),
    ("jit(train_steps)/while/body/closed_call/jvp(TransformerLM)/block_0/attention/BLHK,BMHK->BHLM",
     "forward block_N/attention"),
    ("jit(train_steps)/while/body/closed_call/jvp(TransformerLM)/block_3/attention/jit(_where)/select_n",
     "forward block_N/attention"),
    ("jit(train_steps)/while/body/closed_call/jvp(TransformerLM)/block_2/add", "forward block_N"),
    ("jit(train_steps)/while/body/closed_call/jvp(TransformerLM)/final_norm/mul", "forward final_norm"),
    ("jit(train_steps)/while/body/closed_call/transpose(jvp(TransformerLM))/dot_general", "backward top level"),
    ("jit(train_steps)/while/body/closed_call/sqrt", "update"),
    ("jit(train_steps)/while/body/closed_call/jvp(TransformerLM)/while/body/closed_call/blocks/block/attention/le",
     "forward block_N/attention"),
    ("jit(train_steps)/while/body/closed_call/while/body/closed_call/transpose(jvp(TransformerLM))/block_0/mlp/mul",
     "backward block_N/mlp"),
    ("", "unattributed"),
])
def test_the_profile_names_the_part_of_the_step_an_op_comes_from(op_name, part):
  assert profile_step.part_of(op_name) == part


def test_the_profile_finds_each_matmul_of_a_compiled_loop_with_its_flops_and_runs(tmp_path):
  """The products matmul_shapes times stay in its loop, and the profiler's events are matched to their dots."""
  x, y = jnp.ones((48, 32)), jnp.ones((32, 24))
  program = matmul_shapes._in_one_program(jnp.matmul, 4)
  compiled = program.lower(x, y).compile()
  ops = profile_step.compiled_ops(compiled.as_text())
  matmuls = {name: op for name, op in ops.items() if op.kind == "matmul"}
  assert [(op.flops, op.shape) for op in matmuls.values()] == [(2 * 48 * 32 * 24, "f32[48,24]")]
  with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
    for _ in range(3):
      compiled(x, y).block_until_ready()
  micros, runs, covered = profile_step.op_microseconds(profile_step.trace_events(str(tmp_path)), ops)
  assert {runs[name] for name in matmuls} == {3 * 4}  # 3 calls of 4 products: none hoisted out of the loop
  assert 0 < covered <= sum(micros.values()) + 1e-6
  table = profile_step.by_part(micros, ops)
  assert sum(kinds["matmul"] for kinds in table.values()) == pytest.approx(sum(micros[name] for name in matmuls))

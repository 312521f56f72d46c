r"""A PyTorch GPT trained with nanoGPT's Shakespeare-character recipes, measured as this project measures.

  pip install torch   # not a dependency of the project: only this comparison needs it
  python benchmarks/torch_shakespeare_char.py --input=../shared/data/tinyshakespeare/input.txt [--seed=1337]
  python benchmarks/torch_shakespeare_char.py --steps=300 --time_only   # speed only (benchmarks/train_step.py)
  python benchmarks/torch_shakespeare_char.py --recipe=gpu --steps=20 --time_only   # the big recipe's step

The question it answers: what validation loss does nanoGPT's recipe reach when the loss is averaged over
every character of the validation text (as `experiments` reports it), rather than estimated from 20
random batches (as nanoGPT prints it)? Written here from the recipes' description, not copied: a pre-LN GPT
with no biases and tied embeddings, AdamW (0.9, 0.99) with decay 0.1 on matrices, clip 1.0, 100 warmup steps
then cosine from 1e-3 to 1e-4. `--recipe=cpu` (the default, configs/shakespeare_char.py:cpu): 4 layers, 4
heads, width 128, context 64, batch 12, no dropout, 2,000 steps. `--recipe=gpu` (configs/shakespeare_char.py,
the big recipe): 6 layers, 6 heads, width 384, context 256, batch 64, dropout 0.2 on the embeddings, the
attention weights and both residual branches, 5,000 steps. Prints one Markdown row: full-split loss, the
20-batch estimate, median step time, tokens/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

WARMUP, PEAK_LR, END_LR = 100, 1e-3, 1e-4


@dataclasses.dataclass(frozen=True)
class Recipe:
  layers: int
  heads: int
  width: int
  context: int
  batch: int
  dropout: float
  steps: int  # the schedule's length


RECIPES = {"cpu": Recipe(layers=4, heads=4, width=128, context=64, batch=12, dropout=0.0, steps=2_000),
           "gpu": Recipe(layers=6, heads=6, width=384, context=256, batch=64, dropout=0.2, steps=5_000)}


class Block(nn.Module):
  """Pre-LN attention then MLP, no biases."""

  def __init__(self, recipe: Recipe):
    super().__init__()
    self.recipe, width = recipe, recipe.width
    self.attention_norm, self.mlp_norm = nn.LayerNorm(width, bias=False), nn.LayerNorm(width, bias=False)
    self.qkv, self.out = nn.Linear(width, 3 * width, bias=False), nn.Linear(width, width, bias=False)
    self.up, self.down = nn.Linear(width, 4 * width, bias=False), nn.Linear(4 * width, width, bias=False)
    self.residual_dropout = nn.Dropout(recipe.dropout)

  def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
    b, l, width = x_BLD.shape
    heads = self.recipe.heads
    q, k, v = self.qkv(self.attention_norm(x_BLD)).split(width, dim=2)
    q, k, v = (t.view(b, l, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    mixed = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.recipe.dropout if self.training else 0.0)
    x_BLD = x_BLD + self.residual_dropout(self.out(mixed.transpose(1, 2).reshape(b, l, width)))
    return x_BLD + self.residual_dropout(self.down(F.gelu(self.up(self.mlp_norm(x_BLD)))))


class GPT(nn.Module):
  """Token and learned position embeddings, blocks, final norm, unembedding tied to the embedding."""

  def __init__(self, vocab_size: int, recipe: Recipe):
    super().__init__()
    width = recipe.width
    self.embed, self.positions = nn.Embedding(vocab_size, width), nn.Embedding(recipe.context, width)
    self.embedding_dropout = nn.Dropout(recipe.dropout)
    self.blocks = nn.ModuleList(Block(recipe) for _ in range(recipe.layers))
    self.final_norm = nn.LayerNorm(width, bias=False)
    self.unembed = nn.Linear(width, vocab_size, bias=False)
    self.embed.weight = self.unembed.weight
    for name, p in self.named_parameters():
      if p.dim() == 2:  # GPT-2: maps that write into the residual stream start smaller, by 1/sqrt(2N)
        writes_residual = name.endswith(("out.weight", "down.weight"))
        nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * recipe.layers) if writes_residual else 0.02)

  def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy [B, L]."""
    x = self.embedding_dropout(self.embed(tokens) + self.positions(torch.arange(tokens.shape[1])))
    for block in self.blocks:
      x = block(x)
    logits = self.unembed(self.final_norm(x))
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)


def learning_rate(step: int, steps: int) -> float:
  if step < WARMUP:
    return PEAK_LR * (step + 1) / (WARMUP + 1)
  progress = (step - WARMUP) / (steps - WARMUP)
  return END_LR + 0.5 * (1 + math.cos(math.pi * progress)) * (PEAK_LR - END_LR)


def random_windows(tokens: np.ndarray, recipe: Recipe, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
  starts = torch.randint(len(tokens) - recipe.context, (recipe.batch,), generator=generator).numpy()
  windows = torch.from_numpy(tokens[starts[:, None] + np.arange(recipe.context + 1)])
  return windows[:, :-1], windows[:, 1:]


@torch.no_grad()
def full_split_loss(model: GPT, tokens: np.ndarray, context: int) -> float:
  """Mean loss over every token of the split but the first: consecutive windows, the last one shorter."""
  total, count = 0.0, 0
  for start in range(0, len(tokens) - 1, context):
    window = torch.from_numpy(tokens[start:start + context + 1])
    total += model(window[None, :-1], window[None, 1:]).sum().item()
    count += len(window) - 1
  return total / count


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--input", default=os.path.join("..", "shared", "data", "tinyshakespeare", "input.txt"))
  parser.add_argument("--seed", type=int, default=1337)
  parser.add_argument("--recipe", choices=sorted(RECIPES), default="cpu",
                      help="cpu: the small recipe; gpu: the big one")
  parser.add_argument("--steps", type=int, default=0, help="steps to run (the schedule keeps its length); 0: all")
  parser.add_argument("--time_only", action="store_true", help="skip the validation losses")
  args = parser.parse_args()
  recipe = RECIPES[args.recipe]
  steps = args.steps or recipe.steps
  torch.manual_seed(args.seed)
  with open(args.input, encoding="utf-8") as f:
    text = f.read()
  alphabet = sorted(set(text))
  ids = {ch: i for i, ch in enumerate(alphabet)}
  tokens = np.array([ids[ch] for ch in text], np.int64)
  cut = int(len(tokens) * 0.9)  # nanoGPT's split: the first 90% trains
  train, validation = tokens[:cut], tokens[cut:]

  model = GPT(len(alphabet), recipe)
  matrices = [p for p in model.parameters() if p.dim() >= 2]
  vectors = [p for p in model.parameters() if p.dim() < 2]
  optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}],
                                lr=PEAK_LR, betas=(0.9, 0.99))
  generator = torch.Generator().manual_seed(args.seed)
  times = []
  for step in range(steps):
    for group in optimizer.param_groups:
      group["lr"] = learning_rate(step, recipe.steps)
    inputs, targets = random_windows(train, recipe, generator)
    start = time.perf_counter()
    loss = model(inputs, targets).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    times.append(time.perf_counter() - start)
  model.eval()
  full = estimate = float("nan")
  if not args.time_only:
    full = full_split_loss(model, validation, recipe.context)
    with torch.no_grad():
      estimate = statistics.mean(model(*random_windows(validation, recipe, generator)).mean().item()
                                 for _ in range(20))
  step_ms = 1e3 * statistics.median(times[len(times) // 10:])  # the first tenth warms up
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}; seed {args.seed}; "
        f"recipe {args.recipe}: {recipe}\n")
  print("| full-split val loss | 20-batch estimate | median step ms | tokens/s |")
  print("| ---: | ---: | ---: | ---: |")
  print(f"| {full:.4f} | {estimate:.4f} | {step_ms:.1f} | {recipe.batch * recipe.context / (step_ms / 1e3):,.0f} |")


if __name__ == "__main__":
  main()

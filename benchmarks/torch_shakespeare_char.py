r"""A PyTorch GPT trained with nanoGPT's Shakespeare-character CPU recipe, measured as this project measures.

  pip install torch   # not a dependency of the project: only this comparison needs it
  python benchmarks/torch_shakespeare_char.py --input=../shared/data/tinyshakespeare/input.txt [--seed=1337]
  python benchmarks/torch_shakespeare_char.py --steps=300 --time_only   # speed only (benchmarks/train_step.py)

The question it answers: what validation loss does nanoGPT's recipe reach when the loss is averaged over
every character of the validation text (as `experiments` reports it), rather than estimated from 20
random batches (as nanoGPT prints it)? Written here from the recipe's description (pre-LN GPT, 4 layers,
4 heads, width 128, context 64, batch 12, no biases, tied embeddings, AdamW (0.9, 0.99) with decay 0.1
on matrices, clip 1.0, 100 warmup steps then cosine from 1e-3 to 1e-4 over 2,000 steps), not copied.
Prints one Markdown row: full-split loss, the 20-batch estimate, median step time, tokens/s.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LAYERS, HEADS, WIDTH, CONTEXT, BATCH = 4, 4, 128, 64, 12
STEPS, WARMUP, PEAK_LR, END_LR = 2_000, 100, 1e-3, 1e-4


class Block(nn.Module):
  """Pre-LN attention then MLP, no biases."""

  def __init__(self):
    super().__init__()
    self.attention_norm, self.mlp_norm = nn.LayerNorm(WIDTH, bias=False), nn.LayerNorm(WIDTH, bias=False)
    self.qkv, self.out = nn.Linear(WIDTH, 3 * WIDTH, bias=False), nn.Linear(WIDTH, WIDTH, bias=False)
    self.up, self.down = nn.Linear(WIDTH, 4 * WIDTH, bias=False), nn.Linear(4 * WIDTH, WIDTH, bias=False)

  def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
    b, l, _ = x_BLD.shape
    q, k, v = self.qkv(self.attention_norm(x_BLD)).split(WIDTH, dim=2)
    q, k, v = (t.view(b, l, HEADS, WIDTH // HEADS).transpose(1, 2) for t in (q, k, v))
    mixed = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, l, WIDTH)
    x_BLD = x_BLD + self.out(mixed)
    return x_BLD + self.down(F.gelu(self.up(self.mlp_norm(x_BLD))))


class GPT(nn.Module):
  """Token and learned position embeddings, blocks, final norm, unembedding tied to the embedding."""

  def __init__(self, vocab_size: int):
    super().__init__()
    self.embed, self.positions = nn.Embedding(vocab_size, WIDTH), nn.Embedding(CONTEXT, WIDTH)
    self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
    self.final_norm = nn.LayerNorm(WIDTH, bias=False)
    self.unembed = nn.Linear(WIDTH, vocab_size, bias=False)
    self.embed.weight = self.unembed.weight
    for name, p in self.named_parameters():
      if p.dim() == 2:  # GPT-2: maps that write into the residual stream start smaller, by 1/sqrt(2N)
        writes_residual = name.endswith(("out.weight", "down.weight"))
        nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * LAYERS) if writes_residual else 0.02)

  def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy [B, L]."""
    x = self.embed(tokens) + self.positions(torch.arange(tokens.shape[1]))
    for block in self.blocks:
      x = block(x)
    logits = self.unembed(self.final_norm(x))
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)


def learning_rate(step: int) -> float:
  if step < WARMUP:
    return PEAK_LR * (step + 1) / (WARMUP + 1)
  progress = (step - WARMUP) / (STEPS - WARMUP)
  return END_LR + 0.5 * (1 + math.cos(math.pi * progress)) * (PEAK_LR - END_LR)


def random_windows(tokens: np.ndarray, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
  starts = torch.randint(len(tokens) - CONTEXT, (BATCH,), generator=generator).numpy()
  windows = torch.from_numpy(tokens[starts[:, None] + np.arange(CONTEXT + 1)])
  return windows[:, :-1], windows[:, 1:]


@torch.no_grad()
def full_split_loss(model: GPT, tokens: np.ndarray) -> float:
  """Mean loss over every token of the split but the first: consecutive windows, the last one shorter."""
  total, count = 0.0, 0
  for start in range(0, len(tokens) - 1, CONTEXT):
    window = torch.from_numpy(tokens[start:start + CONTEXT + 1])
    total += model(window[None, :-1], window[None, 1:]).sum().item()
    count += len(window) - 1
  return total / count


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--input", default=os.path.join("..", "shared", "data", "tinyshakespeare", "input.txt"))
  parser.add_argument("--seed", type=int, default=1337)
  parser.add_argument("--steps", type=int, default=STEPS, help="steps to run (the schedule stays 2,000 long)")
  parser.add_argument("--time_only", action="store_true", help="skip the validation losses")
  args = parser.parse_args()
  torch.manual_seed(args.seed)
  with open(args.input, encoding="utf-8") as f:
    text = f.read()
  alphabet = sorted(set(text))
  ids = {ch: i for i, ch in enumerate(alphabet)}
  tokens = np.array([ids[ch] for ch in text], np.int64)
  cut = int(len(tokens) * 0.9)  # nanoGPT's split: the first 90% trains
  train, validation = tokens[:cut], tokens[cut:]

  model = GPT(len(alphabet))
  matrices = [p for p in model.parameters() if p.dim() >= 2]
  vectors = [p for p in model.parameters() if p.dim() < 2]
  optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}],
                                lr=PEAK_LR, betas=(0.9, 0.99))
  generator = torch.Generator().manual_seed(args.seed)
  times = []
  for step in range(args.steps):
    for group in optimizer.param_groups:
      group["lr"] = learning_rate(step)
    inputs, targets = random_windows(train, generator)
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
    full = full_split_loss(model, validation)
    with torch.no_grad():
      estimate = statistics.mean(model(*random_windows(validation, generator)).mean().item() for _ in range(20))
  step_ms = 1e3 * statistics.median(times[len(times) // 10:])  # the first tenth warms up
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}; seed {args.seed}\n")
  print("| full-split val loss | 20-batch estimate | median step ms | tokens/s |")
  print("| ---: | ---: | ---: | ---: |")
  print(f"| {full:.4f} | {estimate:.4f} | {step_ms:.1f} | {BATCH * CONTEXT / (step_ms / 1e3):,.0f} |")


if __name__ == "__main__":
  main()

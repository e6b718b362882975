"""Train a shipped model on its phantoms (PyTorch on the CPU, fixed seed).

    .venv/bin/python -m models.train fast_free_fluid [--threads 1]

Needs the `train` extra (torch). Writes var/models-build/NAME.pt; export with
models.export, then evaluate and write the card with models.evaluate.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from models.nets import TinyUNet, image_probability
from models.shipped import BUILD, RECIPES, Recipe


def _loss(logits: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, masks, pos_weight=torch.tensor(3.0))
    inter = (prob * masks).sum((1, 2, 3))
    soft_dice = 1 - (2 * inter + 1) / (prob.sum((1, 2, 3)) + masks.sum((1, 2, 3)) + 1)
    image = image_probability(prob).clamp(1e-6, 1 - 1e-6)
    image_bce = F.binary_cross_entropy(image, labels)
    return bce + soft_dice[labels > 0].mean() * labels.mean().clamp(min=1e-6) + image_bce


def train(recipe: Recipe, threads: int) -> Path:
    torch.manual_seed(recipe.train_seed)
    torch.set_num_threads(threads)
    t0 = time.time()
    data = recipe.batch(recipe.train_seed, recipe.n_train)
    print(f"{recipe.name}: {recipe.n_train} phantoms in {time.time() - t0:.0f} s, "
          f"{data.labels.mean():.2f} positive", flush=True)
    x = torch.from_numpy(data.x)
    masks = torch.from_numpy(data.masks[:, None].astype(np.float32))
    labels = torch.from_numpy(data.labels.astype(np.float32))
    net = TinyUNet(recipe.in_channels, recipe.base_channels)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    rng = np.random.default_rng(recipe.train_seed)
    batch_size = 16
    net.train()
    for step in range(recipe.steps):
        lr = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.from_numpy(rng.choice(len(x), batch_size, replace=False))
        xb, mb, lb = x[idx], masks[idx], labels[idx]
        if rng.random() < 0.5:  # left-right mirror: both fans and heads are symmetric
            xb, mb = xb.flip(-1), mb.flip(-1)
        loss = _loss(net(xb), mb, lb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == recipe.steps - 1:
            print(f"{recipe.name}: step {step} loss {loss.item():.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    BUILD.mkdir(parents=True, exist_ok=True)
    out = BUILD / f"{recipe.name}.pt"
    torch.save(net.state_dict(), out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(train(RECIPES[args.name], args.threads))


if __name__ == "__main__":
    main()

"""Train a shipped model on its phantoms (PyTorch, fixed seed).

    .venv/bin/python -m models.train fast_free_fluid [--threads 1] [--workers 1] [--device cpu]

Needs the `train` extra (torch). Writes var/models-build/NAME.pt; export with
models.export, then evaluate and write the card with models.evaluate.

The training phantoms come in chunks of `CHUNK`, chunk k from seed
`train_seed * 1000 + k`, so that `--workers N` processes make exactly the
same set as one. `--device cuda` trains on a GPU when there is one (the
shipped 1.1.0 models were; one CPU thread takes hours for their recipe).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from models import datasets
from models.nets import TinyUNet, image_probability
from models.shipped import BUILD, RECIPES, Recipe

#: Training phantoms per generator seed.
CHUNK = 500


def training_set(recipe: Recipe, workers: int = 1) -> datasets.Batch:
    """The recipe's training phantoms, `n_train` of them, the same for any `workers`."""
    jobs = [(recipe.train_seed * 1000 + k, min(CHUNK, recipe.n_train - k * CHUNK))
            for k in range(math.ceil(recipe.n_train / CHUNK))]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.starmap(recipe.batch, jobs)
    else:
        parts = [recipe.batch(seed, n) for seed, n in jobs]
    return datasets.Batch(np.concatenate([p.x for p in parts]),
                          np.concatenate([p.masks for p in parts]),
                          np.concatenate([p.labels for p in parts]))


def net_for(recipe: Recipe) -> TinyUNet:
    return TinyUNet(recipe.in_channels, recipe.base_channels, recipe.bottleneck,
                    recipe.upsample)


def _lovasz_hinge(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-picture Lovasz hinge (Berman et al., 2018), logits and masks [N, P]:
    a convex surrogate of 1 - IoU of the map thresholded at logit 0 (p = 0.5),
    the very map the Dice on the card is measured on."""
    signs = 2 * masks - 1
    errors, order = torch.sort(1 - logits * signs, dim=1, descending=True)
    truth = masks.gather(1, order)
    total = truth.sum(1, keepdim=True)
    jaccard = 1 - (total - truth.cumsum(1)) / (total + (1 - truth).cumsum(1))
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], 1)
    return (F.relu(errors) * grad).sum(1)


def _loss(logits: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
          recipe: Recipe) -> torch.Tensor:
    prob = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(
        logits, masks, pos_weight=torch.tensor(recipe.pos_weight, device=logits.device))
    image = image_probability(prob).clamp(1e-6, 1 - 1e-6)
    loss = bce + F.binary_cross_entropy(image, labels)
    positive = labels > 0
    if positive.any():
        inter = (prob * masks).sum((1, 2, 3))
        soft_dice = 1 - (2 * inter + 1) / (prob.sum((1, 2, 3)) + masks.sum((1, 2, 3)) + 1)
        loss = loss + recipe.dice_weight * soft_dice[positive].mean()
        if recipe.lovasz_weight:
            lovasz = _lovasz_hinge(logits[positive].flatten(1), masks[positive].flatten(1))
            loss = loss + recipe.lovasz_weight * lovasz.mean()
    return loss


def train(recipe: Recipe, threads: int = 1, device: str = "cpu", workers: int = 1,
          data: datasets.Batch | None = None, out: Path | None = None,
          stop: Callable[[], bool] | None = None) -> Path:
    """Train, save the weights to `out` (default var/models-build/NAME.pt) and
    return its path; `stop`, asked after every step, ends training early."""
    torch.manual_seed(recipe.train_seed)
    torch.set_num_threads(threads)
    t0 = time.time()
    if data is None:
        data = training_set(recipe, workers)
    print(f"{recipe.name}: {len(data.x)} phantoms in {time.time() - t0:.0f} s, "
          f"{data.labels.mean():.2f} positive", flush=True)
    x = torch.from_numpy(data.x).to(device)
    masks = torch.from_numpy(data.masks[:, None].astype(np.float32)).to(device)
    labels = torch.from_numpy(data.labels.astype(np.float32)).to(device)
    net = net_for(recipe).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=1e-4)
    rng = np.random.default_rng(recipe.train_seed)
    net.train()
    for step in range(recipe.steps):
        if step < recipe.warmup_steps:
            lr = recipe.lr * (step + 1) / recipe.warmup_steps
        else:
            done = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
            lr = recipe.lr * 0.5 * (1 + math.cos(math.pi * done))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.from_numpy(rng.choice(len(x), recipe.batch_size, replace=False)).to(device)
        xb, mb, lb = x[idx], masks[idx], labels[idx]
        # left-right mirror of half the pictures: both fans and heads are symmetric
        flip = torch.from_numpy(rng.random(recipe.batch_size) < 0.5).to(device)[:, None, None, None]
        xb, mb = torch.where(flip, xb.flip(-1), xb), torch.where(flip, mb.flip(-1), mb)
        loss = _loss(net(xb), mb, lb, recipe)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == recipe.steps - 1:
            print(f"{recipe.name}: step {step} loss {loss.item():.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        if stop is not None and stop():
            print(f"{recipe.name}: stopped after step {step}", flush=True)
            break
    if out is None:
        BUILD.mkdir(parents=True, exist_ok=True)
        out = BUILD / f"{recipe.name}.pt"
    torch.save({k: v.cpu() for k, v in net.state_dict().items()}, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1,
                        help="processes making the training phantoms")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    args = parser.parse_args()
    print(train(RECIPES[args.name], args.threads, args.device, args.workers))


if __name__ == "__main__":
    main()

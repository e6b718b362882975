"""The shipped models' networks (PyTorch, training only): a small U-Net whose
per-pixel map also gives the image-level probability, so that the slice-level
answer and its localisation can never disagree."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyUNet(nn.Module):
    """Three down-samplings, `base` channels at full resolution; returns logits [N,1,H,W].

    `bottleneck` multiplies `base` at the lowest resolution (1/8), where extra
    channels cost little time; `upsample` is how the decoder doubles the grid
    (bilinear draws smoother outlines than nearest, for about 0.8 ms more per
    128x128 picture on the 2-core machine)."""

    def __init__(self, in_channels: int, base: int = 8, bottleneck: int = 4,
                 upsample: str = "nearest") -> None:
        super().__init__()
        c = [base, base * 2, base * 4, base * bottleneck]
        self.upsample = upsample
        self.enc = nn.ModuleList([_block(in_channels, c[0]), _block(c[0], c[1]),
                                  _block(c[1], c[2]), _block(c[2], c[3])])
        self.dec = nn.ModuleList([_block(c[3] + c[2], c[2]), _block(c[2] + c[1], c[1]),
                                  _block(c[1] + c[0], c[0])])
        self.head = nn.Conv2d(c[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.dec:
            skip = skips.pop()
            if self.upsample == "nearest":
                x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            else:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(x)


def image_probability(prob_map: torch.Tensor, pool: int = 5) -> torch.Tensor:
    """The image-level probability: the highest local mean of the map (a lone
    bright pixel does not make a finding; a pool-sized patch does)."""
    pooled = F.avg_pool2d(prob_map, pool, stride=1, padding=pool // 2, count_include_pad=False)
    return pooled.amax(dim=(1, 2, 3))


class Deployed(nn.Module):
    """What is exported: probabilities, not logits, and both outputs."""

    def __init__(self, net: TinyUNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prob_map = torch.sigmoid(self.net(x))
        return image_probability(prob_map), prob_map

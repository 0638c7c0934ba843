"""A small 2-D U-Net: one gray channel in, one channel of cell logits out.

GroupNorm rather than BatchNorm: it keeps no running statistics, so averaging members'
weights (FedAvg) averages parameters only, and a batch of one trains like any other.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_BASE_CHANNELS = 8
DEFAULT_DEPTH = 2


def architecture_name(*, base_channels: int = DEFAULT_BASE_CHANNELS, depth: int = DEFAULT_DEPTH):
    """The string members exchange as session_info: equal strings mean compatible weights."""
    return f"unet2d-v1:base={base_channels}:depth={depth}"


ARCHITECTURE = architecture_name()

_ARCHITECTURE_PATTERN = re.compile(r"unet2d-v1:base=([0-9]+):depth=([0-9]+)")


def parse_architecture(name: str) -> dict[str, int]:
    """The build_unet arguments an architecture_name stands for; ValueError for any other
    string (a model of another kind, or of a newer version of this program)."""
    match = _ARCHITECTURE_PATTERN.fullmatch(str(name))
    if match is None:
        raise ValueError(
            f"unknown architecture {name!r}: this version of segmentation-suite builds "
            f"{ARCHITECTURE!r}-style U-Nets only"
        )
    base_channels, depth = int(match.group(1)), int(match.group(2))
    if not 1 <= base_channels <= 256 or not 0 <= depth <= 8:
        raise ValueError(f"architecture {name!r} is out of range (base 1..256, depth 0..8)")
    return {"base_channels": base_channels, "depth": depth}


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 4 channels per group, at most 8 groups."""
    return max(1, min(8, channels // 4))


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by GroupNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """`depth` poolings; channels double at each level, from `base_channels`. Any input size
    works: the input is padded to a multiple of 2**depth and the output cropped back."""

    def __init__(self, *, base_channels: int = DEFAULT_BASE_CHANNELS, depth: int = DEFAULT_DEPTH):
        super().__init__()
        if base_channels < 1 or depth < 0:
            raise ValueError(
                f"base_channels must be >= 1 and depth >= 0, not {base_channels}, {depth}"
            )
        self.depth = depth
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList(
            ConvBlock(1 if level == 0 else widths[level - 1], widths[level])
            for level in range(depth)
        )
        self.bottleneck = ConvBlock(widths[depth - 1] if depth else 1, widths[depth])
        self.upsamples = nn.ModuleList(
            nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2)
            for level in reversed(range(depth))
        )
        self.decoders = nn.ModuleList(
            ConvBlock(2 * widths[level], widths[level]) for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for upsample, decoder, skip in zip(
            self.upsamples, self.decoders, reversed(skips), strict=True
        ):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
        return self.head(x)[..., :height, :width]


def build_unet(
    *, base_channels: int = DEFAULT_BASE_CHANNELS, depth: int = DEFAULT_DEPTH
) -> nn.Module:
    """A fresh U-Net (1 -> 1 channel logits), initialized from torch's global generator."""
    return UNet(base_channels=base_channels, depth=depth)

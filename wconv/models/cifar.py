"""The CNN classifiers of Sect. 4.1 for 32×32 CIFAR-100 images: ResNet-56, VGG-16 (BN) and Network in Network."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from wconv.models.blocks import ConvNormAct, classifier, conv, scaled
from wconv.models.registry import register


class ZeroPadShortcut(nn.Module):
    """He et al.'s option A: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    """Two K×K conv-BN layers and a shortcut, ReLU after the sum (He et al. 2016)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvNormAct(in_channels, out_channels, kernel_size, stride),
                                  ConvNormAct(out_channels, out_channels, kernel_size, act=False))
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = ConvNormAct(in_channels, out_channels, 1, stride, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


@register("resnet56", "classification", num_classes=100)
def resnet56(*, kernel_size, in_channels, num_classes, width, depth: int = 56,
             shortcut: Literal["A", "B"] = "A") -> nn.Module:
    """CIFAR ResNet (He et al. 2016, Sect. 4.2): K×K conv 16, three stages of (depth−2)/6 BasicBlocks
    (16/32/64 channels, stride 2 between stages), global average pool, linear."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet56: depth must be 6n+2 ≥ 8 (20, 32, 44, 56, 110, …), got {depth}")
    if shortcut not in ("A", "B"):
        raise ValueError(f"resnet56: shortcut must be 'A' (zero-pad) or 'B' (1×1 conv), got {shortcut!r}")
    widths = [scaled(c, width) for c in (16, 32, 64)]
    layers, c_in = [ConvNormAct(in_channels, widths[0], kernel_size)], widths[0]
    for stage, c in enumerate(widths):
        for i in range((depth - 2) // 6):
            layers.append(BasicBlock(c_in, c, kernel_size, 2 if stage and not i else 1, shortcut))
            c_in = c
    return classifier(nn.Sequential(*layers), c_in, num_classes)


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@register("vgg16", "classification", num_classes=100)
def vgg16(*, kernel_size, in_channels, num_classes, width) -> nn.Module:
    """VGG-16 with BatchNorm (Simonyan & Zisserman 2015, configuration D), CIFAR head: the 512 features of the
    last 1×1 map → one linear layer."""
    layers, c_in = [], in_channels
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers.append(ConvNormAct(c_in, scaled(v, width), kernel_size))
            c_in = scaled(v, width)
    return classifier(nn.Sequential(*layers), c_in, num_classes)


def _mlpconv(in_channels: int, channels: tuple[int, ...], kernel_size: int) -> list[nn.Module]:
    """One NiN mlpconv block: a K×K conv then 1×1 convs, each with BN and ReLU."""
    layers = [ConvNormAct(in_channels, channels[0], kernel_size)]
    layers += [ConvNormAct(a, b, 1) for a, b in zip(channels, channels[1:])]
    return layers


@register("nin", "classification", num_classes=100)
def nin(*, kernel_size, in_channels, num_classes, width, dropout: float = 0.5) -> nn.Module:
    """Network in Network, CIFAR version (Lin et al. 2013): three mlpconv blocks (192-160-96, 192-192-192,
    192-192), max/avg pooling with dropout between them, a 1×1 conv to the classes, global average pool.
    Every K×K conv uses ``kernel_size`` (the paper's 3×3 only, not the original 5, 5, 3); BN after each conv."""
    c192, c160, c96 = (scaled(n, width) for n in (192, 160, 96))
    layers = [*_mlpconv(in_channels, (c192, c160, c96), kernel_size),
              nn.MaxPool2d(3, 2, 1), nn.Dropout(dropout),
              *_mlpconv(c96, (c192, c192, c192), kernel_size),
              nn.AvgPool2d(3, 2, 1), nn.Dropout(dropout),
              *_mlpconv(c192, (c192, c192), kernel_size),
              conv(c192, num_classes, 1, bias=True),
              nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)

"""What every family is built from: the one K×K conv (plain torch, so ``convert`` can weight it), conv-BN-ReLU,
the pooled linear head, and the residual denoiser wrapper."""

from __future__ import annotations

import torch
import torch.nn as nn


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, at least 1."""
    return max(1, round(channels * width))


def conv(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, *, groups: int = 1,
         bias: bool = False) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` that keeps the spatial size at stride 1 (padding K//2; 'same' for even K)."""
    padding = kernel_size // 2 if kernel_size % 2 else "same"
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)


class ConvNormAct(nn.Sequential):
    """conv → BatchNorm → ReLU (``act=False`` drops the ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *,
                 act: bool = True) -> None:
        layers = [conv(in_channels, out_channels, kernel_size, stride), nn.BatchNorm2d(out_channels)]
        super().__init__(*layers, *([nn.ReLU(inplace=True)] if act else []))


def classifier(features: nn.Module, channels: int, num_classes: int, dropout: float = 0.0) -> nn.Sequential:
    """``features`` → global average pool → (dropout) → linear."""
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] + ([nn.Dropout(dropout)] if dropout else [])
    return nn.Sequential(features, *head, nn.Linear(channels, num_classes))


class ResidualDenoiser(nn.Module):
    """Residual learning (Zhang et al. 2017): the body predicts the noise, the output is ``input − noise``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)

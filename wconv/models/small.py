"""Tiny models for the bundled smoke data: they train in seconds on a CPU."""

from __future__ import annotations

import torch.nn as nn

from wconv.models.blocks import ConvNormAct, classifier, scaled
from wconv.models.denoise import residual_cnn
from wconv.models.registry import register


@register("tiny_cnn", "classification", in_channels=1, num_classes=10)
def tiny_cnn(*, kernel_size, in_channels, num_classes, width, channels: int = 16) -> nn.Module:
    """For 8×8 digit images: three K×K conv-BN-ReLU layers (c, 2c stride 2, 2c), global pool, linear."""
    c = scaled(channels, width)
    features = nn.Sequential(ConvNormAct(in_channels, c, kernel_size), ConvNormAct(c, 2 * c, kernel_size, 2),
                             ConvNormAct(2 * c, 2 * c, kernel_size))
    return classifier(features, 2 * c, num_classes)


@register("tiny_denoiser", "denoising")
def tiny_denoiser(*, kernel_size, in_channels, width, depth: int = 4, channels: int = 32) -> nn.Module:
    """A 4-layer DnCNN without BN: K×K convs of 32 channels with ReLU, output ``input − noise``."""
    return residual_cnn(in_channels, scaled(channels, width), kernel_size, depth, batch_norm=False)

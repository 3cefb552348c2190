"""gMLP (Liu et al. 2021, "Pay attention to MLPs") for 32×32 images, with a small convolutional stem.

gMLP itself has no K×K conv; the stem (two K×K conv-BN-ReLU layers at full resolution) is where the weighted
convolution acts. The p×p stride-p patchify conv (p = 4, even) and every token/channel projection stay standard.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from wconv.models.blocks import ConvNormAct, scaled
from wconv.models.registry import register


class SpatialGatingUnit(nn.Module):
    """Split channels in (u, v); gate u by a linear projection of LayerNorm(v) across tokens. The projection
    starts near 0 with bias 1, so every block starts close to a plain channel MLP (as in the reference)."""

    def __init__(self, channels: int, tokens: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels // 2)
        self.proj = nn.Linear(tokens, tokens)
        nn.init.uniform_(self.proj.weight, -1e-3 / tokens, 1e-3 / tokens)
        nn.init.ones_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, tokens, channels)
        u, v = x.chunk(2, dim=-1)
        return u * self.proj(self.norm(v).transpose(1, 2)).transpose(1, 2)


class GMLPBlock(nn.Module):
    """x + W₂ · SGU(GELU(W₁ · LayerNorm(x)))."""

    def __init__(self, dim: int, ffn: int, tokens: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ffn), nn.GELU(),
                                  SpatialGatingUnit(ffn, tokens), nn.Linear(ffn // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class GMLP(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, kernel_size: int, stem: int, dim: int, ffn: int,
                 depth: int, patch_size: int, image_size: int) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"gmlp: image_size {image_size} is not a multiple of patch_size {patch_size}")
        tokens = (image_size // patch_size) ** 2
        self.image_size = image_size
        self.stem = nn.Sequential(ConvNormAct(in_channels, stem, kernel_size), ConvNormAct(stem, stem, kernel_size),
                                  nn.Conv2d(stem, dim, patch_size, patch_size))
        self.blocks = nn.Sequential(*[GMLPBlock(dim, ffn, tokens) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"gmlp expects {self.image_size}×{self.image_size} images (option image_size), "
                             f"got {tuple(x.shape[-2:])}")
        x = self.stem(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


@register("gmlp", "classification", num_classes=100)
def gmlp(*, kernel_size, in_channels, num_classes, width, depth: int = 30, dim: int = 128, ffn_mult: int = 6,
         stem_channels: int = 64, patch_size: int = 4, image_size: int = 32) -> nn.Module:
    """gMLP-Ti sizes (depth 30, d_model 128, d_ffn 768) on 4×4 patches of a 32×32 image (64 tokens)."""
    d = scaled(dim, width)
    return GMLP(in_channels, num_classes, kernel_size, scaled(stem_channels, width), d, 2 * (ffn_mult * d // 2),
                depth, patch_size, image_size)

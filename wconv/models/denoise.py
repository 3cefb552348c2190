"""The denoisers of Sect. 4.2: DnCNN, NAFNet and CascadedGaze (CGNet). RGB in, RGB out, fully convolutional.
Every K×K spatial conv (full and depthwise) uses ``kernel_size`` with padding K//2, so sizes are preserved."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from wconv.models.blocks import ConvNormAct, ResidualDenoiser, conv, scaled
from wconv.models.registry import register


def residual_cnn(in_channels: int, channels: int, kernel_size: int, depth: int, batch_norm: bool) -> ResidualDenoiser:
    """DnCNN's body (Zhang et al. 2017): K×K conv + ReLU, depth−2 × (K×K conv [+ BN] + ReLU), K×K conv to the
    noise estimate; the output is ``input − noise``."""
    if depth < 2:
        raise ValueError(f"depth must be ≥ 2, got {depth}")
    middle = [ConvNormAct(channels, channels, kernel_size) if batch_norm
              else nn.Sequential(conv(channels, channels, kernel_size, bias=True), nn.ReLU(inplace=True))
              for _ in range(depth - 2)]
    return ResidualDenoiser(nn.Sequential(conv(in_channels, channels, kernel_size, bias=True), nn.ReLU(inplace=True),
                                          *middle, conv(channels, in_channels, kernel_size)))


@register("dncnn", "denoising")
def dncnn(*, kernel_size, in_channels, width, depth: int = 17, channels: int = 64) -> nn.Module:
    """DnCNN-S: 17 layers of 64 channels, BN in the middle layers, residual learning."""
    return residual_cnn(in_channels, scaled(channels, width), kernel_size, depth, batch_norm=True)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of a (B, C, H, W) map (NAFNet's, eps 1e-6)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def simple_gate(x: torch.Tensor) -> torch.Tensor:
    """NAFNet's SimpleGate: split the channels in two halves and multiply them."""
    a, b = x.chunk(2, dim=1)
    return a * b


class RestorationBlock(nn.Module):
    """What NAFBlock and the CascadedGaze block share: LayerNorm → 1×1 (×2 channels) → depthwise K×K → spatial
    mixing (``mix``) → scaled residual; then LayerNorm → 1×1 → SimpleGate → 1×1 → scaled residual.
    The residual scales β, γ start at 0, so every block starts as the identity."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        c, dw = channels, 2 * channels
        self.norm1 = LayerNorm2d(c)
        self.conv1 = conv(c, dw, 1, bias=True)
        self.conv2 = conv(dw, dw, kernel_size, groups=dw, bias=True)
        self.norm2 = LayerNorm2d(c)
        self.conv4 = conv(c, 2 * c, 1, bias=True)
        self.conv5 = conv(c, c, 1, bias=True)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        y = inp + self.mix(self.conv2(self.conv1(self.norm1(inp)))) * self.beta
        return y + self.conv5(simple_gate(self.conv4(self.norm2(y)))) * self.gamma


class NAFBlock(RestorationBlock):
    """NAFNet block (Chen et al. 2022): SimpleGate, then simplified channel attention, then 1×1."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(channels, kernel_size)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv(channels, channels, 1, bias=True))
        self.conv3 = conv(channels, channels, 1, bias=True)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        x = simple_gate(x)
        return self.conv3(x * self.sca(x))


# Global Context Extractor geometry of the reference: (kernel sizes, strides) for 2 or 3 cascaded convs.
_GCE = {2: ((3, 3), (2, 3)), 3: ((3, 3, 5), (2, 3, 4))}


class CascadedGazeBlock(RestorationBlock):
    """CascadedGaze block (Ghasemabadi et al. 2024): GELU, then a Global Context Extractor of cascaded strided
    depthwise-separable convs (fixed 3×3/5×5 sizes, no padding) on the sum of the two channel halves; its
    outputs, upsampled (nearest), are concatenated to the features, channel-attended and projected by 1×1."""

    def __init__(self, channels: int, kernel_size: int, gce_convs: int) -> None:
        super().__init__(channels, kernel_size)
        if gce_convs not in _GCE:
            raise ValueError(f"cgnet: gce_convs entries must be 2 or 3, got {gce_convs}")
        c, (sizes, strides) = channels, _GCE[gce_convs]
        self.gce = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, k, s, groups=c, bias=False), conv(c, c, 1))
                                 for k, s in zip(sizes, strides))
        mixed = (2 + gce_convs) * c
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv(mixed, mixed, 1, bias=True))
        self.project_out = conv(mixed, c, 1, bias=True)

    @staticmethod
    def min_size(gce_convs: int) -> int:
        """The smallest map the cascade of strided, unpadded convs accepts."""
        n = 1
        for k, s in reversed(list(zip(*_GCE[gce_convs]))):
            n = (n - 1) * s + k
        return n

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(x)
        a, b = x.chunk(2, dim=1)
        context, g = [x], a + b
        for extract in self.gce:
            g = F.gelu(extract(g))
            context.append(F.interpolate(g, size=x.shape[-2:], mode="nearest"))
        x = torch.cat(context, dim=1)
        return self.project_out(x * self.sca(x))


class RestorationUNet(nn.Module):
    """NAFNet's UNet: K×K intro conv, encoder levels (blocks, then a 2×2 stride-2 conv doubling the channels),
    middle blocks, decoder levels (1×1 conv + PixelShuffle, add the skip, blocks), K×K ending conv, plus the
    input. Inputs are zero-padded to a multiple of 2^levels (and to ``min_size``) and cropped back."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, enc_blks: Sequence[int],
                 middle_blk_num: int, dec_blks: Sequence[int],
                 encoder_block: Callable[[int, int], nn.Module] | None = None, min_size: int = 1) -> None:
        super().__init__()
        if len(enc_blks) != len(dec_blks):
            raise ValueError(f"enc_blks {tuple(enc_blks)} and dec_blks {tuple(dec_blks)} need the same length")
        encoder_block = encoder_block or (lambda c, level: NAFBlock(c, kernel_size))
        self.intro = conv(in_channels, channels, kernel_size, bias=True)
        self.ending = conv(channels, in_channels, kernel_size, bias=True)
        self.encoders, self.downs, self.ups, self.decoders = (nn.ModuleList() for _ in range(4))
        c = channels
        for level, n in enumerate(enc_blks):
            self.encoders.append(nn.Sequential(*[encoder_block(c, level) for _ in range(n)]))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, 2))
            c *= 2
        self.middle = nn.Sequential(*[NAFBlock(c, kernel_size) for _ in range(middle_blk_num)])
        for n in dec_blks:
            self.ups.append(nn.Sequential(conv(c, 2 * c, 1), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(c, kernel_size) for _ in range(n)]))
        self.multiple = 2 ** len(enc_blks)
        self.min_size = min_size

    def _padded(self, n: int) -> int:
        return self.multiple * math.ceil(max(n, self.min_size) / self.multiple)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        h, w = inp.shape[-2:]
        x0 = F.pad(inp, (0, self._padded(w) - w, 0, self._padded(h) - h))
        x, skips = self.intro(x0), []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle(x)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = decoder(up(x) + skip)
        return (self.ending(x) + x0)[..., :h, :w]


@register("nafnet", "denoising")
def nafnet(*, kernel_size, in_channels, width, channels: int = 32, enc_blks: Sequence[int] = (1, 1, 1, 1),
           middle_blk_num: int = 1, dec_blks: Sequence[int] = (1, 1, 1, 1)) -> nn.Module:
    """NAFNet (Chen et al. 2022), width 32 with one block per level by default (the reference's lightweight
    setting for small patches); the SIDD model is ``enc_blks=(2, 2, 4, 8), middle_blk_num=12, dec_blks=(2, 2, 2, 2)``."""
    return RestorationUNet(in_channels, scaled(channels, width), kernel_size, enc_blks, middle_blk_num, dec_blks)


@register("cgnet", "denoising")
def cgnet(*, kernel_size, in_channels, width, channels: int = 32, enc_blks: Sequence[int] = (1, 1, 1, 1),
          middle_blk_num: int = 1, dec_blks: Sequence[int] = (1, 1, 1, 1),
          gce_convs: Sequence[int] = (3, 3, 2, 2)) -> nn.Module:
    """CascadedGaze (Ghasemabadi et al. 2024): NAFNet's UNet with CascadedGaze blocks in the encoder (``gce_convs``
    extractor convs per level) and NAFBlocks elsewhere. Same small default as ``nafnet``; the SIDD model is
    ``channels=60, enc_blks=(2, 2, 4, 6), middle_blk_num=10, dec_blks=(2, 2, 2, 2)``."""
    if len(gce_convs) != len(enc_blks):
        raise ValueError(f"cgnet: gce_convs {tuple(gce_convs)} needs one entry per encoder level {tuple(enc_blks)}")
    min_size = max(CascadedGazeBlock.min_size(g) * 2 ** level for level, g in enumerate(gce_convs))
    return RestorationUNet(in_channels, scaled(channels, width), kernel_size, enc_blks, middle_blk_num, dec_blks,
                           lambda c, level: CascadedGazeBlock(c, kernel_size, gce_convs[level]), min_size)

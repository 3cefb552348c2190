"""GAC-SNN (Qiu et al., AAAI 2024): a membrane-shortcut spiking ResNet (MS-ResNet) whose input spikes are
gated by Gated Attention Coding. Follows the authors' code (github.com/bollossom/GAC): the CIFAR MS-ResNet
layout (K×K stem 64, stages of 3/3/2 blocks at 128/256/512) with the GAC encoder and the hand-written LIF
neuron (``mem_update`` / ``ActFun``) of their GAC model. Tensors inside are time-major: (T, B, C, H, W).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from wconv.models.blocks import ConvNormAct, conv, scaled
from wconv.models.registry import register


class SpikeFunction(torch.autograd.Function):
    """Heaviside spike ``u > θ`` with the reference's rectangular surrogate: dS/du = 1/(2ℓ) where |u − θ| < ℓ.

    ``forward`` takes no ``ctx`` (``setup_context`` saves what ``backward`` needs) and both are plain tensor
    code, so ``torch.func`` transforms it: ``generate_vmap_rule`` lets ``wconv.fused`` train K members at once."""

    generate_vmap_rule = True

    @staticmethod
    def forward(membrane: torch.Tensor, threshold: float, window: float) -> torch.Tensor:
        return membrane.gt(threshold).to(membrane.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        membrane, threshold, window = inputs
        ctx.save_for_backward(membrane)
        ctx.threshold, ctx.window = threshold, window

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (membrane,) = ctx.saved_tensors
        surrogate = ((membrane - ctx.threshold).abs() < ctx.window).to(grad_output.dtype) / (2 * ctx.window)
        return grad_output * surrogate, None, None


class LIF(nn.Module):
    """Leaky integrate-and-fire over the time axis: u_t = decay · u_{t−1} · (1 − s_{t−1}) + x_t, s_t = [u_t > θ]
    (hard reset, the reset path detached). Defaults of the reference: θ = 0.5, decay 0.25, window ℓ = 0.5."""

    def __init__(self, threshold: float = 0.5, decay: float = 0.25, window: float = 0.5) -> None:
        super().__init__()
        self.threshold, self.decay, self.window = threshold, decay, window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spikes, membrane = [], x[0]
        for t in range(x.shape[0]):
            if t:
                membrane = membrane * self.decay * (1 - spikes[-1].detach()) + x[t]
            spikes.append(SpikeFunction.apply(membrane, self.threshold, self.window))
        return torch.stack(spikes)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, decay={self.decay}, window={self.window}"


class PerStep(nn.Sequential):
    """Apply image layers to every time step at once by folding T into the batch (spikingjelly's SeqToANNContainer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class MSBlock(nn.Module):
    """Membrane-shortcut block: the shortcut carries membrane potentials, spikes feed the convs
    (LIF → K×K conv-BN → LIF → K×K conv-BN, plus the identity or a 1×1 conv-BN projection)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(LIF(), PerStep(ConvNormAct(in_channels, out_channels, kernel_size, stride, act=False)),
                                  LIF(), PerStep(ConvNormAct(out_channels, out_channels, kernel_size, act=False)))
        self.shortcut = (nn.Identity() if stride == 1 and in_channels == out_channels
                         else PerStep(ConvNormAct(in_channels, out_channels, 1, stride, act=False)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class GatedAttentionCoding(nn.Module):
    """GAC: gate the encoder's spikes by σ(TA · SCA) of the encoder's membrane input, where TA is a shared MLP
    over the T axis of its average and max pools, and SCA two K×K convs with a ReLU between them."""

    def __init__(self, steps: int, channels: int, kernel_size: int, ratio: int = 2) -> None:
        super().__init__()
        hidden = max(1, steps // ratio)
        self.temporal = nn.Sequential(nn.Conv3d(steps, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                      nn.Conv3d(hidden, steps, 1, bias=False))
        self.spatial = PerStep(conv(channels, channels, kernel_size), nn.ReLU(inplace=True),
                               conv(channels, channels, kernel_size))

    def forward(self, x: torch.Tensor, spikes: torch.Tensor) -> torch.Tensor:
        by_sample = x.transpose(0, 1)  # (B, T, C, H, W): T plays the channel role of the Conv3d MLP
        ta = self.temporal(F.adaptive_avg_pool3d(by_sample, 1)) + self.temporal(F.adaptive_max_pool3d(by_sample, 1))
        return torch.sigmoid(ta.transpose(0, 1) * self.spatial(x)) * spikes


class GACSNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, kernel_size: int, width: float, steps: int,
                 blocks: tuple[int, ...], gac_kernel: int) -> None:
        super().__init__()
        self.steps = steps
        stem = scaled(64, width)
        self.stem = ConvNormAct(in_channels, stem, kernel_size, act=False)
        self.encode = LIF()
        self.gac = GatedAttentionCoding(steps, stem, gac_kernel)
        layers, c_in = [], stem
        for stage, (n, c) in enumerate(zip(blocks, (128, 256, 512))):
            for i in range(n):
                layers.append(MSBlock(c_in, scaled(c, width), kernel_size, 2 if stage and not i else 1))
                c_in = scaled(c, width)
        self.stages = nn.Sequential(*layers)
        self.fire = LIF()
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images → (B, classes) logits, averaged over the T steps (the reference averages the
        per-step outputs in its loss; the linear head commutes with that mean)."""
        # The reference repeats the image T times before the stem; the stem's output is the same at every step.
        membrane = self.stem(x).unsqueeze(0).repeat(self.steps, 1, 1, 1, 1)
        x = self.fire(self.stages(self.gac(membrane, self.encode(membrane))))
        return self.fc(x.mean(dim=(0, 3, 4)))


@register("gac_snn", "classification", num_classes=100)
def gac_snn(*, kernel_size, in_channels, num_classes, width, steps: int = 4, blocks: tuple[int, ...] = (3, 3, 2),
            gac_kernel: int | None = None) -> nn.Module:
    """``steps``: time steps T (4 as in the reference's GAC model). ``gac_kernel``: size of GAC's two SCA convs,
    ``kernel_size`` by default (the paper's "only 1×1 and 3×3"); the reference ResNet-18 uses 4 (even: unweighted)."""
    if len(blocks) != 3:
        raise ValueError(f"gac_snn: blocks gives the block count of the 3 stages, got {blocks!r}")
    return GACSNN(in_channels, num_classes, kernel_size, width, steps, tuple(blocks), gac_kernel or kernel_size)

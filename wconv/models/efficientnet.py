"""EfficientNet-B0 (Tan & Le 2019): torchvision's model, with a stride-1 K×K stem for 32×32 inputs by default."""

from __future__ import annotations

import torch.nn as nn

from wconv.models.blocks import conv
from wconv.models.registry import register


@register("efficientnet_b0", "classification", num_classes=100)
def efficientnet_b0(*, kernel_size, in_channels, num_classes, width, depth: float = 1.0, stem_stride: int = 1,
                    dropout: float = 0.2) -> nn.Module:
    """``kernel_size`` sets the stem conv only; the MBConv depthwise convs keep B0's 3×3 and 5×5, and ``convert``
    weights those whose size matches. ``width``/``depth`` are B0's width/depth multipliers. ``stem_stride=2``
    gives torchvision's ImageNet stem (a 32×32 image then ends as a 1×1 map)."""
    from torchvision.models import efficientnet as tv  # on use: torchvision imports torch._dynamo (~3 s of CPU)

    setting, last_channel = tv._efficientnet_conf("efficientnet_b0", width_mult=width, depth_mult=depth)
    model = tv.EfficientNet(setting, dropout, num_classes=num_classes, last_channel=last_channel)
    stem = model.features[0][0]
    model.features[0][0] = conv(in_channels, stem.out_channels, kernel_size, stem_stride)
    return model

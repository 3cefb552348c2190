"""wconv: the weighted convolution of the paper (Sect. 3.2) and what trains it.

The library knows nothing of sweeps, SLURM or databases (those live in ``launch/`` and ``analysis/``).
"""

from wconv.conv import (
    DensityStep,
    WeightedConv1d,
    WeightedConv2d,
    WeightedConv3d,
    convert,
    density,
    density_scale,
    fuse,
    param_groups,
    scale_init,
    shape_init,
)

__all__ = [
    "DensityStep",
    "WeightedConv1d",
    "WeightedConv2d",
    "WeightedConv3d",
    "convert",
    "density",
    "density_scale",
    "fuse",
    "param_groups",
    "scale_init",
    "shape_init",
]
__version__ = "0.1.0"

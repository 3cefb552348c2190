"""Splits: what the trainer iterates, as batches of (input, target) tensors on the data's device.

Every random choice of a training epoch (order, flips, crops, patches, noise) is drawn from the
caller's CPU ``torch.Generator``, on the CPU, before anything moves to the device: one generator
state gives one data order and augmentation whatever the device and whatever model is trained,
so α and the baseline α = 1 see the same data (Sect. 4, "for a fair comparison").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Batch = tuple[Tensor, Tensor]

SPLIT_SEED = 0
"""Seed of every train/val/test partition: fixed, independent of the trial seed."""
NOISE_SEEDS = {"train": 100, "val": 101, "test": 102}
"""Seeds of the denoising noise drawn once at load (val, test) or without a generator (train)."""


class Split:
    """The examples of one split (train, val or test) of a dataset."""

    def __len__(self) -> int:
        """Examples per epoch."""
        raise NotImplementedError

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """One epoch in batches of at most ``batch_size`` (the last one may be smaller).

        With a generator the order is shuffled and, for a training split, augmented from it;
        without one the order is fixed and nothing is augmented.
        """
        raise NotImplementedError


def _order(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.arange(n) if generator is None else torch.randperm(n, generator=generator)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def random_crops(images: Tensor, offsets: Tensor, padding: int) -> Tensor:
    """Crop each of ``images`` (N, C, H, W), zero-padded by ``padding``, at its own (row, col) offset.

    Offsets run over [0, 2·padding]; (padding, padding) is the identity. Zero padding on the raw
    pixels as torchvision's ``RandomCrop(size, padding)`` before ``Normalize``.
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = offsets.to(images.device)
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)
    n_idx = torch.arange(n, device=images.device)[:, None, None, None]
    c_idx = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]


def _flip(images: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.to(images.device)[:, None, None, None], images.flip(-1), images)


class LabelledImages(Split):
    """Classification: raw pixels kept as uint8 on the device, scaled and normalised per batch.

    Yields (images float32 (B, C, H, W) = (pixel·scale − mean)/std, labels int64 (B,)).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        scale: float,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        hflip: bool = False,
        crop_padding: int = 0,
        index: Tensor | None = None,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.to(device=images.device, dtype=torch.int64)
        self.scale = float(scale)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        self.train = train
        self.hflip = hflip
        self.crop_padding = crop_padding
        self.index = index if index is not None else torch.arange(len(images))
        """Position of each example in its source file (provenance; disjointness of splits)."""

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        _check_batch_size(batch_size)
        augment = self.train and generator is not None
        order = _order(len(self), generator)
        for start in range(0, len(self), batch_size):
            idx = order[start : start + batch_size]
            b = len(idx)
            idx = idx.to(self.images.device)
            x = self.images[idx]
            if augment:
                # Always the same draws in the same order, whichever augmentations are on.
                offsets = torch.randint(0, 2 * self.crop_padding + 1, (b, 2), generator=generator)
                flip = torch.rand(b, generator=generator) < 0.5
                if self.crop_padding:
                    x = random_crops(x, offsets, self.crop_padding)
                if self.hflip:
                    x = _flip(x, flip)
            x = (x.to(torch.float32) * self.scale - self.mean) / self.std
            yield x, self.labels[idx]


class NoisyPatches(Split):
    """Denoising training: random patches of whole images, fresh Gaussian noise every epoch.

    Yields (noisy, clean), float32 (B, C, p, p); clean in [0, 1], noisy = clean + N(0, σ²) NOT
    clamped (clamping would bias the noise near black and white). Each patch picks its image
    uniformly, then a uniform position, then a horizontal flip with probability ½ (if ``hflip``).
    Without a generator the patches and noise come from the fixed ``seed`` and are not flipped.
    """

    def __init__(
        self,
        images: Sequence[Tensor],
        *,
        patch_size: int,
        patches_per_epoch: int,
        sigma: float,
        hflip: bool,
        seed: int,
        names: Sequence[str] = (),
    ):
        if not images:
            raise ValueError("NoisyPatches needs at least one image")
        for img in images:
            if img.dtype != torch.uint8 or img.dim() != 3 or min(img.shape[-2:]) < patch_size:
                raise ValueError(f"images must be uint8 (C, H, W) with H, W >= {patch_size}, got {tuple(img.shape)}")
        self.images = list(images)
        self.patch_size = patch_size
        self.patches_per_epoch = patches_per_epoch
        self.sigma = float(sigma)
        self.hflip = hflip
        self.seed = seed
        self.names = list(names)
        """Which images the patches come from."""
        self._sizes = torch.tensor([img.shape[-2:] for img in self.images], dtype=torch.float64)

    def __len__(self) -> int:
        return self.patches_per_epoch

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        _check_batch_size(batch_size)
        augment = generator is not None and self.hflip
        g = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        p, c = self.patch_size, self.images[0].shape[0]
        device = self.images[0].device
        for start in range(0, len(self), batch_size):
            b = min(batch_size, len(self) - start)
            which = torch.randint(len(self.images), (b,), generator=g)
            u = torch.rand(b, 2, generator=g, dtype=torch.float64)
            flip = torch.rand(b, generator=g) < 0.5
            noise = torch.randn(b, c, p, p, generator=g)
            corners = (u * (self._sizes[which] - p + 1)).floor().long().tolist()
            clean = torch.stack(
                [self.images[k][:, y : y + p, x : x + p] for k, (y, x) in zip(which.tolist(), corners)]
            ).to(torch.float32) / 255
            if augment:
                clean = _flip(clean, flip)
            yield clean + self.sigma * noise.to(device), clean


def tiles(image: Tensor, patch_size: int, max_tiles: int | None = None) -> Tensor:
    """Non-overlapping patch_size tiles of ``image`` (C, H, W) on a grid centred in the image.

    Returns (n, C, p, p) in row-major grid order; with ``max_tiles`` only that many, evenly spaced
    over the grid, so eval cost stays bounded on large images.
    """
    p = patch_size
    c, h, w = image.shape
    ny, nx = h // p, w // p
    y0, x0 = (h - ny * p) // 2, (w - nx * p) // 2
    grid = image[:, y0 : y0 + ny * p, x0 : x0 + nx * p]
    out = grid.reshape(c, ny, p, nx, p).permute(1, 3, 0, 2, 4).reshape(ny * nx, c, p, p)
    if max_tiles is not None and len(out) > max_tiles:
        keep = np.round(np.linspace(0, len(out) - 1, max_tiles)).astype(np.int64)
        out = out[torch.from_numpy(keep)]
    return out


class NoisyTiles(Split):
    """Denoising evaluation: fixed tiles with noise drawn ONCE from ``seed`` when the split is built,
    so every trial is scored on the same noisy inputs. Yields (noisy, clean) like ``NoisyPatches``."""

    def __init__(self, clean: Tensor, *, sigma: float, seed: int, device: torch.device | str = "cpu",
                 names: Sequence[str] = ()):
        if clean.dtype != torch.uint8 or clean.dim() != 4:
            raise ValueError(f"tiles must be uint8 (N, C, p, p), got {clean.dtype} {tuple(clean.shape)}")
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
        # Built on the CPU, then moved: the same noisy inputs on every device.
        self.noisy = (clean.cpu().to(torch.float32) / 255 + float(sigma) * noise).to(device)
        self.clean = clean.to(device)
        self.sigma = float(sigma)
        self.names = list(names)
        """Which images the tiles come from."""

    def __len__(self) -> int:
        return len(self.clean)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        _check_batch_size(batch_size)
        order = _order(len(self), generator)
        for start in range(0, len(self), batch_size):
            idx = order[start : start + batch_size].to(self.clean.device)
            yield self.noisy[idx], self.clean[idx].to(torch.float32) / 255


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..N−1 into (kept, held out), holding out round(N·fraction) in all and about
    ``fraction`` of every class (systematic sampling over the examples shuffled within each class).

    Depends only on ``labels``, ``fraction`` and ``seed``, never on the trial seed. Both index
    arrays are sorted, so a prefix (``limit``) keeps the source file's order.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    shuffled = np.random.default_rng(seed).permutation(n)
    by_class = shuffled[np.argsort(labels[shuffled], kind="stable")]
    steps = np.floor(np.arange(n + 1) * fraction + 0.5)
    held = np.diff(steps) > 0
    return np.sort(by_class[~held]), np.sort(by_class[held])

"""The datasets of the paper (Sect. 4) and two small offline stand-ins, as tensors on one device.

    data = load("cifar100", root="/scratch/data", device="cuda")
    for x, y in data.train.batches(128, generator=torch.Generator().manual_seed(seed)):
        ...

``DATASETS`` maps each name to its task. Nothing here downloads except ``prepare``, which stages
CIFAR-100 and DIV2K from their official archives, downloaded or given (``sources``; see
``wconv.data.stage``); ``load`` runs ``check`` first, so a missing or damaged dataset is one
``DatasetError`` line naming the path and the fix, before any training starts. ``root`` defaults
to ``$WCONV_DATA``, else ``./data``; the bundled datasets (``BUNDLED``) need none.
"""

from __future__ import annotations

import inspect
import os
from importlib import import_module
from pathlib import Path

import torch

from wconv.data.split import Split
from wconv.data.stage import Staged
from wconv.data.task import DatasetError, TaskData
from wconv.metrics import MIN_IMAGE_SIZE

DATASETS = {
    "digits": "classification",
    "natural": "denoising",
    "cifar100": "classification",
    "div2k": "denoising",
}
"""Dataset name -> task."""
BUNDLED = {"digits": "scikit-learn", "natural": "scikit-image"}
"""Dataset name -> the package it ships inside (no folder, nothing to prepare)."""

__all__ = ["BUNDLED", "DATASETS", "DatasetError", "Split", "Staged", "TaskData", "check", "check_options", "load",
           "options", "prepare"]


def _root(root: str | Path | None) -> Path:
    return Path(root if root is not None else os.environ.get("WCONV_DATA", "data")).expanduser()


def _known(name: str) -> str:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return name


def _module(name: str):
    """The module of dataset ``name``, imported on first use: CIFAR-100 and DIV2K import torchvision (and through
    it torch._dynamo, ~3 s of CPU), which a trial on the bundled datasets never needs."""
    return import_module(f"wconv.data.{_MODULES[_known(name)]}")


_MODULES = {"digits": "digits", "natural": "natural", "cifar100": "cifar", "div2k": "div2k"}
_STAGED = ("cifar100", "div2k")
"""Datasets staged under a root by ``prepare`` (the others ship inside the package)."""


def options(name: str) -> dict[str, inspect.Parameter]:
    """The keywords of ``load`` that ``name`` uses (it ignores the others), with their annotations and defaults:
    what a caller may choose besides ``root`` and ``device``."""
    used = set(inspect.signature(_module(name).load).parameters)
    if name in _STAGED:
        used.add("verify")  # ``check`` compares official checksums / file counts for the staged datasets
    public = inspect.signature(load, eval_str=True).parameters
    return {n: p for n, p in public.items() if n in used and n not in ("root", "device")}


def check_options(**options) -> None:
    """Raise ValueError naming the first of these ``load`` options whose value ``load`` refuses; reads nothing."""
    if "val_fraction" in options and not 0 < options["val_fraction"] < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {options['val_fraction']}")
    if "noise_sigma" in options and not options["noise_sigma"] >= 0:
        raise ValueError(f"noise_sigma must be >= 0, got {options['noise_sigma']}")
    for arg in ("patch_size", "limit", "patches_per_epoch", "tiles_per_image"):
        value = options.get(arg)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{arg} must be a positive int or None, got {value!r}")
    if (options.get("patch_size") or MIN_IMAGE_SIZE) < MIN_IMAGE_SIZE:
        raise ValueError(f"patch_size must be ≥ {MIN_IMAGE_SIZE} (the SSIM window), got {options['patch_size']}")


def check(name: str, root: str | Path | None = None, *, verify: bool = True) -> None:
    """Raise DatasetError describing exactly what is missing or corrupt under ``root`` and how to fix it.

    ``verify`` checks the official checksums (CIFAR-100) or file counts (DIV2K); ``verify=False``
    accepts smaller files in the official format (tests) but still reads every file's structure.
    """
    module = _module(name)
    if name in _STAGED:
        module.check(_root(root), verify=verify)
    else:
        module.check()


def prepare(name: str, root: str | Path | None = None, sources: list[str | Path] | None = None) -> list[Staged]:
    """Stage ``name`` under ``root`` from its official archives and verify it; say what was done, per archive.

    The archives are downloaded (needs network) unless ``sources`` gives them: archive files under their
    official names, or folders holding them. What is already in place and verified is kept. The bundled
    datasets are only checked (``[]``).
    """
    module = _module(name)
    if name not in _STAGED:
        module.check()
        return []
    return module.prepare(_root(root), None if sources is None else [Path(s) for s in sources])



def load(
    name: str,
    *,
    root: str | Path | None = None,
    device: str | torch.device = "cpu",
    val_fraction: float = 0.1,
    noise_sigma: float = 0.01,
    patch_size: int | None = None,
    hflip: bool = True,
    random_crop: bool = False,
    limit: int | None = None,
    verify: bool = True,
    patches_per_epoch: int | None = None,
    tiles_per_image: int | None = None,
) -> TaskData:
    """Check, read and split ``name``, keeping its tensors on ``device``.

    val_fraction: share of the training pool held out for validation (fixed split seed; not
        used by ``natural``, which is split by image).
    noise_sigma: std of the Gaussian noise on [0, 1] images (denoising; Sect. 4.2: 0.01).
    patch_size: denoising patch side (default 32 natural, 64 div2k); ignored for classification.
    hflip, random_crop: training augmentation (random_crop pads by image side / 8: 4 px on CIFAR).
    limit: at most this many examples per split (and, for denoising, images read per split).
    verify: official checksums / file counts (see ``check``).
    patches_per_epoch: random training patches per epoch (default 256 natural, 16 per image div2k).
    tiles_per_image: cap on eval tiles per image (default: all for natural, 32 for div2k).
    """
    _known(name)
    check_options(val_fraction=val_fraction, noise_sigma=noise_sigma, patch_size=patch_size, limit=limit,
                  patches_per_epoch=patches_per_epoch, tiles_per_image=tiles_per_image)
    root = _root(root)
    check(name, root, verify=verify)
    module = _module(name)
    if name == "digits":
        return module.load(device=device, val_fraction=val_fraction, hflip=hflip, random_crop=random_crop,
                           limit=limit)
    if name == "natural":
        return module.load(device=device, noise_sigma=noise_sigma, patch_size=patch_size, hflip=hflip,
                            limit=limit, patches_per_epoch=patches_per_epoch, tiles_per_image=tiles_per_image)
    if name == "cifar100":
        return module.load(root, device=device, val_fraction=val_fraction, hflip=hflip, random_crop=random_crop,
                          limit=limit, verify=verify)
    return module.load(root, device=device, val_fraction=val_fraction, noise_sigma=noise_sigma,
                      patch_size=patch_size, hflip=hflip, limit=limit, patches_per_epoch=patches_per_epoch,
                      tiles_per_image=tiles_per_image)

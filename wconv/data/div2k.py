"""DIV2K (Sect. 4.2): the official HR PNG folders under root, denoised patch by patch.

Splits (the official test HR images are not public): val = ``val_fraction`` of the 800
``DIV2K_train_HR`` images held out with ``SPLIT_SEED`` (80 at the default 0.1), train = the other
720, test = the 100 ``DIV2K_valid_HR`` images. Training draws 64×64 patches at random, 16 per
training image per epoch (11,520); val and test are fixed 64×64 tiles, at most 32 per image evenly
spaced over a grid centred in the image (2,560 val, 3,200 test tiles), noise drawn once at load.

Memory: the training images are decoded once (threads) to uint8 on the device, about 6 GB for
720 images; patches become float32 per batch. Val/test images are cut to their tiles right away.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wconv.data.split import NOISE_SEEDS, SPLIT_SEED, NoisyPatches, NoisyTiles, stratified_holdout, tiles
from wconv.data.task import DatasetError, TaskData, prepare_hint

NAME = "div2k"
FOLDERS = {"DIV2K_train_HR": 800, "DIV2K_valid_HR": 100}
"""Official folder -> number of PNGs it holds."""
URL = "https://data.vision.ee.ethz.ch/cvl/DIV2K/{folder}.zip"
PATCH_SIZE = 64
PATCHES_PER_IMAGE = 16
TILES_PER_IMAGE = 32


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def check(root: Path, *, verify: bool = True) -> None:
    """Raise DatasetError unless both folders exist, hold the official number of PNGs (``verify``;
    at least one otherwise) and every PNG passes PIL's verify (structure and chunk CRCs)."""
    fix = prepare_hint(NAME, root)
    for name, count in FOLDERS.items():
        folder = root / name
        if not folder.is_dir():
            raise DatasetError(f"DIV2K folder {folder} not found: {fix}")
        pngs = _pngs(folder)
        if (verify and len(pngs) != count) or not pngs:
            raise DatasetError(f"DIV2K folder {folder} holds {len(pngs)} PNG files, expected {count}: "
                               f"delete it and {fix}")
        for path in pngs:
            try:
                with Image.open(path) as im:
                    im.verify()
            except Exception as e:
                raise DatasetError(f"DIV2K image {path} is corrupt ({type(e).__name__}: {e}): "
                                   f"delete {folder} and {fix}") from None


def prepare(root: Path) -> Path:
    from torchvision.datasets.utils import download_and_extract_archive

    root.mkdir(parents=True, exist_ok=True)
    for name, count in FOLDERS.items():
        if len(_pngs(root / name)) != count:
            # The site publishes no checksums; check() below is the verification.
            download_and_extract_archive(URL.format(folder=name), download_root=root, remove_finished=True)
    check(root, verify=True)
    return root


def _decode(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            array = np.array(im.convert("RGB"))
    except Exception as e:
        raise DatasetError(f"DIV2K image {path} cannot be decoded ({type(e).__name__}: {e}): "
                           f"delete {path.parent} and {prepare_hint(NAME, path.parent.parent)}") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _decode_all(paths: list[Path], patch_size: int) -> list[torch.Tensor]:
    # PIL releases the GIL while decoding: threads decode in parallel without extra processes.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(len(paths), cpus, 16))
    with ThreadPoolExecutor(workers) as pool:
        images = list(pool.map(_decode, paths))
    for path, img in zip(paths, images):
        if min(img.shape[-2:]) < patch_size:
            raise ValueError(f"patch_size {patch_size} is larger than DIV2K image {path} {tuple(img.shape[-2:])}")
    return images


def load(root: Path, *, device, val_fraction: float, noise_sigma: float, patch_size: int | None, hflip: bool,
         limit: int | None, patches_per_epoch: int | None, tiles_per_image: int | None) -> TaskData:
    p = patch_size or PATCH_SIZE
    per_image = tiles_per_image or TILES_PER_IMAGE
    official_train = _pngs(root / "DIV2K_train_HR")
    keep, held = stratified_holdout(np.zeros(len(official_train)), val_fraction, SPLIT_SEED)
    files = {
        "train": [official_train[i] for i in keep][:limit],
        "val": [official_train[i] for i in held][:limit],
        "test": _pngs(root / "DIV2K_valid_HR")[:limit],
    }

    def eval_split(split: str) -> NoisyTiles:
        clean = torch.cat([tiles(img, p, per_image) for img in _decode_all(files[split], p)])[:limit]
        return NoisyTiles(clean, sigma=noise_sigma, seed=NOISE_SEEDS[split], device=device,
                          names=[f.name for f in files[split]])

    per_epoch = patches_per_epoch or PATCHES_PER_IMAGE * len(files["train"])
    train = NoisyPatches(
        [img.to(device) for img in _decode_all(files["train"], p)], patch_size=p,
        patches_per_epoch=min(per_epoch, limit or per_epoch), sigma=noise_sigma, hflip=hflip,
        seed=NOISE_SEEDS["train"], names=[f.name for f in files["train"]],
    )
    return TaskData(NAME, "denoising", in_channels=3, num_classes=None, image_size=p,
                    train=train, val=eval_split("val"), test=eval_split("test"))

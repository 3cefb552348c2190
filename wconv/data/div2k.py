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
from wconv.data.stage import Archive, Staged, official, stage
from wconv.data.task import DatasetError, TaskData, prepare_hint

NAME = "div2k"
OFFICIAL = {
    "archives": {f"{folder}.zip": {"url": f"https://data.vision.ee.ethz.ch/cvl/DIV2K/{folder}.zip", "md5": None}
                 for folder in ("DIV2K_train_HR", "DIV2K_valid_HR")},
    "counts": {"DIV2K_train_HR": 800, "DIV2K_valid_HR": 100},
}
"""The official archives (the site publishes no checksums) and the number of PNGs in each one's folder."""
PATCH_SIZE = 64
PATCHES_PER_IMAGE = 16
TILES_PER_IMAGE = 32


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def archives() -> list[Archive]:
    facts = official(NAME, OFFICIAL)
    return [Archive(filename, entry["url"], entry["md5"], Path(filename).stem,
                    f"{facts['counts'][Path(filename).stem]} PNGs, each decoded")
            for filename, entry in facts["archives"].items()]


def problem(folder: Path, verify: bool = True, decode: bool = False) -> tuple[Path, str] | None:
    """What is wrong with a DIV2K HR folder: (the folder or an image, what), or None. It must hold the
    official number of PNGs (``verify``; at least one otherwise), each passing PIL's verify (structure and
    chunk CRCs) and, with ``decode``, decoding in full."""
    count = official(NAME, OFFICIAL)["counts"][folder.name]
    pngs = _pngs(folder)
    if (verify and len(pngs) != count) or not pngs:
        return folder, f"holds {len(pngs)} PNG files, expected {count}"
    with ThreadPoolExecutor(_workers(len(pngs))) as pool:  # PIL releases the GIL while decoding
        for path, error in zip(pngs, pool.map(lambda path: _damage(path, decode), pngs)):
            if error:
                return path, f"is corrupt ({error})"
    return None


def _damage(path: Path, decode: bool) -> str | None:
    try:
        with Image.open(path) as im:
            im.verify()
        if decode:
            with Image.open(path) as im:
                im.load()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def check(root: Path, *, verify: bool = True) -> None:
    """Raise DatasetError unless both folders exist and pass ``problem``."""
    fix = prepare_hint(NAME, root)
    for name in official(NAME, OFFICIAL)["counts"]:
        folder = root / name
        if not folder.is_dir():
            raise DatasetError(f"DIV2K folder {folder} not found: {fix}")
        found = problem(folder, verify)
        if found:
            path, what = found
            kind = "folder" if path == folder else "image"
            raise DatasetError(f"DIV2K {kind} {path} {what}: delete {folder} and {fix}")


def prepare(root: Path, sources: list[Path] | None = None) -> list[Staged]:
    return stage(NAME, root, archives(), lambda folder, archive, decode: problem(folder, True, decode), sources)


def _workers(n: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(n, cpus, 16))


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
    with ThreadPoolExecutor(_workers(len(paths))) as pool:
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

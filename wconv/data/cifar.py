"""CIFAR-100 (Sect. 4.1): the official ``cifar-100-python`` folder under root, read by torchvision.

Splits: val = ``val_fraction`` of the official training set, held out per class with
``SPLIT_SEED`` (5,000 images, 50 per class, at the default 0.1); train = the other 45,000;
test = the official 10,000 test images. The uint8 images live on the device (150 MB for train);
each batch is scaled to [0, 1], augmented there and normalised with CIFAR-100's mean and std.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR100
from torchvision.datasets.utils import check_integrity

from wconv.data.split import SPLIT_SEED, LabelledImages, stratified_holdout
from wconv.data.stage import Archive, Staged, official, stage
from wconv.data.task import DatasetError, TaskData, prepare_hint

NAME = "cifar100"
FOLDER = CIFAR100.base_folder  # "cifar-100-python"
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)
"""Per-channel mean and std of the 50,000 official training images in [0, 1]."""
CROP_PADDING = 4

OFFICIAL = {
    "archives": {CIFAR100.filename: {"url": CIFAR100.url, "md5": CIFAR100.tgz_md5}},
    "files": {**dict(CIFAR100.train_list + CIFAR100.test_list), CIFAR100.meta["filename"]: CIFAR100.meta["md5"]},
}
"""The official archive (URL, md5) and the md5 of each file it holds, from torchvision's own lists."""
_KEYS = {"train": ("data", "fine_labels"), "test": ("data", "fine_labels"), CIFAR100.meta["filename"]:
         (CIFAR100.meta["key"],)}
"""Official file -> the entries it must hold."""


class _UncheckedCIFAR100(CIFAR100):
    """torchvision's CIFAR100 without its md5 checks, for ``verify=False`` (files that are in the
    official format but not the official files, e.g. tests). Overrides private methods that
    torchvision has kept unchanged from 0.17 to 0.29."""

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


def archives() -> list[Archive]:
    facts = official(NAME, OFFICIAL)
    return [Archive(filename, entry["url"], entry["md5"], FOLDER, f"{'/'.join(_KEYS)} md5s verified")
            for filename, entry in facts["archives"].items()]


def problem(folder: Path, verify: bool = True) -> tuple[Path, str] | None:
    """What is wrong with a cifar-100-python folder: (the file, what), or None. ``verify`` compares the
    official md5s; otherwise each file must unpickle to the official entries."""
    md5s = official(NAME, OFFICIAL)["files"] if verify else {}
    for name, keys in _KEYS.items():
        path = folder / name
        if not path.is_file():
            return path, "is missing"
        if verify:
            if not check_integrity(path, md5s[name]):
                return path, f"is corrupt (md5 differs from the official {md5s[name]})"
            continue
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            missing = [k for k in keys if k not in entry]
        except Exception as e:
            return path, f"is corrupt (cannot unpickle: {type(e).__name__})"
        if missing:
            return path, f"is corrupt (no {', '.join(missing)} entry)"
    return None


def check(root: Path, *, verify: bool = True) -> None:
    """Raise DatasetError unless root/cifar-100-python holds the three official files: matching the
    official md5 (``verify``) or at least unpickling to the official entries (``verify=False``)."""
    folder = root / FOLDER
    fix = prepare_hint(NAME, root)
    if not folder.is_dir():
        raise DatasetError(f"CIFAR-100 folder {folder} not found: {fix}")
    found = problem(folder, verify)
    if found:
        path, what = found
        raise DatasetError(f"CIFAR-100 file {path} {what}: delete {folder} and {fix}")


def prepare(root: Path, sources: list[Path] | None = None) -> list[Staged]:
    return stage(NAME, root, archives(), lambda folder, archive, decode: problem(folder), sources)


def _read(root: Path, train: bool, verify: bool) -> tuple[torch.Tensor, np.ndarray]:
    cls = CIFAR100 if verify else _UncheckedCIFAR100
    try:
        ds = cls(root, train=train, download=False)
    except Exception as e:  # check() passed, so the file changed under us or is malformed inside
        raise DatasetError(f"CIFAR-100 under {root / FOLDER} could not be read ({type(e).__name__}: {e}): "
                           f"delete it and {prepare_hint(NAME, root)}") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # N, 3, 32, 32 uint8
    return images, np.asarray(ds.targets, dtype=np.int64)


def load(root: Path, *, device, val_fraction: float, hflip: bool, random_crop: bool, limit: int | None,
         verify: bool) -> TaskData:
    train_images, train_labels = _read(root, True, verify)
    test_images, test_labels = _read(root, False, verify)
    train, val = stratified_holdout(train_labels, val_fraction, SPLIT_SEED)

    def split(images, labels, index: np.ndarray, is_train: bool) -> LabelledImages:
        index = torch.from_numpy(index[:limit])
        return LabelledImages(
            images[index].to(device), torch.from_numpy(labels)[index],
            scale=1 / 255, mean=MEAN, std=STD, train=is_train,
            hflip=hflip, crop_padding=CROP_PADDING if random_crop else 0, index=index,
        )

    return TaskData(
        NAME, "classification", in_channels=3, num_classes=100, image_size=32,
        train=split(train_images, train_labels, train, True),
        val=split(train_images, train_labels, val, False),
        test=split(test_images, test_labels, np.arange(len(test_labels)), False),
    )

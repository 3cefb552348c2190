"""scikit-learn's handwritten digits: 1,797 real 8×8 grey images of 0–9, bundled (no download).

A small offline stand-in for CIFAR-100 (Sect. 4.1) for smoke runs and tests. Split 72/8/20: the
test 20 % and then ``val_fraction`` of the rest are held out per class with ``SPLIT_SEED``.
Pixels 0..16 are scaled to [0, 1] and normalised with the training split's mean and std.
The horizontal flip is honoured as asked (the trainer decides), though it turns some digits into
non-digits; the random crop pads by 1 pixel (image side / 8, as 4 for CIFAR's 32).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from wconv.data.split import SPLIT_SEED, LabelledImages, stratified_holdout
from wconv.data.task import DatasetError, TaskData

TEST_FRACTION = 0.2


def _raw() -> tuple[np.ndarray, np.ndarray]:
    """The images and labels ``sklearn.datasets.load_digits`` returns, read from the file it reads.

    Importing scikit-learn costs about 3 s of CPU, paid by every process that loads the data (each trial's
    worker, and the driver's data check); the file itself loads in milliseconds. If this scikit-learn keeps
    the file elsewhere, ``load_digits`` is asked."""
    try:
        path = _bundled_file()
        if path is None:
            from sklearn.datasets import load_digits

            bunch = load_digits()
            images, target = bunch.images, bunch.target
        else:
            data = np.loadtxt(path, delimiter=",")
            images, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1]
    except Exception as e:  # a broken scikit-learn install, not a missing download
        raise DatasetError(f"scikit-learn's bundled digits failed to load ({type(e).__name__}: {e}): "
                           "reinstall scikit-learn in this environment") from None
    return images.astype(np.uint8)[:, None], target.astype(np.int64)


def _bundled_file() -> Path | None:
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def check() -> None:
    _raw()


def load(*, device, val_fraction: float, hflip: bool, random_crop: bool, limit: int | None) -> TaskData:
    images, labels = _raw()
    rest, test = stratified_holdout(labels, TEST_FRACTION, SPLIT_SEED)
    keep, val = stratified_holdout(labels[rest], val_fraction, SPLIT_SEED + 1)
    train, val = rest[keep], rest[val]
    pixels = images[train].astype(np.float64) / 16
    mean, std = (float(pixels.mean()),), (float(pixels.std()),)

    def split(index: np.ndarray, is_train: bool) -> LabelledImages:
        index = torch.from_numpy(index[:limit])
        return LabelledImages(
            torch.from_numpy(images)[index].to(device),
            torch.from_numpy(labels)[index],
            scale=1 / 16, mean=mean, std=std, train=is_train,
            hflip=hflip, crop_padding=1 if random_crop else 0, index=index,
        )

    return TaskData("digits", "classification", in_channels=1, num_classes=10, image_size=8,
                    train=split(train, True), val=split(val, False), test=split(test, False))

"""Tiny dataset files in the official formats (CIFAR-100 python pickles, DIV2K HR PNG folders), and the
official archives that hold them (cifar-100-python.tar.gz, DIV2K_train_HR.zip / DIV2K_valid_HR.zip).

Used by the tests and by benchmarks/throughput.py, which needs full-size stand-ins.
"""

from __future__ import annotations

import pickle
import struct
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (as the official CIFAR files, pickled by Python 2): they load as
    str under encoding="latin1" (torchvision) and as bytes under encoding="bytes"."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _write_py2_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def write_cifar100(root: Path, n_train: int = 40, n_test: int = 10, seed: int = 0, classes: int = 4) -> Path:
    """cifar-100-python/{train,test,meta} under ``root``: random pixels, labels cycling over ``classes``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [int(i % classes) for i in range(n)]
        _write_py2_pickle(folder / name, {
            b"filenames": [f"img_{name}_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{name} batch".encode(),
            b"fine_labels": fine,
            b"coarse_labels": [c // 5 for c in fine],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        })
    _write_py2_pickle(folder / "meta", {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    })
    return folder


def write_div2k(root: Path, n_train: int = 5, n_valid: int = 2, size=(96, 80), seed: int = 0,
                smooth: bool = False) -> Path:
    """DIV2K_train_HR/0001.png… and DIV2K_valid_HR/0801.png… of ``size`` (width, height). ``smooth``
    draws colour fields plus noise, so PNG compression works as on photos rather than on white noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    for folder, n, first in (("DIV2K_train_HR", n_train, 1), ("DIV2K_valid_HR", n_valid, 801)):
        (root / folder).mkdir(parents=True)
        for i in range(first, first + n):
            if smooth:
                coarse = Image.fromarray(rng.integers(0, 256, (max(h // 64, 1), max(w // 64, 1), 3),
                                                      dtype=np.uint8)).resize((w, h))
                pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-8, 9, (h, w, 3), dtype=np.int16)
                pixels = pixels.clip(0, 255).astype(np.uint8)
            else:
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{i:04d}.png")
    return root


def write_cifar100_archive(folder: Path, **options) -> Path:
    """folder/cifar-100-python.tar.gz laid out as the official one: a gzipped tar of the cifar-100-python
    folder of ``write_cifar100(**options)``."""
    path = folder / "cifar-100-python.tar.gz"
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(path, "w:gz") as tar:
            tar.add(write_cifar100(Path(tmp), **options), arcname="cifar-100-python")
    return path


def write_div2k_archives(folder: Path, **options) -> list[Path]:
    """folder/DIV2K_train_HR.zip and folder/DIV2K_valid_HR.zip laid out as the official ones: each a zip of
    its folder (``DIV2K_train_HR/0001.png``…) of ``write_div2k(**options)``."""
    paths = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_div2k(Path(tmp), **options)
        for name in ("DIV2K_train_HR", "DIV2K_valid_HR"):
            paths.append(folder / f"{name}.zip")
            with zipfile.ZipFile(paths[-1], "w", zipfile.ZIP_DEFLATED) as z:
                z.write(root / name, name)
                for png in sorted((root / name).iterdir()):
                    z.write(png, f"{name}/{png.name}")
    return paths

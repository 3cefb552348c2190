"""wconv.data on tiny files generated in the official formats (CIFAR-100 pickles, DIV2K PNGs) and on
the datasets bundled with scikit-learn / scikit-image (offline)."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wconv.data import DATASETS, DatasetError, Split, TaskData, check, check_options, load, options
from wconv.data import cifar
from wconv.data.split import random_crops, stratified_holdout, tiles
from official_formats import _write_py2_pickle, write_cifar100, write_div2k


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def epoch(split: Split, batch_size: int, generator: torch.Generator | None = None) -> list[tuple[torch.Tensor, ...]]:
    return list(split.batches(batch_size, generator))


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(s, t) for (x, s), (y, t) in zip(a, b))


# ---------------------------------------------------------------- generated official-format files


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    write_cifar100(tmp_path)
    return tmp_path


@pytest.fixture
def div2k_root(tmp_path: Path) -> Path:
    return write_div2k(tmp_path)


@pytest.fixture(scope="module")
def natural():
    return load("natural", patches_per_epoch=24, tiles_per_image=10)


@pytest.fixture(scope="module")
def digits() -> TaskData:
    return load("digits", random_crop=True)


# ---------------------------------------------------------------- split mechanics


def test_stratified_holdout_is_disjoint_covers_all_and_keeps_class_shares():
    labels = np.repeat(np.arange(10), 50)
    kept, held = stratified_holdout(labels, 0.1, seed=0)
    assert len(held) == 50 and np.bincount(labels[held]).tolist() == [5] * 10
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(500))
    assert np.array_equal(held, stratified_holdout(labels, 0.1, seed=0)[1])
    assert not np.array_equal(held, stratified_holdout(labels, 0.1, seed=1)[1])


def test_random_crop_centre_offset_is_identity_and_corner_offset_shifts_in_zeros():
    images = torch.arange(1, 2 * 3 * 4 * 4 + 1, dtype=torch.uint8).view(2, 3, 4, 4)
    assert torch.equal(random_crops(images, torch.tensor([[2, 2], [2, 2]]), 2), images)
    shifted = random_crops(images, torch.tensor([[0, 0], [4, 4]]), 2)
    assert torch.equal(shifted[0, :, 2:, 2:], images[0, :, :2, :2]) and shifted[0, :, :2].eq(0).all()
    assert torch.equal(shifted[1, :, :2, :2], images[1, :, 2:, 2:]) and shifted[1, :, 2:].eq(0).all()


def test_tiles_cover_a_centred_grid_and_the_cap_spreads_them_evenly():
    image = torch.arange(3 * 10 * 13, dtype=torch.int64).view(3, 10, 13)
    grid = tiles(image, 4)
    assert grid.shape == (2 * 3, 3, 4, 4)
    assert torch.equal(grid[0], image[:, 1:5, 0:4]) and torch.equal(grid[5], image[:, 5:9, 8:12])
    capped = tiles(image, 4, max_tiles=3)
    assert torch.equal(capped, grid[[0, 2, 5]])


# ---------------------------------------------------------------- digits (classification, offline)


def test_digits_loads_offline_as_normalised_images_and_int64_labels(digits):
    assert DATASETS["digits"] == digits.task == "classification"
    assert (digits.in_channels, digits.num_classes, digits.image_size) == (1, 10, 8)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    x, y = next(digits.train.batches(len(digits.train)))
    assert x.shape == (len(digits.train), 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    assert set(y.tolist()) == set(range(10))


def test_digits_are_exactly_what_scikit_learns_load_digits_returns():
    from sklearn.datasets import load_digits

    from wconv.data.digits import _bundled_file, _raw

    assert _bundled_file() is not None  # read directly, without importing scikit-learn
    images, labels = _raw()
    bunch = load_digits()
    assert np.array_equal(images[:, 0], bunch.images) and np.array_equal(labels, bunch.target)


def test_digits_splits_are_disjoint_and_fixed_across_loads(digits):
    index = {name: set(getattr(digits, name).index.tolist()) for name in ("train", "val", "test")}
    assert not (index["train"] & index["val"] or index["train"] & index["test"] or index["val"] & index["test"])
    again = load("digits", limit=5)
    assert again.test.index.tolist() == digits.test.index[:5].tolist()


def test_equal_seeds_give_identical_training_batches_and_different_seeds_different(digits):
    a, b = epoch(digits.train, 100, seeded(7)), epoch(digits.train, 100, seeded(7))
    assert same(a, b)
    assert not same(a, epoch(digits.train, 100, seeded(8)))


def test_training_batches_are_shuffled_and_augmented_but_eval_batches_are_fixed(digits):
    plain = torch.cat([x for x, _ in digits.train.batches(2000)])
    x, y = next(digits.train.batches(2000, seeded(0)))
    assert not torch.equal(y, digits.train.labels)  # shuffled
    order = torch.randperm(len(digits.train), generator=seeded(0))
    assert torch.equal(y, digits.train.labels[order])  # the order the generator drew
    changed = (x != plain[order]).flatten(1).any(1).float().mean()
    assert 0.5 < changed < 1  # most images flipped or shifted, a few left as they were
    assert same(epoch(digits.val, 50), epoch(digits.val, 50))
    in_50s, in_7s = (torch.cat([x for x, _ in digits.val.batches(n)]) for n in (50, 7))
    assert torch.equal(in_50s, in_7s)


def test_hflip_alone_mirrors_about_half_the_training_images():
    data = load("digits", hflip=True, random_crop=False)
    plain = torch.cat([x for x, _ in data.train.batches(2000)])
    order = torch.randperm(len(data.train), generator=seeded(0))
    x, _ = next(data.train.batches(2000, seeded(0)))
    flipped = (x == plain[order].flip(-1)).flatten(1).all(1)
    kept = (x == plain[order]).flatten(1).all(1)
    assert (flipped | kept).all() and 0.4 < float((flipped & ~kept).float().mean()) < 0.6
    assert torch.equal(next(load("digits", hflip=False).train.batches(2000, seeded(0)))[0], plain[order])


def test_eval_splits_are_never_augmented_even_with_a_generator(digits):
    plain = torch.cat([x for x, _ in digits.val.batches(1000)])
    order = torch.randperm(len(digits.val), generator=seeded(0))
    x, y = next(digits.val.batches(1000, seeded(0)))
    assert torch.equal(x, plain[order]) and torch.equal(y, digits.val.labels[order])


def test_limit_caps_examples_per_split():
    data = load("digits", limit=12)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 12, 12)
    assert [len(x) for x, _ in data.train.batches(5, seeded(0))] == [5, 5, 2]


# ---------------------------------------------------------------- natural (denoising, offline)


def test_natural_loads_offline_as_noisy_clean_patch_pairs(natural):
    assert DATASETS["natural"] == natural.task == "denoising"
    assert (natural.in_channels, natural.num_classes, natural.image_size) == (3, None, 32)
    assert len(natural.train) == 24
    assert len(natural.val) == 10 and len(natural.test) == 10
    for split in (natural.train, natural.val, natural.test):
        noisy, clean = next(split.batches(8, seeded(0)))
        assert noisy.shape == clean.shape == (8, 3, 32, 32) and noisy.dtype == clean.dtype == torch.float32
        assert 0 <= float(clean.min()) and float(clean.max()) <= 1
        assert 0.006 < float((noisy - clean).std()) < 0.014  # σ = 0.01


def test_natural_splits_are_separate_images(natural):
    train, val, test = set(natural.train.names), set(natural.val.names), set(natural.test.names)
    assert train and val and test and not (train & val or train & test or val & test)


def test_training_patches_and_noise_follow_the_generator_and_are_fresh_each_epoch(natural):
    g = seeded(3)
    first, second = epoch(natural.train, 10, g), epoch(natural.train, 10, g)
    assert same(first, epoch(natural.train, 10, seeded(3)))
    assert not any(torch.equal(a[1], b[1]) for a, b in zip(first, second))  # new patches
    assert not any(torch.equal(a[0] - a[1], b[0] - b[1]) for a, b in zip(first, second))  # new noise
    assert not same(first, epoch(natural.train, 10, seeded(4)))


def test_eval_noise_is_drawn_once_and_identical_across_loads(natural):
    again = load("natural", patches_per_epoch=24, tiles_per_image=10)
    for a, b in ((natural.val, again.val), (natural.test, again.test)):
        assert same(epoch(a, 4), epoch(b, 4))
        assert same(epoch(a, 4), epoch(a, 4))
    assert not torch.equal(next(natural.val.batches(4))[0] - next(natural.val.batches(4))[1],
                           next(natural.test.batches(4))[0] - next(natural.test.batches(4))[1])


def test_noise_is_not_clamped_to_the_image_range():
    data = load("natural", noise_sigma=0.5, limit=8)
    for noisy, clean in (next(data.test.batches(8)), next(data.train.batches(8, seeded(0)))):
        assert float(noisy.min()) < 0 and float(noisy.max()) > 1
        assert 0.4 < float((noisy - clean).std()) < 0.6


# ---------------------------------------------------------------- CIFAR-100


def test_cifar100_loads_generated_official_files_with_verify_false(cifar_root):
    data = load("cifar100", root=cifar_root, verify=False, val_fraction=0.25)
    assert (data.task, data.in_channels, data.num_classes, data.image_size) == ("classification", 3, 100, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 10)
    assert data.val.labels.bincount().tolist() == [3, 2, 3, 2]  # 10 per class, a quarter held out
    assert not set(data.train.index.tolist()) & set(data.val.index.tolist())
    with open(cifar_root / "cifar-100-python" / "test", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    x, y = next(data.test.batches(10))
    first = torch.from_numpy(raw[b"data"][0]).view(3, 32, 32).float() / 255
    expected = (first - torch.tensor(cifar.MEAN).view(3, 1, 1)) / torch.tensor(cifar.STD).view(3, 1, 1)
    assert torch.allclose(x[0], expected, atol=1e-6)
    assert y.tolist() == raw[b"fine_labels"] and y.dtype == torch.int64


def test_cifar100_random_crop_and_flip_follow_the_generator(cifar_root):
    data = load("cifar100", root=cifar_root, verify=False, random_crop=True)
    a = epoch(data.train, 8, seeded(1))
    assert same(a, epoch(data.train, 8, seeded(1))) and not same(a, epoch(data.train, 8, seeded(2)))
    x, _ = next(data.train.batches(len(data.train), seeded(1)))
    black = ((0 - torch.tensor(cifar.MEAN)) / torch.tensor(cifar.STD)).view(1, 3, 1)
    assert (x[:, :, 0, :] == black).all(1).all(1).any()  # some image shifted down: a zero-padded top row


def test_cifar100_verify_rejects_files_that_are_not_the_official_ones(cifar_root):
    with pytest.raises(DatasetError, match=r"cifar-100-python/train is corrupt \(md5"):
        load("cifar100", root=cifar_root)


@pytest.mark.parametrize(
    "damage, named, says",
    [
        (lambda folder: [p.unlink() for p in folder.iterdir()] and folder.rmdir(), "cifar-100-python", "not found"),
        (lambda folder: (folder / "test").unlink(), "cifar-100-python/test", "missing"),
        (lambda folder: (folder / "meta").write_bytes(b"not a pickle"), "cifar-100-python/meta", "corrupt"),
        (lambda folder: _write_py2_pickle(folder / "train", {b"labels": [1]}), "cifar-100-python/train", "no data"),
    ],
    ids=["missing-folder", "missing-file", "unpicklable-file", "wrong-keys"],
)
def test_cifar100_damage_is_one_line_naming_the_path_and_the_fix(cifar_root, damage, named, says):
    damage(cifar_root / "cifar-100-python")
    with pytest.raises(DatasetError) as info:
        load("cifar100", root=cifar_root, verify=False)
    message = str(info.value)
    assert "\n" not in message and named in message and says in message
    assert f"wconv data prepare cifar100 --root {cifar_root}" in message


# ---------------------------------------------------------------- DIV2K


def test_div2k_loads_random_patches_and_capped_tiles(div2k_root):
    data = load("div2k", root=div2k_root, verify=False, val_fraction=0.2, patch_size=32, tiles_per_image=4)
    assert (data.task, data.in_channels, data.num_classes, data.image_size) == ("denoising", 3, None, 32)
    assert len(data.train.names) == 4 and len(data.val.names) == 1
    assert not set(data.train.names) & set(data.val.names)
    assert data.test.names == ["0801.png", "0802.png"]
    assert len(data.train) == 16 * 4 and len(data.val) == 4 and len(data.test) == 8  # 2×3 grid capped at 4
    noisy, clean = next(data.train.batches(16, seeded(0)))
    assert noisy.shape == clean.shape == (16, 3, 32, 32) and noisy.dtype == torch.float32
    assert same(epoch(data.train, 16, seeded(0)), epoch(data.train, 16, seeded(0)))
    again = load("div2k", root=div2k_root, verify=False, val_fraction=0.2, patch_size=32, tiles_per_image=4)
    assert same(epoch(data.test, 3), epoch(again.test, 3))


def _is_crop_of(patch: torch.Tensor, images: list[torch.Tensor]) -> bool:
    p = patch.shape[-1]
    return any((img.unfold(1, p, 1).unfold(2, p, 1) == patch[:, None, None]).all(0).all(-1).all(-1).any()
               for img in images)


@pytest.mark.parametrize("hflip", [False, True])
def test_div2k_patches_are_crops_of_the_training_images_mirrored_only_with_hflip(div2k_root, hflip):
    data = load("div2k", root=div2k_root, verify=False, patch_size=16, hflip=hflip, patches_per_epoch=8)
    _, clean = next(data.train.batches(8, seeded(5)))
    images = [img.float() / 255 for img in data.train.images]
    direct = [_is_crop_of(patch, images) for patch in clean]
    mirrored = [_is_crop_of(patch.flip(-1), images) for patch in clean]
    assert all(d or m for d, m in zip(direct, mirrored))
    assert any(m and not d for d, m in zip(direct, mirrored)) == hflip


def test_div2k_verify_requires_the_official_image_counts(div2k_root):
    with pytest.raises(DatasetError, match=r"DIV2K_train_HR holds 5 PNG files, expected 800"):
        check("div2k", div2k_root)


def test_div2k_missing_folder_is_named(div2k_root):
    for png in (div2k_root / "DIV2K_valid_HR").iterdir():
        png.unlink()
    (div2k_root / "DIV2K_valid_HR").rmdir()
    with pytest.raises(DatasetError, match=r"DIV2K_valid_HR not found: run `wconv data prepare div2k"):
        load("div2k", root=div2k_root, verify=False)


def test_div2k_truncated_png_is_named(div2k_root):
    png = div2k_root / "DIV2K_train_HR" / "0003.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"0003\.png is corrupt") as info:
        load("div2k", root=div2k_root, verify=False)
    assert str(png) in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- API


def test_options_are_the_load_keywords_each_dataset_uses():
    public = inspect.signature(load, eval_str=True).parameters
    for name in DATASETS:
        declared = options(name)
        assert {"root", "device", "name"}.isdisjoint(declared)
        assert all(declared[k] == public[k] for k in declared), name
    assert "val_fraction" not in options("natural"), "natural is split by image; val_fraction does not apply"
    assert {"patch_size", "noise_sigma"}.isdisjoint(options("digits"))
    assert "verify" in options("cifar100") and "verify" not in options("digits")


@pytest.mark.parametrize("name, bad, message", [
    ("digits", dict(val_fraction=1.5), "val_fraction must be in"),
    ("digits", dict(limit=0), "limit must be a positive int"),
    ("natural", dict(patch_size=8), "patch_size must be ≥ 11"),
    ("natural", dict(noise_sigma=-0.1), "noise_sigma must be >= 0"),
    ("natural", dict(tiles_per_image=True), "tiles_per_image must be a positive int"),
])
def test_check_options_refuses_what_load_refuses_before_reading_anything(name, bad, message):
    with pytest.raises(ValueError, match=message):
        load(name, **bad)
    with pytest.raises(ValueError, match=message):
        check_options(**bad)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DatasetError, match="choose one of digits, natural, cifar100, div2k"):
        load("mnist")


def test_root_defaults_to_wconv_data_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WCONV_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=str(tmp_path / "nowhere" / "cifar-100-python")):
        load("cifar100")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_are_identical_on_cpu_and_cuda(cifar_root):
    cpu = load("cifar100", root=cifar_root, verify=False, random_crop=True)
    gpu = load("cifar100", root=cifar_root, verify=False, random_crop=True, device="cuda")
    for (x, y), (gx, gy) in zip(cpu.train.batches(8, seeded(0)), gpu.train.batches(8, seeded(0))):
        assert gx.is_cuda and torch.allclose(x, gx.cpu()) and torch.equal(y, gy.cpu())
    cpu, gpu = load("natural", limit=16), load("natural", limit=16, device="cuda")
    for split in ("train", "test"):
        pairs = zip(getattr(cpu, split).batches(8, seeded(0)), getattr(gpu, split).batches(8, seeded(0)))
        for (x, y), (gx, gy) in pairs:
            assert torch.allclose(x, gx.cpu()) and torch.allclose(y, gy.cpu())

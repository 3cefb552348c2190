"""wconv.metrics against independent references: scikit-learn, scikit-image and the papers' formulas."""

import json
from typing import get_args

import numpy as np
import pytest
import skimage.data
import torch
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from wconv.metrics import (
    METRIC_MODES,
    TASK_METRICS,
    VALIDATION_METRICS,
    ClassificationMetrics,
    DenoisingMetrics,
    MetricName,
    metric_settings,
)


def natural_images(n: int, channels: int, size: int = 32) -> torch.Tensor:
    """(n, channels, size, size) crops of skimage's astronaut: real edges and texture, not white noise."""
    image = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float() / 255
    image = torch.nn.functional.avg_pool2d(image[None], 4)[0]  # 128×128, still detailed at 32 px
    crops = [image[:, 32 * (i // 4) : 32 * (i // 4) + size, 32 * (i % 4) : 32 * (i % 4) + size] for i in range(n)]
    batch = torch.stack(crops)
    return batch if channels == 3 else batch.mean(dim=1, keepdim=True)


def noisy(target: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (target + sigma * torch.randn(target.shape, generator=generator)).clamp(0, 1)


def as_numpy(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) tensor to skimage's (H, W, C) float64 array."""
    return image.permute(1, 2, 0).double().numpy()


# Classification (Sect. 4.1)


def test_accuracy_f1_and_confusion_matrix_match_sklearn_over_batches():
    generator = torch.Generator().manual_seed(0)
    num_classes = 7
    logits = torch.randn(300, num_classes, generator=generator)
    target = torch.randint(0, num_classes, (300,), generator=generator)
    metrics = ClassificationMetrics(num_classes)
    for batch in torch.arange(300).split(128):  # a ragged last batch, as a DataLoader gives
        metrics.update(logits[batch], target[batch])
    predicted = logits.argmax(dim=1).numpy()

    result = metrics.compute()

    assert result["accuracy"] == pytest.approx(accuracy_score(target, predicted), abs=1e-6)
    assert result["f1"] == pytest.approx(f1_score(target, predicted, average="macro"), abs=1e-6)
    expected = confusion_matrix(target, predicted, labels=range(num_classes))
    np.testing.assert_array_equal(metrics.confusion_matrix().numpy(), expected)


def test_hand_case_gives_paper_definitions_and_skips_absent_class():
    """True (0, 0, 1, 1, 2), predicted (0, 1, 1, 1, 0); class 3 never occurs.

    F1 = TP / (TP + (FP + FN) / 2): class 0 → 1/2, class 1 → 2/2.5, class 2 → 0; class 3 is left out
    of the macro mean (sklearn's default), else the mean would be 1.3 / 4 instead of 1.3 / 3.
    """
    metrics = ClassificationMetrics(num_classes=4)
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 0]), 4).float()

    metrics.update(logits, torch.tensor([0, 0, 1, 1, 2]))

    assert metrics.compute() == pytest.approx({"accuracy": 3 / 5, "f1": (0.5 + 0.8 + 0.0) / 3})
    expected = [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]  # row = true, column = predicted
    assert metrics.confusion_matrix().tolist() == expected


def test_classification_reset_forgets_earlier_batches():
    metrics = ClassificationMetrics(num_classes=3)
    metrics.update(torch.eye(3), torch.tensor([1, 2, 0]))  # all wrong
    metrics.reset()

    metrics.update(torch.eye(3), torch.tensor([0, 1, 2]))  # all right

    assert metrics.compute() == {"accuracy": 1.0, "f1": 1.0}
    assert metrics.confusion_matrix().trace() == 3


# Denoising (Sect. 4.2)


@pytest.mark.parametrize("channels", [1, 3])
def test_psnr_ssim_nrmse_match_skimage_as_per_image_means(channels):
    """SSIM within 1e-4: the same 11-tap Gaussian (σ = 1.5, skimage's truncate 3.5 gives 11 taps),
    constants and valid region, so only float32 (piq) against float64 (skimage) rounding remains."""
    target = natural_images(4, channels)
    output = noisy(target, 0.05)
    metrics = DenoisingMetrics(names=("psnr", "ssim", "nrmse", "uiq"))

    metrics.update(output, target)
    result = metrics.compute()

    pairs = [(as_numpy(o), as_numpy(t)) for o, t in zip(output, target)]
    psnr = np.mean([peak_signal_noise_ratio(t, o, data_range=1.0) for o, t in pairs])
    ssim = np.mean(
        [
            structural_similarity(
                t, o, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
            )
            for o, t in pairs
        ]
    )
    nrmse = np.mean([normalized_root_mse(t, o, normalization="min-max") for o, t in pairs])
    assert result["psnr"] == pytest.approx(psnr, abs=1e-3)
    assert result["ssim"] == pytest.approx(ssim, abs=1e-4)
    assert result["nrmse"] == pytest.approx(nrmse, rel=1e-5)


def test_ssim_of_large_images_matches_skimage_without_downsampling():
    """From 384 px up piq would average-pool by round(size / 256) first; skimage, and we, do not."""
    target = torch.from_numpy(skimage.data.camera()).float()[None, None, :384, :384] / 255
    output = noisy(target, 0.05)
    metrics = DenoisingMetrics(names=("psnr", "ssim", "nrmse", "uiq"))

    metrics.update(output, target)

    expected = structural_similarity(
        target[0, 0].double().numpy(),
        output[0, 0].double().numpy(),
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert metrics.compute()["ssim"] == pytest.approx(expected, abs=1e-4)


def test_psnr_of_constant_error_is_ten_log_one_over_error_squared():
    target = torch.tensor([[0.25, 0.75], [0.75, 0.25]]).repeat(2, 3, 16, 16)  # checkerboard, 32×32
    error = 0.1

    metrics = DenoisingMetrics(names=("psnr", "ssim", "nrmse", "uiq"))
    metrics.update(target + error, target)

    assert metrics.compute()["psnr"] == pytest.approx(10 * np.log10(1 / error**2), abs=1e-4)  # 20 dB


def test_uiq_equals_direct_wang_bovik_formula_on_one_window():
    """An 11×11 image holds exactly one 11×11 window, so UIQ is Wang & Bovik's Q of the whole image
    with Gaussian-weighted (σ = 1.5) means, variances and covariance:
    Q = 4 σ_xy μ_x μ_y / ((σ_x² + σ_y²)(μ_x² + μ_y²))."""
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(1, 1, 11, 11, generator=generator, dtype=torch.float64)
    output = (0.7 * target + 0.2 * torch.rand(1, 1, 11, 11, generator=generator, dtype=torch.float64)).clamp(0, 1)

    metrics = DenoisingMetrics(names=("psnr", "ssim", "nrmse", "uiq"))
    metrics.update(output, target)

    taps = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    weights = np.outer(taps, taps) / np.outer(taps, taps).sum()
    x, y = output[0, 0].numpy(), target[0, 0].numpy()
    mu_x, mu_y = (weights * x).sum(), (weights * y).sum()
    var_x, var_y = (weights * (x - mu_x) ** 2).sum(), (weights * (y - mu_y) ** 2).sum()
    cov = (weights * (x - mu_x) * (y - mu_y)).sum()
    q = 4 * cov * mu_x * mu_y / ((var_x + var_y) * (mu_x**2 + mu_y**2))
    assert metrics.compute()["uiq"] == pytest.approx(q, abs=1e-5)


@pytest.mark.parametrize("scale", [0.5, 0.75, 0.9])
def test_uiq_of_scaled_image_is_squared_luminance_contrast_term(scale):
    """For y = a·x the correlation is 1 and luminance and contrast terms are both 2a / (1 + a²) in
    every window (Wang & Bovik 2002), so Q = (2a / (1 + a²))² whatever the image."""
    target = natural_images(3, 3)

    metrics = DenoisingMetrics(names=("psnr", "ssim", "nrmse", "uiq"))
    metrics.update(scale * target, target)

    assert metrics.compute()["uiq"] == pytest.approx((2 * scale / (1 + scale**2)) ** 2, abs=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_identical_images_score_perfectly(channels):
    target = natural_images(2, channels)

    metrics = DenoisingMetrics()
    metrics.update(target.clone(), target)
    result = metrics.compute()

    assert result["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert result["fsim"] == pytest.approx(1.0, abs=1e-5)
    assert result["uiq"] == pytest.approx(1.0, abs=1e-6)
    assert result["nrmse"] == 0.0
    assert result["psnr"] == pytest.approx(80.0)  # piq's 1e-8 floor on the MSE


@pytest.mark.parametrize("channels", [1, 3])
def test_fsim_decreases_as_noise_grows(channels):
    target = natural_images(2, channels)
    scores = []
    for sigma in (0.02, 0.05, 0.1, 0.2):
        metrics = DenoisingMetrics()
        metrics.update(noisy(target, sigma), target)
        scores.append(metrics.compute()["fsim"])

    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert 0 < scores[-1] < scores[0] < 1


def test_fsim_of_rgb_images_sees_colour_that_keeps_luminance():
    """RGB is scored as FSIMc: a shift along (0.587, −0.299, 0) leaves Y = 0.299 R + 0.587 G + 0.114 B
    unchanged, so luminance-only FSIM would still be 1; the chromatic I/Q terms must lower it."""
    target = 0.5 * natural_images(2, 3) + 0.25  # stays inside [0, 1] after the shift
    output = target + 0.3 * torch.tensor([0.587, -0.299, 0.0]).view(1, 3, 1, 1)

    metrics = DenoisingMetrics()
    metrics.update(output, target)

    assert metrics.compute()["fsim"] < 0.99


def test_accumulating_batches_equals_one_update_on_their_concatenation():
    target = natural_images(6, 3)
    output = noisy(target, 0.1)
    whole, batched = DenoisingMetrics(), DenoisingMetrics()

    whole.update(output, target)
    for batch in torch.arange(6).split([1, 2, 3]):  # unequal sizes: a mean of batch means would differ
        batched.update(output[batch], target[batch])

    assert batched.compute() == pytest.approx(whole.compute(), rel=1e-6)


def test_output_is_clamped_to_unit_range_before_scoring():
    target = natural_images(2, 3)
    output = noisy(target, 0.1) + torch.tensor([-0.5, 0.0, 0.5]).view(1, 3, 1, 1)  # far outside [0, 1]
    raw, clamped = DenoisingMetrics(), DenoisingMetrics()

    raw.update(output, target)
    clamped.update(output.clamp(0, 1), target)

    assert raw.compute() == pytest.approx(clamped.compute())


def test_chosen_metrics_are_computed_alone_with_the_values_of_the_full_set():
    target = natural_images(2, 3)
    output = noisy(target, 0.1)
    full, cheap = DenoisingMetrics(), DenoisingMetrics(names=VALIDATION_METRICS["denoising"])

    full.update(output, target)
    cheap.update(output, target)

    assert list(cheap.compute()) == ["psnr", "ssim", "nrmse"]
    assert cheap.compute() == pytest.approx({k: full.compute()[k] for k in ("psnr", "ssim", "nrmse")})


def test_classification_metrics_can_leave_f1_out_and_keep_the_confusion_matrix():
    logits, target = torch.eye(4)[[0, 1, 2, 2]], torch.tensor([0, 1, 2, 3])
    metrics = ClassificationMetrics(4, names=["accuracy"])
    metrics.update(logits, target)
    assert metrics.compute() == {"accuracy": 0.75}
    assert metrics.confusion_matrix().trace() == 3


@pytest.mark.parametrize("task, names", [("denoising", ["psnr", "accuracy"]), ("classification", ["uiq"])])
def test_metrics_of_another_task_are_refused_by_name(task, names):
    make = (lambda: DenoisingMetrics(names=names)) if task == "denoising" else (
        lambda: ClassificationMetrics(3, names=names))
    with pytest.raises(ValueError, match=rf"not {task} metric.*choose from"):
        make()


def test_metric_names_cover_every_task_metric_and_validation_sets_are_subsets():
    assert set(get_args(MetricName)) == {m for names in TASK_METRICS.values() for m in names}
    for task, names in VALIDATION_METRICS.items():
        assert set(names) <= set(TASK_METRICS[task]) and set(names) <= set(METRIC_MODES)
    assert "uiq" not in VALIDATION_METRICS["denoising"] and "fsim" not in VALIDATION_METRICS["denoising"]


def test_images_smaller_than_the_ssim_window_are_refused():
    patches = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="smaller than the 11×11"):
        DenoisingMetrics().update(patches, patches)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_give_the_cpu_values():
    target = natural_images(2, 3)
    output = noisy(target, 0.1)
    cpu, cuda = DenoisingMetrics(), DenoisingMetrics(device="cuda")
    cpu.update(output, target)
    cuda.update(output.cuda(), target.cuda())
    classes = ClassificationMetrics(5, device="cuda")
    classes.update(torch.eye(5).cuda(), torch.arange(5).cuda())

    assert cuda.compute() == pytest.approx(cpu.compute(), rel=1e-4)
    assert classes.compute() == {"accuracy": 1.0, "f1": 1.0}
    assert classes.confusion_matrix().device.type == "cuda"


# Settings for the results database


def test_settings_are_json_and_describe_every_computed_metric():
    classification, denoising = ClassificationMetrics(3), DenoisingMetrics()
    classification.update(torch.eye(3), torch.arange(3))
    denoising.update(natural_images(1, 3), natural_images(1, 3))

    for task, metrics in (("classification", classification), ("denoising", denoising)):
        settings = json.loads(json.dumps(metric_settings(task)))
        computed = set(metrics.compute())
        assert computed <= set(settings), task
        assert computed <= set(METRIC_MODES), task
        assert "torchmetrics" in settings["versions"], task
    with pytest.raises(ValueError, match="unknown task"):
        metric_settings("segmentation")

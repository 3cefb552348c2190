"""The paper's evaluation metrics (Sect. 4.1, 4.2), taken from maintained libraries.

Every metric is a call into torchmetrics or piq with fixed arguments; ``metric_settings`` writes those
arguments and the library versions down so a stored result says exactly how it was measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version
from typing import Literal, Optional

import torch
from torch import Tensor

# piq and torchmetrics are imported where they are called: ``wconv.train``'s config reads the metric names
# below, and validating a sweep should not pay their import (seconds).

MetricName = Literal["accuracy", "f1", "psnr", "ssim", "fsim", "nrmse", "uiq"]
"""Every metric of the paper, besides the loss."""
TASK_METRICS: dict[str, tuple[MetricName, ...]] = {
    "classification": ("accuracy", "f1"),
    "denoising": ("psnr", "ssim", "fsim", "nrmse", "uiq"),
}
"""What a task's final test scores (classification also the confusion matrix)."""
VALIDATION_METRICS: dict[str, tuple[MetricName, ...]] = {
    "classification": ("accuracy", "f1"),
    "denoising": ("psnr", "ssim", "nrmse"),
}
"""What per-epoch validation scores by default: the cheap ones. UIQ (float64, 11×11 windows) took about
95 % of a denoising validation pass on CPU, FSIM costs more than all others together."""

# Whether a larger value of a metric is better; what a scheduler or a "best trial" query needs.
METRIC_MODES = {
    "accuracy": "max",
    "f1": "max",
    "loss": "min",
    "psnr": "max",
    "ssim": "max",
    "fsim": "max",
    "nrmse": "min",
    "uiq": "max",
}

DATA_RANGE = 1.0
# SSIM and UIQ slide an 11×11 Gaussian window (σ = 1.5, Wang et al. 2004) without padding, so smaller
# images have no window to score. We refuse them rather than shrink the window: a shrunken window
# gives numbers that are not comparable with the paper's.
MIN_IMAGE_SIZE = 11

# The keyword arguments of each call, kept here once so that the computation and `metric_settings`
# cannot drift apart.
_PSNR = {"data_range": DATA_RANGE, "reduction": "none"}
# downsample=False: no average pooling of large images, as skimage.metrics.structural_similarity.
_SSIM = {
    "data_range": DATA_RANGE,
    "kernel_size": 11,
    "kernel_sigma": 1.5,
    "downsample": False,
    "reduction": "none",
}
_FSIM = {"data_range": DATA_RANGE, "reduction": "none"}
# "range" (RMSE / (max − min) of the target) is skimage's normalization='min-max'. Table 5 fits it:
# RMSE from its PSNR over its NRMSE is 0.88–0.98 on every row, the range of a natural image, while
# the Euclidean or mean normalization would give about 0.5. (torchmetrics' "l2" is not skimage's
# "euclidean": it divides the RMSE, not the error norm, by ‖target‖.)
_NRMSE = {"normalization": "range"}
_UIQ = {"kernel_size": (11, 11), "sigma": (1.5, 1.5), "reduction": "none"}


def _call(name: str, kwargs: dict, extra: str = "") -> str:
    args = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
    return f"{name}({args}{extra})"


class ClassificationMetrics:
    """Accuracy, macro F1 and confusion matrix of Sect. 4.1, accumulated over batches; ``names`` picks
    accuracy and/or F1 (default both), the confusion matrix is always kept.

    Accuracy is top-1 (micro). Macro F1 averages the per-class F1 over the classes that occur in the
    targets or the predictions, as sklearn's ``f1_score(average="macro")`` does.
    """

    def __init__(self, num_classes: int, device="cpu", names: Optional[Sequence[str]] = None):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

        self.num_classes = num_classes
        self.device = torch.device(device)
        self.names = _chosen("classification", names)
        chosen = {"accuracy": MulticlassAccuracy(num_classes, average="micro"),
                  "f1": MulticlassF1Score(num_classes, average="macro")}
        self._metrics = MetricCollection(
            {**{name: chosen[name] for name in self.names},
             "confusion_matrix": MulticlassConfusionMatrix(num_classes)}
        ).to(self.device)
        self.reset()

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch: ``logits`` (N, num_classes), ``target`` (N,) class indices."""
        # Predictions are kept on the device and scored once: torchmetrics' per-batch bincount (F1, confusion
        # matrix) waits for the GPU on every batch. argmax is what torchmetrics takes from logits.
        self._predictions.append(logits.detach().argmax(dim=1).to(self.device))
        self._targets.append(target.detach().to(self.device))
        self._scored = False

    def compute(self) -> dict[str, float]:
        """``{"accuracy", "f1"}`` (those chosen) over everything seen since the last reset."""
        self._score()
        return {name: self._metrics[name].compute().item() for name in self.names}

    def confusion_matrix(self) -> Tensor:
        """(num_classes, num_classes) counts; entry (i, j) counts class i predicted as j (Sect. 4.1)."""
        self._score()
        return self._metrics["confusion_matrix"].compute()

    def reset(self) -> None:
        self._metrics.reset()
        self._predictions: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._scored = False

    def _score(self) -> None:
        """Feed everything seen to torchmetrics, once per batch of updates."""
        if not self._targets:
            raise RuntimeError("ClassificationMetrics: compute() before any update()")
        if not self._scored:
            self._metrics.reset()
            self._metrics.update(torch.cat(self._predictions), torch.cat(self._targets))
            self._scored = True


class DenoisingMetrics:
    """PSNR, SSIM, FSIM, NRMSE and UIQ of Sect. 4.2: each computed per image, then averaged over images.

    Images are float tensors in [0, 1] of shape (N, C, H, W), C = 1 or 3, H and W at least
    ``MIN_IMAGE_SIZE``. FSIM is the chromatic FSIMc for RGB and the plain FSIM for grayscale, as
    Zhang et al. 2011 define them. ``names`` picks which to compute (default all): FSIM costs more than all
    the others together and UIQ more than PSNR, SSIM and NRMSE together, so per-epoch validation leaves
    them out (``VALIDATION_METRICS``).
    Identical images score PSNR = 80 dB (piq adds 1e-8 to the MSE); a constant target has no
    range, so its NRMSE is infinite.
    """

    def __init__(self, device="cpu", names: Optional[Sequence[str]] = None):
        self.device = torch.device(device)
        self.names = _chosen("denoising", names)
        self.reset()

    def update(self, output: Tensor, target: Tensor) -> None:
        """Score a batch; ``output`` is clamped to [0, 1] (NaN as 0), ``target`` must already lie there."""
        if output.shape != target.shape or output.dim() != 4 or output.shape[1] not in (1, 3):
            raise ValueError(
                f"DenoisingMetrics: expected output and target of one shape (N, 1 or 3, H, W), "
                f"got {tuple(output.shape)} and {tuple(target.shape)}"
            )
        if min(output.shape[-2:]) < MIN_IMAGE_SIZE:
            raise ValueError(
                f"DenoisingMetrics: images of {tuple(output.shape[-2:])} pixels are smaller than the "
                f"{MIN_IMAGE_SIZE}×{MIN_IMAGE_SIZE} SSIM/UIQ window"
            )
        # fp32 whatever the model ran in: piq's FFTs and the variances need it. A diverged model's NaN/inf
        # pixels are clamped like any other (piq refuses NaN); its loss says it failed.
        output = output.detach().to(self.device, torch.float32).nan_to_num(0.0, 1.0, 0.0).clamp(0.0, 1.0)
        target = target.detach().to(self.device, torch.float32)
        scores = [_DENOISING[name](output, target).sum() for name in self.names]
        self._sums += torch.stack(scores).double()
        self._count += output.shape[0]

    def compute(self) -> dict[str, float]:
        """Mean over all images seen since the last reset, one float per metric."""
        if not self._count:
            raise RuntimeError("DenoisingMetrics: compute() before any update()")
        return dict(zip(self.names, (self._sums / self._count).tolist()))

    def reset(self) -> None:
        # Sums stay on the device, so update() never waits for the GPU; compute() syncs once.
        self._sums = torch.zeros(len(self.names), dtype=torch.float64, device=self.device)
        self._count = 0


def _chosen(task: str, names: Optional[Sequence[str]]) -> tuple[str, ...]:
    """``names`` in the task's canonical order (all of them if None); unknown names are refused."""
    if names is None:
        return TASK_METRICS[task]
    unknown = sorted(set(names) - set(TASK_METRICS[task]))
    if unknown:
        raise ValueError(f"{', '.join(map(repr, unknown))}: not {task} metric(s); "
                         f"choose from {', '.join(TASK_METRICS[task])}")
    return tuple(name for name in TASK_METRICS[task] if name in names)


def _psnr(output: Tensor, target: Tensor) -> Tensor:
    import piq

    return piq.psnr(output, target, **_PSNR)


def _ssim(output: Tensor, target: Tensor) -> Tensor:
    import piq

    return piq.ssim(output, target, **_SSIM)


def _fsim(output: Tensor, target: Tensor) -> Tensor:
    import piq

    return piq.fsim(output, target, **_FSIM, chromatic=output.shape[1] == 3)


def _uiq(output: Tensor, target: Tensor) -> Tensor:
    """Per-image UIQ, in float64: in float32 the variances of smooth windows (E[x²] − μ² and
    torchmetrics' 1e-7 guard against 0/0) cost identical images up to 1e-3 of their score of 1.
    A window flat in both images scores 0 (the guard), where Wang & Bovik leave Q undefined."""
    from torchmetrics.functional.image import universal_image_quality_index

    return universal_image_quality_index(output.double(), target.double(), **_UIQ).mean(dim=(1, 2, 3))


def _nrmse(output: Tensor, target: Tensor) -> Tensor:
    """Per-image NRMSE: torchmetrics treats each image as one of its ``num_outputs`` columns."""
    from torchmetrics.functional.regression import normalized_root_mean_squared_error

    n = output.shape[0]
    return normalized_root_mean_squared_error(
        output.reshape(n, -1).T, target.reshape(n, -1).T, **_NRMSE, num_outputs=n
    ).reshape(n)


_DENOISING = {"psnr": _psnr, "ssim": _ssim, "fsim": _fsim, "nrmse": _nrmse, "uiq": _uiq}
"""Per-image score of each denoising metric, (N,) from (N, C, H, W)."""


def metric_settings(task: str) -> dict:
    """How each metric of ``task`` ("classification" or "denoising") is computed, JSON-serialisable."""
    versions = {package: version(package) for package in ("torch", "torchmetrics")}
    if task == "classification":
        return {
            "accuracy": "torchmetrics MulticlassAccuracy(num_classes, average='micro')",
            "f1": "torchmetrics MulticlassF1Score(num_classes, average='macro'); classes absent from "
            "targets and predictions are left out of the mean",
            "confusion_matrix": "torchmetrics MulticlassConfusionMatrix(num_classes, normalize=None); "
            "rows = true class, columns = predicted class",
            "aggregation": "accumulated over every sample of the split",
            "input": "logits (N, num_classes), argmax taken as the prediction",
            "versions": versions,
        }
    if task == "denoising":
        return {
            "psnr": _call("piq.psnr", _PSNR),
            "ssim": _call("piq.ssim", _SSIM),
            "fsim": _call("piq.fsim", _FSIM, ", chromatic=(C == 3)"),
            "nrmse": _call("torchmetrics.functional.normalized_root_mean_squared_error", _NRMSE)
            + " with num_outputs = N, one image per output: RMSE / (max - min) of the target image, "
            "= skimage normalized_root_mse(normalization='min-max')",
            "uiq": _call("torchmetrics.functional.image.universal_image_quality_index", _UIQ)
            + " in float64, mean of the map; a window flat in both images scores 0",
            "aggregation": "per-image value (mean over channels and pixels), then mean over images",
            "input": f"float in [0, {DATA_RANGE}], (N, C, H, W), C in (1, 3), H and W >= {MIN_IMAGE_SIZE}; "
            "output clamped to [0, 1]",
            "versions": {**versions, "piq": version("piq")},
        }
    raise ValueError(f"metric_settings: unknown task {task!r}; expected 'classification' or 'denoising'")

"""One trial: train one model with one α and one seed, evaluate every epoch, checkpoint, resume.

What a trial reports is defined here once (``EpochReport``, ``FinalReport`` and the key constants);
launchers, stores and reports read it by these names.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import random
import socket
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Literal, NotRequired, Optional, TypedDict, get_args

import numpy as np
import torch
import torch.nn as nn

from wconv.checkpoint import load_checkpoint
from wconv.conv import convert, param_groups, scale_init
from wconv.metrics import TASK_METRICS, VALIDATION_METRICS, MetricName
from wconv.status import COMPLETED, FAILED, STOPPED


# ---------------------------------------------------------------- the result protocol

EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
LR = "lr"
HOST = "host"
DEVICE = "device"
BASELINE = "baseline"
WALL_TIME_S = "wall_time_s"
REPLAY = "replay"
FINISHED = "finished"
STATUS = "trial_status"
REASON = "reason"
FINAL = "final"
METRIC_SETTINGS = "metric_settings"
BEST_EPOCH = "best_epoch"
CONFUSION_MATRIX = "test_confusion_matrix"
VAL = "val"
TEST = "test"
LOSS = "loss"
VAL_LOSS = "val_loss"
"""What early stopping and the best epoch go by."""

MEMBER = "member"
"""Fused groups (``wconv.fused``): the member's index in its group, in each of its reports."""
ALPHA = "alpha"
"""Fused groups: the member's α (a list; None for the baseline), in each of its reports."""

TrialStatus = Literal["completed", "failed", "stopped"]


def metric_key(split: str, metric: str) -> str:
    """The report key of ``metric`` on ``split``: ``metric_key(VAL, "psnr") == "val_psnr"``."""
    return f"{split}_{metric}"


class EpochReport(TypedDict):
    """What a trial reports after every epoch.

    Besides these keys it carries one float ``val_<metric>`` per validated metric (``val_loss`` and the
    task's per-epoch metrics), except on an epoch that failed before validation (non-finite training loss).
    """

    epoch: int
    train_loss: float
    """Mean training loss over the epoch's examples."""
    lr: float
    """Learning rate after the epoch's scheduler step (the next epoch's)."""
    host: str
    device: str
    """``"cpu"`` or the CUDA device's name."""
    baseline: bool
    """The α = 1 reference of its cell."""
    wall_time_s: float
    """Seconds spent inside the trial so far, over all restarts."""
    replay: NotRequired[list[dict[str, Any]]]
    """Only in the first report after a restart: the epoch reports before it, which may never have
    reached the caller (killed between checkpoint and report). Recording them again must be idempotent."""


class FinalMetrics(TypedDict, total=False):
    """``final`` of a completed trial: the lowest-validation-loss epoch's ``val_*`` metrics and the
    ``test_*`` metrics of that epoch's model (every metric of the task, the loss included); empty when
    the trial failed. A stopped member of a fused group has its best epoch's ``val_*`` and no ``test_*``."""

    best_epoch: int
    test_confusion_matrix: list[list[int]]
    """Classification only: entry (i, j) counts test examples of class i predicted as j (Fig. 1)."""


class FinalReport(EpochReport):
    """The last report of a trial: its last epoch's ``EpochReport`` plus the outcome."""

    finished: bool
    """Always True: no report after this one."""
    trial_status: TrialStatus
    reason: str
    """One line: why the trial ended (budget, early stopping, non-finite loss)."""
    final: FinalMetrics
    metric_settings: dict[str, Any]
    """How every metric was computed (``wconv.metrics.metric_settings``)."""


def final_value(report: dict, metric: str) -> Optional[float]:
    """The value a search should be told for a finished trial: ``final[metric]`` (e.g. ``"val_psnr"``, the
    best epoch's — not the last epoch's ``report[metric]``); None for a failed or unfinished trial."""
    if not report.get(FINISHED) or report.get(STATUS) != COMPLETED:
        return None
    return report[FINAL].get(metric)


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class TrainingConfig:
    """The training protocol. Defaults follow the paper (Sect. 4.1 classification, Sect. 4.2 denoising);
    ``for_task`` fills the task-dependent ones."""

    epochs: int = 200
    """Epoch budget of one trial."""
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    """SGD momentum."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    weight_decay: float = 5e-5
    """Sect. 4.1 says "a decay of 0.5×10⁻⁴"."""
    label_smoothing: float = 0.1
    """Cross-entropy label smoothing (classification)."""
    noise_sigma: float = 0.01
    """Std of the additive Gaussian noise, μ = 0 (denoising)."""
    hflip: bool = True
    """Random horizontal flip of training images."""
    random_crop: bool = False
    """Random crop with 4-pixel padding (CIFAR), off in the paper."""
    patience: Optional[int] = 20
    """Early stopping: epochs without a lower validation loss before the trial ends; None disables."""
    amp: bool = True
    """bf16 autocast when training on CUDA (ignored on CPU)."""
    channels_last: bool = True
    """channels_last memory format on CUDA."""
    max_steps_per_epoch: Optional[int] = None
    """Cap on optimiser steps per epoch (smoke runs and tests)."""
    learnable_alpha: bool = False
    """Train α with the weights, starting from the trial's α (log-parametrised, no weight decay); the
    baseline (α = None) stays a standard convolution."""
    compile: bool = False
    """``torch.compile`` the model's forward (training and evaluation); a fused group compiles its vmapped
    forward and losses."""
    compile_backend: Literal["inductor", "aot_eager"] = "inductor"
    """``torch.compile``'s backend: inductor generates kernels (GPUs); aot_eager captures the same graphs and
    autograd without generating code (CPU tests: inductor compiles for minutes on a small CPU)."""
    val_metrics: Optional[tuple[MetricName, ...]] = None
    """Metrics that per-epoch validation scores besides the loss; None: the task's cheap set,
    ``wconv.metrics.VALIDATION_METRICS`` (accuracy, f1 | psnr, ssim, nrmse). The final test always scores
    every metric of the task. A search that reads another metric every epoch (ASHA, the searcher) must
    add it: ``config.validating(task, metric)``."""

    def __post_init__(self) -> None:
        if self.val_metrics is not None:
            # JSON and YAML give lists; a frozen config stays hashable with a tuple.
            object.__setattr__(self, "val_metrics", tuple(self.val_metrics))
            unknown = [m for m in self.val_metrics if m not in get_args(MetricName)]
            if unknown:
                raise ValueError(f"training.val_metrics: unknown metric(s) {', '.join(map(repr, unknown))}; "
                                 f"choose from {', '.join(get_args(MetricName))}")

    @classmethod
    def for_task(cls, task: str, **overrides) -> "TrainingConfig":
        """Defaults of the paper's protocol for ``task``, then ``overrides``."""
        if task == "classification":
            base = cls()
        elif task == "denoising":
            # Sect. 4.2 prints Adam with lr 0.1, two orders of magnitude above Adam's customary range; the
            # default is 1e-3 (set lr: 0.1 in a sweep to reproduce the text literally).
            base = cls(epochs=100, optimizer="adam", lr=1e-3, weight_decay=0.0, hflip=True)
        else:
            raise ValueError(f"task must be 'classification' or 'denoising', got {task!r}")
        return replace(base, **overrides)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def validating(self, task: str, *metrics: str) -> "TrainingConfig":
        """This config with per-epoch validation also scoring ``metrics`` (``"val_uiq"`` or ``"uiq"``; the
        loss is always scored): what a launcher calls with the search metric it reads every epoch."""
        wanted = {m.removeprefix(VAL + "_") for m in metrics} - {LOSS}
        chosen = set(validation_metrics(self, task)) | wanted
        return replace(self, val_metrics=tuple(m for m in get_args(MetricName) if m in chosen))


def validation_metrics(training: TrainingConfig, task: str) -> tuple[MetricName, ...]:
    """The metrics per-epoch validation of a ``task`` trial scores besides the loss; ValueError naming
    ``training.val_metrics`` if it holds another task's metric."""
    if task not in TASK_METRICS:
        raise ValueError(f"task must be one of {', '.join(TASK_METRICS)}, got {task!r}")
    if training.val_metrics is None:
        return VALIDATION_METRICS[task]
    foreign = [m for m in training.val_metrics if m not in TASK_METRICS[task]]
    if foreign:
        raise ValueError(f"training.val_metrics: {', '.join(map(repr, foreign))} not {task} metric(s); "
                         f"choose from {', '.join(TASK_METRICS[task])}")
    return tuple(m for m in TASK_METRICS[task] if m in training.val_metrics)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs; a trial is re-runnable from this and its checkpoint alone."""

    model: str
    dataset: str
    kernel_size: int = 3
    alpha: Optional[tuple[float, ...]] = None
    """Free coefficients of the density; None trains the standard convolution."""
    seed: int = 0
    training: TrainingConfig = field(default_factory=TrainingConfig)
    model_options: dict = field(default_factory=dict)
    dataset_root: Optional[str] = None
    dataset_options: dict = field(default_factory=dict)
    baseline: bool = False
    """The α = 1 reference of a cell: runs its full epoch budget, never stopped early."""
    init_scale: Optional[tuple[float, ...]] = None
    """An α whose density *scale* (√mean(Φ²), ``wconv.scale_init``) multiplies the initial weights of the convs
    it would weight: with ``alpha=None``, a confirmation's control arm (the scale at initialisation without
    the density's shape)."""

    @classmethod
    def from_dict(cls, d: dict) -> "TrialConfig":
        """Inverse of ``dataclasses.asdict`` (what a checkpoint stores)."""
        training = dict(d["training"], betas=tuple(d["training"]["betas"]))
        alpha = None if d.get("alpha") is None else tuple(d["alpha"])
        scale = None if d.get("init_scale") is None else tuple(d["init_scale"])
        return cls(**dict(d, training=TrainingConfig(**training), alpha=alpha, init_scale=scale))


CHECKPOINT = "trial.pt"
Report = Callable[[dict, Path], None]
"""``report(metrics, checkpoint_dir)``: called after every epoch's checkpoint with an ``EpochReport``,
the last time with a ``FinalReport``."""


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_atomic(obj: dict, path: Path) -> None:
    """Write then rename, so a kill mid-write never leaves a truncated checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Task:
    """Loss and metrics of one task; the training loop itself is task-agnostic."""

    def __init__(self, task: str, training: TrainingConfig, num_classes: Optional[int], device: torch.device):
        self.name = task
        self.device = device
        self.num_classes = num_classes
        self.val_metrics = validation_metrics(training, task)
        if task == "classification":
            self.loss = nn.CrossEntropyLoss(label_smoothing=training.label_smoothing)
        else:
            self.loss = nn.MSELoss()

    @functools.cached_property
    def settings(self) -> dict:
        """``metric_settings`` of the task, asked for at the end only (it looks up installed versions)."""
        from wconv import metrics

        return metrics.metric_settings(self.name)

    def loss_of(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss in at least float32 (bf16 autocast outputs are promoted; float64 models stay float64)."""
        return self.loss(output.to(torch.promote_types(output.dtype, torch.float32)), target)

    def _scores(self, names: tuple[str, ...]):
        from wconv import metrics

        if self.name == "classification":
            return metrics.ClassificationMetrics(self.num_classes, device=self.device, names=names)
        return metrics.DenoisingMetrics(device=self.device, names=names)

    @torch.no_grad()
    def evaluate(self, forward: Callable[[torch.Tensor], torch.Tensor], members: int, split, batch_size: int,
                 autocast, dtype: torch.dtype, prefix: str, final: bool = False) -> list[dict]:
        """Loss and metrics on ``split`` of each of ``members`` models, keyed ``<prefix>_<metric>``.

        ``forward(x)`` gives the members' outputs stacked, (members, N, ...), in eval mode; inputs are cast to
        the model's ``dtype``. Validation
        scores ``val_metrics``; ``final`` scores every metric of the task (classification: and the
        confusion matrix)."""
        scores = [self._scores(TASK_METRICS[self.name] if final else self.val_metrics) for _ in range(members)]
        # Summed on the device in float64 (exactly what Python floats did): no host sync per batch.
        totals, n = torch.zeros(members, dtype=torch.float64, device=self.device), 0
        for x, y in split.batches(batch_size):
            x, y = as_model_dtype(x, y, dtype)
            with autocast():
                out = forward(x)
            for k in range(members):
                totals[k] += self.loss_of(out[k], y).double() * len(x)
                scores[k].update(out[k], y)
            n += len(x)
        results = []
        for total, member in zip(totals.tolist(), scores):
            result = {metric_key(prefix, LOSS): total / max(n, 1)}
            result.update({metric_key(prefix, k): v for k, v in member.compute().items()})
            if final and self.name == "classification":
                result[metric_key(prefix, "confusion_matrix")] = member.confusion_matrix().tolist()
            results.append(result)
        return results


def as_model_dtype(x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch in the model's floating dtype (no-op for the float32 models of a normal run; float64 models
    in equivalence tests)."""
    return x.to(dtype), (y.to(dtype) if y.is_floating_point() else y)


def _autocast(device: torch.device, training: TrainingConfig):
    """bf16 autocast on CUDA when ``training.amp``; a no-op context elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and training.amp)


def _about(device: torch.device, baseline: bool) -> dict:
    """Where a trial runs: the host, device and baseline keys of its reports."""
    return {HOST: socket.gethostname(),
            DEVICE: torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            BASELINE: baseline}


def _compiled(fn: Callable, training: TrainingConfig) -> Callable:
    """``fn`` compiled as ``training`` asks (``compile``, ``compile_backend``), else ``fn`` itself."""
    return torch.compile(fn, backend=training.compile_backend) if training.compile else fn


def _channels_last(model: nn.Module) -> None:
    """channels_last for the 4-D tensors only: ``model.to(memory_format=...)`` refuses a model with a
    Conv3d (gac_snn's temporal gate)."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.dim() == 4:
            t.data = t.data.contiguous(memory_format=torch.channels_last)


@dataclass
class TrialSetup:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    order: torch.Generator
    """Draws data order and augmentation; on the CPU whatever the device, so runs match across devices."""
    data: object


def load_data(config: TrialConfig, device: torch.device | str = "cpu"):
    """The trial's dataset (``wconv.data.TaskData``) on ``device``."""
    from wconv import data

    tc = config.training
    return data.load(config.dataset, root=config.dataset_root, device=device, noise_sigma=tc.noise_sigma,
                     hflip=tc.hflip, random_crop=tc.random_crop, **config.dataset_options)


def build_model(config: TrialConfig, td, device: torch.device | str = "cpu") -> nn.Module:
    """The trial's model, initialised from its seed, then weighted with its α; the global RNGs are left
    seeded as training expects them (dropout draws from them).

    The initial weights depend on the seed only, never on α: the model is built and initialised with
    plain convs, then weighted (``wconv.models.build``, ``wconv.convert``).
    """
    from wconv import models

    tc, device = config.training, torch.device(device)
    learnable = tc.learnable_alpha and config.alpha is not None
    _seed_everything(config.seed)
    model = models.build(config.model, kernel_size=config.kernel_size, alpha=None if learnable else config.alpha,
                         in_channels=td.in_channels, num_classes=td.num_classes, **config.model_options)
    if learnable:
        convert(model, {config.kernel_size: config.alpha}, learnable=True)
    if config.init_scale is not None:
        scale_init(model, {config.kernel_size: config.init_scale})
    model.to(device)
    if device.type == "cuda" and tc.channels_last:
        _channels_last(model)
    return model


def make_optimizer(groups: list[dict], training: TrainingConfig) -> tuple[torch.optim.Optimizer,
                                                                           torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser over ``groups`` (``wconv.param_groups``) and its cosine LR schedule (Sect. 4.1, 4.2)."""
    tc = training
    if tc.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum)
    else:
        optimizer = torch.optim.Adam(groups, lr=tc.lr, betas=tuple(tc.betas))
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tc.epochs)


def prepare_trial(config: TrialConfig, device: torch.device | str = "cpu", data=None) -> TrialSetup:
    """Data, model, optimiser, LR schedule and data-order generator of a trial, before any training.

    The initial weights and the data order depend on the seed only, never on α (``build_model``).
    ``data``: a ``TaskData`` already on ``device`` instead of ``config.dataset`` (benchmarks on generated tensors).
    """
    device = torch.device(device)
    td = load_data(config, device) if data is None else data
    model = build_model(config, td, device)
    optimizer, scheduler = make_optimizer(param_groups(model, config.training.weight_decay), config.training)
    order = torch.Generator().manual_seed(config.seed)
    return TrialSetup(model, optimizer, scheduler, order, td)


@dataclass
class _Progress:
    """Where a trial stands between epochs; checkpointed as a plain dict (``vars``)."""

    epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    best_model: Optional[dict] = None
    """State dict of the lowest-validation-loss epoch's model."""
    best_metrics: Optional[dict] = None
    """That epoch's report."""
    bad_epochs: int = 0
    """Epochs since the validation loss last went down (early stopping)."""
    history: list = field(default_factory=list)
    """Every epoch's metrics so far (what ``replay`` resends after a restart)."""
    elapsed: float = 0.0
    result: Optional[dict] = None
    """The ``FinalReport``, once finished."""

    def record(self, metrics: dict, model_state: Callable[[], dict]) -> None:
        """Count the epoch ``metrics`` towards the best epoch and early stopping (``val_loss`` finite)."""
        val_loss = metrics[VAL_LOSS]
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_epoch, self.bad_epochs = val_loss, metrics[EPOCH], 0
            self.best_model, self.best_metrics = copy.deepcopy(model_state()), dict(metrics)
        else:
            self.bad_epochs += 1


def _outcome(progress: _Progress, metrics: dict, training: TrainingConfig,
             baseline: bool) -> tuple[Optional[TrialStatus], Optional[str]]:
    """(status, reason) if the trial ends after this epoch, else (None, None).

    ``metrics`` is the epoch's report so far: without ``val_loss`` when training already failed."""
    epoch = metrics[EPOCH]
    if not math.isfinite(metrics[TRAIN_LOSS]):
        return FAILED, f"non-finite training loss ({metrics[TRAIN_LOSS]}) at epoch {epoch}"
    if not math.isfinite(metrics[VAL_LOSS]):
        return FAILED, f"non-finite validation loss at epoch {epoch}"
    if epoch >= training.epochs:
        return COMPLETED, f"ran the full budget of {training.epochs} epochs"
    if not baseline and training.patience is not None and progress.bad_epochs >= training.patience:
        return COMPLETED, f"early stopping: no lower validation loss for {training.patience} epochs"
    return None, None


class _Trial:
    """The steps of ``run_trial``: one object so each step reads the trial's pieces by name."""

    def __init__(self, config: TrialConfig, checkpoint_dir: Path, data=None):
        self.config, self.training = config, config.training
        self.device = _device()
        self.checkpoint = checkpoint_dir / CHECKPOINT
        self.setup = prepare_trial(config, self.device, data)
        self.task = _Task(self.setup.data.task, self.training, self.setup.data.num_classes, self.device)
        self.dtype = next(self.setup.model.parameters()).dtype
        self.about = _about(self.device, config.baseline)
        self.progress = _Progress()
        self.forward = _compiled(self.setup.model, self.training)

    def autocast(self):
        return _autocast(self.device, self.training)

    def restore(self) -> None:
        """Continue from the checkpoint, if there is one."""
        if not self.checkpoint.exists():
            return
        s = self.setup
        saved = load_checkpoint(self.checkpoint, map_location=self.device)
        s.model.load_state_dict(saved["model"])
        s.optimizer.load_state_dict(saved["optimizer"])
        s.scheduler.load_state_dict(saved["scheduler"])
        s.order.set_state(saved["order"])
        _set_rng_state(saved["rng"])
        self.progress = _Progress(**saved["state"])

    def save(self) -> None:
        s = self.setup
        _save_atomic({"model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
                      "scheduler": s.scheduler.state_dict(), "order": s.order.get_state(), "rng": _rng_state(),
                      "state": vars(self.progress), "config": asdict(self.config)}, self.checkpoint)

    def train_epoch(self) -> float:
        """One epoch of optimiser steps and the LR scheduler's step; the mean training loss."""
        s, tc = self.setup, self.training
        s.model.train()
        total, n = torch.zeros((), device=self.device), 0
        for step, (x, y) in enumerate(s.data.train.batches(tc.batch_size, s.order)):
            if tc.max_steps_per_epoch is not None and step >= tc.max_steps_per_epoch:
                break
            x, y = as_model_dtype(x, y, self.dtype)
            with self.autocast():
                loss = self.task.loss_of(self.forward(x), y)
            s.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            s.optimizer.step()
            total += loss.detach() * len(x)  # summed on the device: no host sync per step
            n += len(x)
        s.scheduler.step()
        return total.item() / max(n, 1)

    def evaluate(self, split, prefix: str, final: bool = False) -> dict:
        self.setup.model.eval()
        return self.task.evaluate(lambda x: self.forward(x)[None], 1, split, self.training.batch_size,
                                  self.autocast, self.dtype, prefix, final)[0]

    def validate(self) -> dict:
        return self.evaluate(self.setup.data.val, VAL)

    def finish(self, report: dict, status: TrialStatus, reason: str) -> FinalReport:
        """The last report: ``report`` plus the outcome and, if completed, the best epoch's model on test."""
        p, final = self.progress, {}
        if status == COMPLETED:
            self.setup.model.load_state_dict(p.best_model)
            final = {k: v for k, v in p.best_metrics.items() if k.startswith(VAL + "_")}
            final.update(self.evaluate(self.setup.data.test, TEST, final=True))
            final[BEST_EPOCH] = p.best_epoch
        return FinalReport(**report, finished=True, trial_status=status, reason=reason, final=final,
                           metric_settings=self.task.settings)


def run_trial(config: TrialConfig, report: Report, checkpoint_dir: Path | str) -> FinalReport:
    """Train one model with one α and one seed; report every epoch; return the final report.

    Every epoch ends with a checkpoint (model, optimiser, LR scheduler, RNG and data-order
    states, early-stopping state) in ``checkpoint_dir``; if one is there already, the trial
    continues exactly where it stopped. The same seed gives the same initial weights and data
    order whatever α is (the paper compares α against α = 1 from one initialisation).
    Each epoch's report is an ``EpochReport``; the last one a ``FinalReport`` (``finished``, ``trial_status``,
    ``reason``, ``final``). After a restart, the first report also carries ``replay``.
    """
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    trial = _Trial(config, checkpoint_dir)
    trial.restore()
    progress = trial.progress
    replay = [dict(m) for m in progress.history]
    if progress.result is not None:  # finished before the restart: hand its result to the caller again
        report(dict(progress.result, replay=replay), checkpoint_dir)
        return progress.result
    elapsed0 = progress.elapsed
    while True:
        epoch = progress.epoch + 1
        train_loss = trial.train_epoch()
        metrics = {EPOCH: epoch, TRAIN_LOSS: train_loss, LR: trial.setup.scheduler.get_last_lr()[0]}
        if math.isfinite(train_loss):
            metrics.update(trial.validate())
            if math.isfinite(metrics[VAL_LOSS]):
                progress.record(metrics, trial.setup.model.state_dict)
        status, reason = _outcome(progress, metrics, trial.training, config.baseline)
        progress.epoch = epoch
        progress.history.append(metrics)
        progress.elapsed = elapsed0 + time.time() - started
        result = dict(metrics, **trial.about, wall_time_s=progress.elapsed)
        if status is not None:
            result = trial.finish(result, status, reason)
            progress.result = result
        trial.save()
        report(dict(result, replay=replay) if replay else result, checkpoint_dir)
        replay = []
        if status is not None:
            return result


def resume_trial(checkpoint_dir: Path | str, report: Report) -> FinalReport:
    """Continue a trial from its checkpoint folder alone (the checkpoint holds its ``TrialConfig``),
    on whatever machine it restarts."""
    saved = load_checkpoint(Path(checkpoint_dir) / CHECKPOINT, map_location="cpu")
    return run_trial(TrialConfig.from_dict(saved["config"]), report, checkpoint_dir)

"""One trial: train one model with one α and one seed, evaluate every epoch, checkpoint, resume.

What a trial reports is defined once in ``wconv.result`` (``EpochReport``, ``FinalReport`` and the key constants)
and imported from here by launchers, stores and reports; ``trial.pt``'s format is ``wconv.checkpoint``'s. The
pieces a fused group (``wconv.fused``) shares with a lone trial are public here: ``Task`` (loss and metrics),
``pick_device``, ``autocast_for``, ``compile_for``, and the builders (``load_data``, ``build_model``,
``make_optimizer``).
"""

from __future__ import annotations

import functools
import math
import random
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Literal, Optional, get_args

import numpy as np
import torch
import torch.nn as nn

from wconv.checkpoint import load_checkpoint, save_checkpoint, set_rng_state, trial_checkpoint
from wconv.conv import DensityStep, LRShape, convert, lr_shape_problem, param_groups, scale_init, shape_init
from wconv.metrics import TASK_METRICS, VALIDATION_METRICS, MetricName
# The result protocol and the bookkeeping that decides it live in wconv.result; launch/, analysis/ and the tests
# import the protocol from here, as they always have.
from wconv.result import (  # noqa: F401
    ALPHA,
    BASELINE,
    BEST_EPOCH,
    COMPLETED,
    CONFUSION_MATRIX,
    DEVICE,
    EPOCH,
    FAILED,
    FINAL,
    FINISHED,
    HOST,
    LOSS,
    LR,
    MEMBER,
    METRIC_SETTINGS,
    REASON,
    REPLAY,
    STATUS,
    STOPPED,
    TEST,
    TRAIN_LOSS,
    VAL,
    VAL_LOSS,
    WALL_TIME_S,
    EpochReport,
    FinalMetrics,
    FinalReport,
    Progress,
    TrialStatus,
    constant_keys,
    final_value,
    metric_key,
)


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
    init_shape: Optional[tuple[float, ...]] = None
    """An α whose density Φ multiplies, elementwise, the initial weights of the convs it would weight
    (``wconv.shape_init``): with ``alpha=None``, the init-shape control (Φ's shape at initialisation only)."""
    lr_shape: Optional[tuple[float, ...]] = None
    """An α whose density sets the per-position learning rate of the convs it would weight (``wconv.LRShape``:
    Φ² on the SGD gradient, Φ on the Adam step): with ``alpha=None``, the lr-shape control. With
    ``init_shape`` the same α, under SGD, the trial *is* the weighted trial of that α."""

    def __post_init__(self) -> None:
        problem = self.lr_shape and lr_shape_problem(self.training.optimizer, self.training.weight_decay,
                                                     self.training.learnable_alpha)
        if problem:
            raise ValueError(problem)

    @classmethod
    def from_dict(cls, d: dict) -> "TrialConfig":
        """Inverse of ``dataclasses.asdict`` (what a checkpoint stores)."""
        training = dict(d["training"], betas=tuple(d["training"]["betas"]))
        alphas = {k: None if d.get(k) is None else tuple(d[k]) for k in ("alpha", "init_scale", "init_shape",
                                                                          "lr_shape")}
        return cls(**dict(d, training=TrainingConfig(**training), **alphas))


CHECKPOINT = "trial.pt"
Report = Callable[[dict, Path], Optional[str]]
"""``report(metrics, checkpoint_dir)``: called after every epoch's checkpoint with an ``EpochReport``,
the last time with a ``FinalReport``. It returns None to go on, or a one-line reason to stop the trial (a
scheduler's decision, e.g. ASHA's at a rung): the trial then ends ``stopped`` and reports once more."""


def pick_device() -> torch.device:
    """The device a trial (or a fused group) trains on: CUDA when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Task:
    """Loss and metrics of one task; the training loop itself is task-agnostic (a trial's and a group's)."""

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


def autocast_for(device: torch.device, training: TrainingConfig):
    """bf16 autocast on CUDA when ``training.amp``; a no-op context elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and training.amp)


def compile_for(fn: Callable, training: TrainingConfig) -> Callable:
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
    if config.init_shape is not None:
        shape_init(model, {config.kernel_size: config.init_shape})
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


class Trial:
    """The steps of ``run_trial``: one object so each step reads the trial's pieces by name (benchmarks time them
    one by one)."""

    def __init__(self, config: TrialConfig, checkpoint_dir: Path, data=None):
        self.config, self.training = config, config.training
        self.device = pick_device()
        self.checkpoint = checkpoint_dir / CHECKPOINT
        self.setup = prepare_trial(config, self.device, data)
        self.task = Task(self.setup.data.task, self.training, self.setup.data.num_classes, self.device)
        self.dtype = next(self.setup.model.parameters()).dtype
        self.about = constant_keys(self.device, config.baseline)
        self.progress = Progress()
        self.density = DensityStep(self.setup.model)
        """Φ once per step for the whole model (``wconv.conv``): ``forward(density.weights(), x)``."""
        self.forward = compile_for(self.density.forward, self.training)
        self.lr_shape = LRShape(self.setup.model, None if config.lr_shape is None else
                                {config.kernel_size: config.lr_shape}, self.training.optimizer)
        """The lr-shape control's per-position learning rate; a plain ``optimizer.step()`` otherwise."""

    def autocast(self):
        return autocast_for(self.device, self.training)

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
        set_rng_state(saved["rng"])
        self.progress = Progress(**saved["state"])

    def save(self) -> None:
        s = self.setup
        save_checkpoint(trial_checkpoint(s.model.state_dict(), s.optimizer.state_dict(), s.scheduler.state_dict(),
                                         s.order, self.progress, self.config), self.checkpoint)

    def train_epoch(self) -> float:
        """One epoch of optimiser steps and the LR scheduler's step; the mean training loss."""
        s, tc = self.setup, self.training
        s.model.train()
        total, n = torch.zeros((), device=self.device), 0
        with self.density.applied():
            for step, (x, y) in enumerate(s.data.train.batches(tc.batch_size, s.order)):
                if tc.max_steps_per_epoch is not None and step >= tc.max_steps_per_epoch:
                    break
                x, y = as_model_dtype(x, y, self.dtype)
                with self.autocast():
                    loss = self.task.loss_of(self.forward(self.density.weights(), x), y)
                s.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.lr_shape.step(s.optimizer)
                total += loss.detach() * len(x)  # summed on the device: no host sync per step
                n += len(x)
        s.scheduler.step()
        return total.item() / max(n, 1)

    def evaluate(self, split, prefix: str, final: bool = False) -> dict:
        self.setup.model.eval()
        with torch.no_grad():
            weights = self.density.weights()  # once for the whole split: the weights do not change
        with self.density.applied():
            return self.task.evaluate(lambda x: self.forward(weights, x)[None], 1, split, self.training.batch_size,
                                      self.autocast, self.dtype, prefix, final)[0]

    def validate(self) -> dict:
        return self.evaluate(self.setup.data.val, VAL)

    def finish(self, report: dict, status: TrialStatus, reason: str) -> FinalReport:
        """The last report: ``report`` plus the outcome and, if completed, the best epoch's model on test."""
        test = {}
        if status == COMPLETED:
            self.setup.model.load_state_dict(self.progress.best_model)
            test = self.evaluate(self.setup.data.test, TEST, final=True)
        return self.progress.finish(report, status, reason, test, self.task.settings)


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
    trial = Trial(config, checkpoint_dir)
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
        status, reason = progress.outcome(metrics, trial.training, config.baseline)
        progress.epoch = epoch
        progress.history.append(metrics)
        progress.elapsed = elapsed0 + time.time() - started
        result = dict(metrics, **trial.about, wall_time_s=progress.elapsed)
        if status is not None:
            result = trial.finish(result, status, reason)  # kept as progress.result
        trial.save()
        decision = report(dict(result, replay=replay) if replay else result, checkpoint_dir)
        replay = []
        if status is not None:
            return result
        if decision:  # stopped by the caller's scheduler: ends as a stopped member of a fused group does
            result = trial.finish(result, STOPPED, str(decision))
            trial.save()
            report(result, checkpoint_dir)
            return result


def resume_trial(checkpoint_dir: Path | str, report: Report) -> FinalReport:
    """Continue a trial from its checkpoint folder alone (the checkpoint holds its ``TrialConfig``),
    on whatever machine it restarts."""
    saved = load_checkpoint(Path(checkpoint_dir) / CHECKPOINT, map_location="cpu")
    return run_trial(TrialConfig.from_dict(saved["config"]), report, checkpoint_dir)

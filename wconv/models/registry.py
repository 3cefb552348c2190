"""The model registry: names → builders, and ``build``, which initialises every model the same way
(Kaiming, Sect. 4.1/4.2) *before* weighting its convs, so standard and weighted twins start equal."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from wconv.conv import Alpha, convert

TASKS = ("classification", "denoising")
_COMMON = ("kernel_size", "in_channels", "num_classes", "width")


@dataclass(frozen=True)
class _Entry:
    task: str
    builder: Callable[..., nn.Module]
    in_channels: int
    num_classes: Optional[int]
    fusable: bool = True

    @property
    def options(self) -> tuple[str, ...]:
        """The builder's own keyword options (everything but the common arguments)."""
        params = inspect.signature(self.builder).parameters
        return tuple(p for p in params if p not in _COMMON)


_MODELS: dict[str, _Entry] = {}


def register(name: str, task: str, *, in_channels: int = 3, num_classes: Optional[int] = None,
             fusable: bool = True):
    """Decorator: make ``builder(*, kernel_size, in_channels, [num_classes,] width, **options)`` buildable as ``name``.

    ``fusable``: ``wconv.fused`` can train K of its trials as one model (every operation has a ``torch.func.vmap``
    rule; an ``autograd.Function`` needs ``setup_context`` and a vmap rule). A sweep with ``resources.group_size``
    above 1 refuses a model registered with ``fusable=False``; tests/test_fused.py fuses every other one."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def add(builder):
        _MODELS[name] = _Entry(task, builder, in_channels, num_classes if task == "classification" else None,
                               fusable)
        return builder

    return add


def available(task: str | None = None) -> list[str]:
    """Registered model names, optionally only those of ``task`` ("classification" or "denoising")."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} or None, got {task!r}")
    return sorted(n for n, e in _MODELS.items() if task is None or e.task == task)


def _entry(name: str) -> _Entry:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _MODELS[name]


def task_of(name: str) -> str:
    """"classification" or "denoising"."""
    return _entry(name).task


def fusable(name: str) -> bool:
    """Whether ``wconv.fused.run_group`` can train trials of ``name`` as one fused group (see ``register``)."""
    return _entry(name).fusable


def options(name: str) -> dict[str, inspect.Parameter]:
    """What a caller chooses in ``build(name, **options)``: ``width`` and the builder's own keywords, with their
    annotations and defaults. The kernel size and α are the search's, ``in_channels`` and ``num_classes``
    the dataset's, so they are not among them."""
    entry = _entry(name)
    own = inspect.signature(entry.builder, eval_str=True).parameters
    return {"width": inspect.signature(build, eval_str=True).parameters["width"], **{n: own[n] for n in entry.options}}


def init_weights(model: nn.Module) -> nn.Module:
    """The paper's initialisation for every family (Sect. 4.1, Table 2): Kaiming normal (fan_out, ReLU) for
    every conv, zero conv biases, norm layers weight 1 / bias 0. Linear layers keep their own init."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
            if getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    return model


def build(name: str, *, kernel_size: int = 3, alpha: Alpha = None, in_channels: int | None = None,
          num_classes: int | None = None, width: float = 1.0, **options) -> nn.Module:
    """Build ``name`` with plain torch convs, every K×K spatial conv of size ``kernel_size``; initialise it;
    then, if ``alpha`` is given, weight the ``kernel_size`` convs in place (``convert(model, {kernel_size: alpha})``).

    The same ``torch.manual_seed`` gives the same initial weights and parameter count with and without α.
    """
    model = init_weights(_construct(name, kernel_size, in_channels, num_classes, width, options))
    if alpha is not None:
        convert(model, {kernel_size: alpha})
    return model


def check_options(name: str, *, kernel_size: int = 3, **options) -> None:
    """Raise what ``build(name, kernel_size=kernel_size, **options)`` would raise for these options, without
    allocating or initialising anything (the model is constructed on the meta device), so that a sweep's
    models are checked before any trial starts."""
    with torch.device("meta"):
        _construct(name, kernel_size, None, None, options.pop("width", 1.0), options)


def _construct(name: str, kernel_size: int, in_channels: int | None, num_classes: int | None, width: float,
               options: dict) -> nn.Module:
    entry = _entry(name)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise TypeError(f"build({name!r}): unknown option(s) {', '.join(map(repr, unknown))}; "
                        f"{name} accepts {', '.join(entry.options) or 'no options'}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"build({name!r}): kernel_size must be an odd integer ≥ 3, got {kernel_size!r}")
    if not width > 0:
        raise ValueError(f"build({name!r}): width must be > 0, got {width!r}")
    kwargs = dict(kernel_size=kernel_size, in_channels=entry.in_channels if in_channels is None else in_channels,
                  width=width, **options)
    if entry.task == "classification":
        kwargs["num_classes"] = entry.num_classes if num_classes is None else num_classes
    elif num_classes is not None:
        raise ValueError(f"build({name!r}): a denoiser outputs in_channels channels; num_classes does not apply")
    return entry.builder(**kwargs)

"""The sweep file: a YAML description of α ranges per kernel size, validated into a ``Sweep``.

A sweep expands into cells (model × kernel size × seed); each cell is one Optuna study run by
Ray Tune. Defaults live here, in the field declarations; shipped YAML files say only what differs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from wconv.train import TrainingConfig

CLASSIFICATION_METRICS = {"val_loss": "min", "val_accuracy": "max", "val_f1": "max"}
DENOISING_METRICS = {"val_loss": "min", "val_psnr": "max", "val_ssim": "max", "val_nrmse": "min", "val_uiq": "max"}


class SpecError(Exception):
    """A sweep file that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, path: str, problems: list[str]):
        self.path, self.problems = path, problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Strict):
    name: str
    """A dataset of ``wconv.data.DATASETS`` (digits, natural, cifar100, div2k)."""
    root: Optional[str] = None
    """Folder of a staged dataset (``wconv data prepare``); not needed for bundled ones."""
    options: dict[str, Any] = {}
    """Extra keyword arguments of ``wconv.data.load`` (e.g. patch_size, limit)."""


class ModelSpec(_Strict):
    name: str
    options: dict[str, Any] = {}
    """Extra keyword arguments of ``wconv.models.build`` (e.g. width)."""


class SearchSpec(_Strict):
    num_samples: int = Field(16, ge=1)
    """Trials sampled by Optuna per cell, on top of the cell's α = 1 baseline."""
    metric: Optional[str] = None
    """Validation metric optimised; default val_accuracy (classification) or val_psnr (denoising)."""
    mode: Optional[Literal["min", "max"]] = None
    """Defaults to the metric's natural direction."""
    seed: int = 0
    """Seed of the TPE sampler."""
    max_concurrent: Optional[int] = Field(None, ge=1)
    """Trials running at once; default: as many as the resources allow."""


class SchedulerSpec(_Strict):
    type: Literal["asha", "fifo"] = "asha"
    max_epochs: Optional[int] = Field(None, ge=1)
    """ASHA's max_t; must equal training.epochs when given."""
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3, gt=1)


class ResourcesSpec(_Strict):
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float = Field(0, ge=0)


class Sweep(_Strict):
    name: str
    task: Literal["classification", "denoising"]
    dataset: DatasetSpec
    models: list[Union[str, ModelSpec]] = Field(min_length=1)
    kernels: dict[int, list[tuple[float, float]]] = Field(min_length=1)
    """Per kernel size K, one [low, high] range per free coefficient, outer edge inward."""
    search: SearchSpec = SearchSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    training: dict[str, Any] = {}
    """Overrides of ``wconv.train.TrainingConfig`` for this sweep's task."""
    seeds: list[int] = Field([0], min_length=1)
    resources: ResourcesSpec = ResourcesSpec()
    storage: str = "sqlite:///results/wconv.db"
    """SQLAlchemy URL of the results database (PostgreSQL on a cluster)."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError("must be letters, digits, '_', '-' or '.' (it names folders and database rows)")
        return v

    @field_validator("models")
    @classmethod
    def _models(cls, v: list) -> list[ModelSpec]:
        return [ModelSpec(name=m) if isinstance(m, str) else m for m in v]

    @field_validator("kernels")
    @classmethod
    def _kernels(cls, v: dict[int, list[tuple[float, float]]]) -> dict:
        problems = []
        for k, ranges in v.items():
            if k < 3 or k % 2 == 0:
                problems.append(f"kernels.{k}: kernel size must be odd and ≥ 3")
                continue
            if len(ranges) != (k - 1) // 2:
                problems.append(f"kernels.{k}: needs {(k - 1) // 2} [low, high] range(s), one per free coefficient, "
                                f"got {len(ranges)}")
            for i, (low, high) in enumerate(ranges):
                if low <= 0:
                    problems.append(f"kernels.{k}[{i}]: low ({low}) must be > 0")
                if high <= low:
                    problems.append(f"kernels.{k}[{i}]: high ({high}) must be > low ({low})")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Sweep":
        problems = []
        metrics = CLASSIFICATION_METRICS if self.task == "classification" else DENOISING_METRICS
        if self.search.metric is not None and self.search.metric not in metrics:
            problems.append(f"search.metric: {self.search.metric!r} is not a {self.task} metric; "
                            f"expected one of {sorted(metrics)}")
        unknown = sorted(set(self.training) - set(TrainingConfig.field_names()))
        if unknown:
            problems.append(f"training: unknown field(s) {unknown}; expected some of {TrainingConfig.field_names()}")
        else:
            try:
                self.training_config()
            except (TypeError, ValueError) as e:
                problems.append(f"training: {e}")
        if not problems:
            epochs = self.training_config().epochs
            if self.scheduler.max_epochs is not None and self.scheduler.max_epochs != epochs:
                problems.append(f"scheduler.max_epochs ({self.scheduler.max_epochs}) must equal training.epochs "
                                f"({epochs}): ASHA's max_t is the trial's epoch budget")
            if self.scheduler.grace_period > epochs:
                problems.append(f"scheduler.grace_period ({self.scheduler.grace_period}) must be ≤ training.epochs "
                                f"({epochs})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def metric(self) -> str:
        return self.search.metric or ("val_accuracy" if self.task == "classification" else "val_psnr")

    @property
    def mode(self) -> str:
        metrics = CLASSIFICATION_METRICS if self.task == "classification" else DENOISING_METRICS
        return self.search.mode or metrics[self.metric]

    def training_config(self) -> TrainingConfig:
        cfg = TrainingConfig.for_task(self.task, **self.training)
        for name, value in vars(cfg).items():
            if name in ("epochs", "batch_size") and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            if name == "lr" and (not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"lr must be a positive number, got {value!r}")
        return cfg

    def cells(self) -> list["Cell"]:
        return [Cell(self.name, m.name, dict(m.options), k, tuple(map(tuple, r)), seed)
                for m in self.models for k, r in sorted(self.kernels.items()) for seed in self.seeds]


@dataclass(frozen=True)
class Cell:
    """One search: a model at one kernel size and seed, with its α ranges."""

    sweep: str
    model: str
    model_options: dict
    kernel_size: int
    ranges: tuple[tuple[float, float], ...]
    seed: int

    @property
    def id(self) -> str:
        return f"{self.model}-k{self.kernel_size}-s{self.seed}"


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int) and out:
            out += f"[{part}]"
        elif part in ("function-after", "str", "ModelSpec") or str(part).startswith(("union[", "function-")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _problems(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        path = _field_path(e["loc"])
        for part in msg.split("; "):
            if path:
                lines.append(f"{path}: {part}")
            else:
                lines.append(part)
    return list(dict.fromkeys(lines))


def _check_registries(sweep: Sweep) -> list[str]:
    """Names that only the library knows: datasets and models, and their tasks."""
    from wconv import data, models

    problems = []
    if sweep.dataset.name not in data.DATASETS:
        problems.append(f"dataset.name: unknown dataset {sweep.dataset.name!r}; expected one of {sorted(data.DATASETS)}")
    elif data.DATASETS[sweep.dataset.name] != sweep.task:
        problems.append(f"dataset.name: {sweep.dataset.name!r} is a {data.DATASETS[sweep.dataset.name]} dataset, "
                        f"but task is {sweep.task!r}")
    for i, m in enumerate(sweep.models):
        if m.name not in models.available():
            problems.append(f"models[{i}]: unknown model {m.name!r}; expected one of {models.available(sweep.task)}")
        elif models.task_of(m.name) != sweep.task:
            problems.append(f"models[{i}]: {m.name!r} is a {models.task_of(m.name)} model, but task is {sweep.task!r}")
    return problems


def parse_sweep(data: Any, path: str = "<sweep>") -> Sweep:
    if not isinstance(data, dict):
        raise SpecError(path, ["the file must be a YAML mapping of sweep fields (name, task, dataset, models, kernels, …)"])
    try:
        sweep = Sweep.model_validate(data)
    except ValidationError as e:
        raise SpecError(path, _problems(e)) from None
    problems = _check_registries(sweep)
    if problems:
        raise SpecError(path, problems)
    return sweep


def apply_overrides(data: Any, overrides: list[str], path: str = "<sweep>") -> Any:
    """Apply ``--set FIELD=VALUE`` overrides to the raw sweep mapping before validation.

    FIELD is a dotted path (``training.epochs``, ``dataset.options.limit``); a list index is a
    number and ``*`` means every element (``models.*.options.width``). VALUE is read as YAML.
    """
    if not overrides:
        return data
    problems = []
    for item in overrides:
        field_path, sep, text = item.partition("=")
        if not sep or not field_path:
            problems.append(f"--set {item!r}: expected FIELD=VALUE, e.g. training.epochs=2")
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            problems.append(f"--set {field_path}: value {text!r} is not valid YAML")
            continue
        try:
            _set(data, field_path.split("."), value)
        except (KeyError, IndexError, TypeError) as e:
            problems.append(f"--set {field_path}: cannot set it in this sweep ({e})")
    if problems:
        raise SpecError(path, problems)
    return data


def _set(node: Any, parts: list[str], value: Any) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        indices = range(len(node)) if head == "*" else [int(head)]
        for i in indices:
            if rest and isinstance(node[i], str):
                node[i] = {"name": node[i]}  # a bare model name gains options
            if rest:
                _set(node[i], rest, value)
            else:
                node[i] = value
        return
    if not isinstance(node, dict):
        raise TypeError(f"{head!r} is inside a {type(node).__name__}, not a mapping")
    key: Any = int(head) if head.isdigit() and int(head) in node else head
    if rest:
        node.setdefault(key, {})
        if isinstance(node[key], str) and rest:
            node[key] = {"name": node[key]}
        _set(node[key], rest, value)
    else:
        node[key] = value


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and validate a sweep file (safe YAML loader only), after ``--set`` overrides."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(str(path), [f"cannot read the sweep file ({e.strerror}); check the path"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(str(path), [f"{where}not valid YAML ({getattr(e, 'problem', e)})"]) from None
    return parse_sweep(apply_overrides(data, overrides or [], str(path)), str(path))

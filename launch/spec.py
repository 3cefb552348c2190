"""The sweep file: a YAML description of α ranges per kernel size, validated into a ``Sweep``.

A sweep expands into cells (model × kernel size × seed); each cell is one Optuna study run by
Ray Tune. Defaults live here, in the field declarations; shipped YAML files say only what differs.

Validation runs before anything starts, in this order: read the file (whatever its bytes), parse the
YAML, apply ``--set`` overrides, check every field's type strictly (a bool, a string or NaN is not a
number), then check names and options against what the library's registries accept. Each problem is
one line, ``FILE: dotted.field: what is wrong; what to do``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from annotated_types import Ge, Gt, Interval, Lt
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, create_model,
                      field_validator, model_serializer, model_validator)

from analysis.store import DEFAULT_URL
from wconv.metrics import METRIC_MODES, TASK_METRICS
from wconv.train import TrainingConfig

MAX_FILE_BYTES = 1 << 20
"""A sweep file is a few lines of YAML; anything larger is the wrong file (a database, a dataset)."""
SEED_LIMIT = 2**31
"""Seeds feed torch, NumPy and Optuna's sampler; NumPy takes 32-bit ones, Optuna adds offsets to them."""
MAX_GRID = 100_000
"""The most points a grid search may have per cell: Optuna's GridSampler lists every combination up front."""

def task_metrics(task: str) -> dict[str, str]:
    """The validation metrics a ``task``'s sweep can optimise, with their directions."""
    return {"val_loss": "min", **{f"val_{m}": METRIC_MODES[m] for m in TASK_METRICS[task]}}


class SpecError(Exception):
    """A sweep file that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, path: str, problems: list[str]):
        self.path, self.problems = path, problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


# -- YAML and strict types -------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, except that ``1e-3`` is a number (PyYAML reads it as text unless written
    ``1.0e-3``) and a key given twice in one mapping is refused instead of silently keeping the last."""

    def construct_mapping(self, node, deep=False):
        self.flatten_mapping(node)
        keys = [self.construct_object(key_node, deep=True) for key_node, _ in node.value]
        for i, key in enumerate(keys):
            if isinstance(key, typing.Hashable) and key in keys[:i]:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice; keep one",
                                                        node.value[i][0].start_mark)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                              list("-+.0123456789"))


def _listed(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _typed(tp: Any, bound: Any = None) -> Any:
    """``tp`` as a type that pydantic's strict mode checks and YAML can fill: a list may fill a tuple, and
    ``bound`` (an annotated-types constraint such as ``Ge(1)``) applies to every number inside."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in (int, float):
        return tp if bound is None else Annotated[tp, bound]
    if origin is tuple:
        inner = tuple(a if a is Ellipsis else _typed(a, bound) for a in args)
        return Annotated[tuple[inner], BeforeValidator(_listed)]
    if origin in (Union, types.UnionType):
        return Union[tuple(_typed(a, bound) for a in args)]
    if origin is Annotated:
        return Annotated[(_typed(args[0], bound), *tp.__metadata__)]
    if origin in (list, dict, Sequence):
        return origin[tuple(_typed(a, bound) for a in args)]
    return tp


class _Strict(BaseModel):
    # strict: YAML's `yes` is a bool and `"5"` a string, neither is a number; NaN and inf are no numbers either.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True)


Seed = Annotated[int, Ge(0), Lt(SEED_LIMIT)]


# -- the sweep file --------------------------------------------------------------------------------


class DatasetSpec(_Strict):
    name: str
    """A dataset of ``wconv.data.DATASETS`` (digits, natural, cifar100, div2k)."""
    root: Optional[str] = None
    """Folder of a staged dataset (``wconv data prepare``); not needed for bundled ones."""
    options: dict[str, Any] = {}
    """Keyword options of ``wconv.data.load`` this dataset uses (``wconv.data.options``), e.g. limit, patch_size."""


class ModelSpec(_Strict):
    name: str
    options: dict[str, Any] = {}
    """Keyword options of ``wconv.models.build`` for this model (``wconv.models.options``), e.g. width."""


def _named(value: Any) -> Any:
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, dict):
        raise ValueError(f"expected a model name or a mapping {{name: …, options: {{…}}}}, got {value!r}")
    return value


class SearchSpec(_Strict):
    num_samples: int = Field(16, ge=1)
    """Trials sampled by Optuna per cell, on top of the cell's α = 1 baseline. With ``sampler: grid`` it follows
    from the grid: the grid's points, less the one equal to α = 1 if there is one (that point is the baseline,
    not a second trial); leave it out, or give exactly that number."""
    metric: Optional[str] = None
    """Validation metric optimised; default val_accuracy (classification) or val_psnr (denoising)."""
    mode: Optional[Literal["min", "max"]] = None
    """Defaults to the metric's natural direction."""
    seed: Seed = 0
    """Seed of the sampler."""
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    """Optuna's sampler of α: ``tpe`` (TPESampler), ``random`` (RandomSampler) or ``grid`` (GridSampler over
    ``grid_points`` values per free coefficient: every combination is one trial)."""
    grid_points: Optional[int] = Field(None, ge=2)
    """With ``sampler: grid`` (and only then; it is required there): N evenly spaced values over each free
    coefficient's [low, high], both ends included, so N^d points for d coefficients (25 for a 5×5 kernel at N = 5)."""

    @model_serializer(mode="wrap")
    def _without_default_sampler(self, handler):
        """The TPE default is left out of the dump, so a sweep recorded before samplers were a field keeps its
        identity (``launch.cell.spec_hash``)."""
        dumped = handler(self)
        if dumped.get("sampler") == "tpe" and dumped.get("grid_points") is None:
            dumped = {k: v for k, v in dumped.items() if k not in ("sampler", "grid_points")}
        return dumped
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
    group_size: int = Field(1, ge=1)
    """Up to this many trials of one cell trained as one fused group (``wconv.fused``) on one trial's resources
    (``cpus_per_trial``, ``gpus_per_trial``): one Tune trial per group; 1: each trial alone. Every model must be
    fusable (``wconv.models.registry.fusable``). How the search drives groups: ``launch/search.py``."""


class _Overrides(_Strict):
    """Fields of ``TrainingConfig`` a sweep sets; it dumps only those given, so the recorded spec holds what
    the file says, not every default of the day."""

    @model_serializer(mode="wrap")
    def _given(self, handler):
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


# Ranges the types cannot say; every other field of TrainingConfig is checked by its type alone.
_TRAINING_BOUNDS = {
    "epochs": Ge(1), "batch_size": Ge(1), "lr": Gt(0), "momentum": Interval(ge=0, lt=1),
    "betas": Interval(ge=0, lt=1), "weight_decay": Ge(0), "label_smoothing": Interval(ge=0, lt=1),
    "noise_sigma": Ge(0), "patience": Ge(1), "max_steps_per_epoch": Ge(1),
}


def _training_overrides() -> type[_Overrides]:
    """A strict model of every ``TrainingConfig`` field, generated from the dataclass, so that a field added
    there is typed here without a second declaration."""
    hints = typing.get_type_hints(TrainingConfig)
    return create_model("TrainingOverrides", __base__=_Overrides,
                        **{f.name: (_typed(hints[f.name], _TRAINING_BOUNDS.get(f.name)), None)
                           for f in dataclasses.fields(TrainingConfig)})


TrainingOverrides = _training_overrides()

Range = Annotated[tuple[float, float], BeforeValidator(_listed)]


class Sweep(_Strict):
    """A sweep file: what to search (models, kernel sizes and their α ranges, seeds), how (search, scheduler,
    training) and where results go (storage)."""

    name: str = Field(max_length=100)
    """Names the sweep's folders and database rows: letters, digits, '_', '-', '.'."""
    task: Literal["classification", "denoising"]
    dataset: DatasetSpec
    models: list[Annotated[ModelSpec, BeforeValidator(_named)]] = Field(min_length=1)
    """Model names, or ``{name, options}`` mappings."""
    kernels: dict[int, list[Range]] = Field(min_length=1)
    """Per kernel size K, one [low, high] range per free coefficient, outer edge inward."""
    search: SearchSpec = SearchSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    training: TrainingOverrides = TrainingOverrides()
    """Fields of ``wconv.train.TrainingConfig`` that differ from the task's defaults."""
    seeds: list[Seed] = Field([0], min_length=1)
    workers: int = Field(1, ge=1)
    """SLURM array tasks sharing one cell's study (at most search.num_samples); 1 runs each cell in one process."""
    resources: ResourcesSpec = ResourcesSpec()
    storage: str = DEFAULT_URL
    """SQLAlchemy URL of the results database (PostgreSQL on a cluster)."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v) or v in (".", ".."):
            raise ValueError(f"{v!r} cannot name folders and database rows; use letters, digits, '_', '-' or '.' "
                             "(not '.' or '..')")
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        from analysis.store import StoreError, storage_url

        try:
            return storage_url(v)
        except StoreError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _consistent(self) -> "Sweep":
        problems = [*self._kernel_problems(), *self._list_problems()]
        if not problems:
            problems += self._grid_problems()
        metrics = task_metrics(self.task)
        if self.search.metric is not None and self.search.metric not in metrics:
            problems.append(f"search.metric: {self.search.metric!r} is not a {self.task} metric; "
                            f"expected one of {sorted(metrics)}")
        try:
            epochs = self.training_config().epochs
        except ValueError as e:  # what TrainingConfig itself refuses, e.g. another task's val_metrics
            raise ValueError("\n".join([*problems, str(e)])) from None
        if self.scheduler.max_epochs is not None and self.scheduler.max_epochs != epochs:
            problems.append(f"scheduler.max_epochs ({self.scheduler.max_epochs}) must equal training.epochs "
                            f"({epochs}): ASHA's max_t is the trial's epoch budget; drop it or make them equal")
        if self.scheduler.grace_period > epochs:
            problems.append(f"scheduler.grace_period ({self.scheduler.grace_period}) must be ≤ training.epochs "
                            f"({epochs}); lower it")
        if self.workers > self.search.num_samples:
            problems.append(f"workers ({self.workers}) must be ≤ search.num_samples ({self.search.num_samples}): "
                            "a worker with no trial to run would only wait; lower it")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _kernel_problems(self) -> list[str]:
        problems = []
        for k, ranges in self.kernels.items():
            if k < 3 or k % 2 == 0:
                problems.append(f"kernels.{k}: kernel size must be odd and ≥ 3; use 3, 5, 7, …")
                continue
            if len(ranges) != (k - 1) // 2:
                problems.append(f"kernels.{k}: needs {(k - 1) // 2} [low, high] range(s), one per free coefficient "
                                f"from the outer edge inward, got {len(ranges)}")
            for i, (low, high) in enumerate(ranges):
                if low <= 0:
                    problems.append(f"kernels.{k}[{i}]: low ({low}) must be > 0; α scales kernel weights")
                if high <= low:
                    problems.append(f"kernels.{k}[{i}]: high ({high}) must be > low ({low}); swap or widen them")
        return problems

    def _grid_problems(self) -> list[str]:
        """``grid_points`` only with the grid sampler, and ``num_samples`` as the grid makes it (set here when
        not given)."""
        search = self.search
        if search.sampler != "grid":
            if search.grid_points is None:
                return []
            return [f"search.grid_points: only sampler grid uses it (search.sampler is {search.sampler}); drop it "
                    "or set search.sampler: grid"]
        if search.grid_points is None:
            return ["search.grid_points: missing; sampler grid needs the number of values per free coefficient "
                    "(≥ 2), e.g. grid_points: 5"]
        samples = {}
        for k, ranges in sorted(self.kernels.items()):
            points = search.grid_points ** len(ranges)
            if points > MAX_GRID:
                return [f"search.grid_points: {search.grid_points} values over the {len(ranges)} coefficient(s) of "
                        f"kernels.{k} make {points} trials per cell, more than {MAX_GRID}; lower it"]
            samples[k] = points - grid_has_baseline(ranges, search.grid_points)
        if len(set(samples.values())) > 1:
            shown = ", ".join(f"kernels.{k}: {n}" for k, n in samples.items())
            return [f"search.sampler: grid gives the kernel sizes different numbers of sampled trials ({shown}), "
                    "but the cells of a sweep share one search.num_samples; put each kernel size in its own sweep"]
        (n,) = set(samples.values())
        if "num_samples" not in search.model_fields_set:
            search.num_samples = n
        elif search.num_samples != n:
            k = next(iter(samples))
            baseline = (", less the point α = 1, which is the baseline" if grid_has_baseline(
                self.kernels[k], search.grid_points) else "; the α = 1 baseline runs besides")
            return [f"search.num_samples ({search.num_samples}) contradicts the grid: {search.grid_points} value(s) "
                    f"per coefficient of kernels.{k} make {n} sampled trials ({search.grid_points}^"
                    f"{len(self.kernels[k])} points{baseline}); drop num_samples or set it to {n}"]
        return []

    def _list_problems(self) -> list[str]:
        problems = []
        names = [m.name for m in self.models]
        for i, name in enumerate(names):
            if name in names[:i]:
                problems.append(f"models[{i}]: {name!r} is already models[{names.index(name)}]; cells are named by "
                                "model, so list each model once")
        for i, seed in enumerate(self.seeds):
            if seed in self.seeds[:i]:
                problems.append(f"seeds[{i}]: seed {seed} is listed twice; list each seed once")
        return problems

    @property
    def metric(self) -> str:
        return self.search.metric or ("val_accuracy" if self.task == "classification" else "val_psnr")

    @property
    def mode(self) -> str:
        return self.search.mode or task_metrics(self.task)[self.metric]

    def training_config(self) -> TrainingConfig:
        """The task's protocol with the sweep's overrides; per-epoch validation always scores the search
        metric, which ASHA and the searcher read every epoch."""
        return TrainingConfig.for_task(self.task, **self.training.model_dump()).validating(self.task, self.metric)

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


def grid_axes(ranges: Sequence[tuple[float, float]], points: int) -> list[list[float]]:
    """Per free coefficient, ``points`` evenly spaced values over [low, high], both ends exactly; the values
    between are rounded to 12 significant digits, so that a grid written in decimals lands on its decimals
    (0.75, not 0.7500000000000001) and on α = 1 exactly where the grid holds it."""
    axes = []
    for low, high in ranges:
        inner = [min(max(float(f"{low + (high - low) * i / (points - 1):.12g}"), low), high)
                 for i in range(1, points - 1)]
        axes.append([float(low), *inner, float(high)])
    return axes


def grid_has_baseline(ranges: Sequence[tuple[float, float]], points: int) -> bool:
    """Whether α = 1 (every coefficient 1) is one of the grid's points."""
    return all(1.0 in axis for axis in grid_axes(ranges, points))


# -- the storage URL's password --------------------------------------------------------------------

LIBPQ_DRIVERS = ("psycopg", "psycopg2", "psycopg2cffi")
"""PostgreSQL drivers over libpq, which finds a password by itself: ``PGPASSWORD``, else ``~/.pgpass`` (or the
file ``PGPASSFILE`` names)."""


def without_password(url: str) -> str:
    """``url`` with its password, if any, left out."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.password is None:
        return url
    return parsed._replace(password=None).render_as_string(hide_password=False)  # URL.set() ignores None


def detach_password(url: str) -> str:
    """``url`` without its password; the password goes to ``PGPASSWORD`` in this process's environment instead.

    Everything that holds the URL may end up in a file: the spec recorded in the store, Ray Tune's pickled
    experiment state, a SLURM task's pickled arguments, console logs. libpq reads ``PGPASSWORD`` where it
    connects, here and in every process started from here (Ray's workers), and nothing writes it down."""
    import os

    from sqlalchemy.engine import make_url

    from analysis.store import StoreError

    parsed = make_url(url)
    if parsed.password is None:
        return url
    if parsed.get_backend_name() != "postgresql" or parsed.get_driver_name() not in LIBPQ_DRIVERS:
        raise StoreError(f"storage {parsed.render_as_string(hide_password=True)!r}: wconv keeps a password out "
                         f"of the files it writes by handing it to libpq, which driver {parsed.get_driver_name()!r} "
                         "does not use; use postgresql+psycopg://USER@HOST/DB with the password in ~/.pgpass")
    os.environ["PGPASSWORD"] = str(parsed.password)
    return without_password(url)


# -- one line per problem --------------------------------------------------------------------------


def _dotted(loc: Sequence) -> str:
    """('models', 0, 'options') → models[0].options; kernel sizes are mapping keys: kernels.5[1]."""
    out = ""
    for i, part in enumerate(loc):
        if part == "[key]":
            continue
        if isinstance(part, int) and out and loc[i - 1] != "kernels":
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _fields_at(loc: Sequence) -> list[str]:
    """The fields of the model that ``loc`` (a path to one of its fields) lies in."""
    model: Any = Sweep
    for part in loc[:-1]:
        if isinstance(part, str):
            model = _model_in(model.model_fields[part].annotation) if part in model.model_fields else None
        if model is None:
            return []
    return list(model.model_fields)


def _model_in(tp: Any) -> Optional[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    return next((m for m in map(_model_in, typing.get_args(tp)) if m is not None), None)


def _got(value: Any) -> str:
    return "" if isinstance(value, (dict, list)) else f", got {value!r}"


def _problem(error: dict) -> str:
    path, kind = _dotted(error["loc"]), error["type"]
    if kind == "extra_forbidden":
        return f"{path}: unknown field; expected one of {_fields_at(error['loc'])}"
    if kind == "missing":
        return f"{path}: missing; this field is required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{path}: expected a mapping (field: value, …){_got(error['input'])}"
    message = error["msg"].removeprefix("Value error, ")
    lines = [line if not path or line.startswith(path) else f"{path}: {line}" for line in message.splitlines()]
    return "\n".join(lines) if kind == "value_error" else f"{lines[0]}{_got(error['input'])}"


def _problems(err: ValidationError) -> list[str]:
    lines = [line for e in err.errors() for line in _problem(e).splitlines()]
    return list(dict.fromkeys(lines))


# -- names and options that only the library knows --------------------------------------------------


def _option_problems(where: str, given: dict, accepted: dict, check) -> list[str]:
    """Unknown options, wrong types, then the library's own value check (``check(**options)``)."""
    problems = []
    for key, value in given.items():
        if key in TrainingConfig.field_names():
            problems.append(f"{where}.{key}: the trial sets it from training.{key}; set training.{key} instead")
        elif key not in accepted:
            problems.append(f"{where}.{key}: unknown option; expected one of {sorted(accepted)}")
        elif accepted[key].annotation is not accepted[key].empty:
            adapter = TypeAdapter(_typed(accepted[key].annotation), config=_Strict.model_config)
            try:
                adapter.validate_python(value)
            except ValidationError as e:
                first = e.errors()[0]
                problems.append(f"{_dotted((where, key, *first['loc']))}: {first['msg']}{_got(first['input'])}")
    if problems:
        return problems
    try:
        check(**given)
    except Exception as e:  # noqa: BLE001 — any failure here is a trial that would fail in every worker
        kind = "" if isinstance(e, (ValueError, TypeError)) else f" ({type(e).__name__})"
        return [f"{where}: {' '.join(str(e).split())}{kind}; change the options"]
    return []


def _check_registries(sweep: Sweep) -> list[str]:
    """Names and options that only the library knows: datasets and models, their tasks and options."""
    from wconv import data, models
    from wconv.models.registry import fusable

    problems = []
    ds = sweep.dataset
    if ds.name not in data.DATASETS:
        problems.append(f"dataset.name: unknown dataset {ds.name!r}; expected one of {sorted(data.DATASETS)}")
    elif data.DATASETS[ds.name] != sweep.task:
        problems.append(f"dataset.name: {ds.name!r} is a {data.DATASETS[ds.name]} dataset, but task is "
                        f"{sweep.task!r}; pick a {sweep.task} dataset")
    else:
        problems += _option_problems("dataset.options", ds.options, data.options(ds.name), data.check_options)
    for i, m in enumerate(sweep.models):
        if m.name not in models.available():
            problems.append(f"models[{i}]: unknown model {m.name!r}; expected one of {models.available(sweep.task)}")
        elif models.task_of(m.name) != sweep.task:
            problems.append(f"models[{i}]: {m.name!r} is a {models.task_of(m.name)} model, but task is "
                            f"{sweep.task!r}; expected one of {models.available(sweep.task)}")
        else:
            for k in sorted(sweep.kernels):
                found = _option_problems(f"models[{i}].options", m.options, models.options(m.name),
                                         lambda **o: models.check_options(m.name, kernel_size=k, **o))
                problems += [p for p in found if p not in problems]
            if sweep.resources.group_size > 1 and not fusable(m.name):
                problems.append(f"models[{i}]: {m.name!r} cannot be fused (wconv.fused cannot vmap it), but "
                                f"resources.group_size is {sweep.resources.group_size}; set resources.group_size: 1 "
                                "or run this model in a sweep of its own")
    return problems


def parse_sweep(data: Any, path: str = "<sweep>") -> Sweep:
    """Validate a sweep's raw mapping: types first, then what the library's registries accept."""
    _check_mapping(data, path)
    try:
        sweep = Sweep.model_validate(data)
    except ValidationError as e:
        raise SpecError(path, _problems(e)) from None
    problems = _check_registries(sweep)
    if problems:
        raise SpecError(path, problems)
    return sweep


def _check_mapping(data: Any, path: str) -> None:
    if data is None:
        raise SpecError(path, ["the file holds no sweep; write its fields (name, task, dataset, models, kernels, …)"])
    if not isinstance(data, dict):
        raise SpecError(path, [f"the file must be a YAML mapping of sweep fields (name, task, dataset, models, "
                               f"kernels, …), not a {type(data).__name__}"])


# -- --set overrides -------------------------------------------------------------------------------


class _BadPath(Exception):
    """An override path that does not fit the sweep; the message says where and why."""


def apply_overrides(data: Any, overrides: list[str], path: str = "<sweep>") -> Any:
    """Apply ``--set FIELD=VALUE`` overrides to the raw sweep mapping before validation.

    FIELD is a dotted path (``training.epochs``, ``dataset.options.limit``, ``kernels.5``); a list index
    is a number and ``*`` means every element (``models.*.options.width``). VALUE is read as YAML.
    """
    if not overrides:
        return data
    _check_mapping(data, path)
    problems = []
    for item in overrides:
        field_path, sep, text = item.partition("=")
        parts = field_path.split(".")
        if not sep or not field_path:
            problems.append(f"--set {item!r}: expected FIELD=VALUE, e.g. training.epochs=2")
            continue
        if "" in parts:
            problems.append(f"--set {item!r}: {field_path!r} has an empty name between dots; "
                            "write a dotted path such as dataset.options.limit")
            continue
        try:
            value = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError:
            problems.append(f"--set {field_path}: value {text!r} is not valid YAML; quote it or fix it")
            continue
        try:
            _set(data, parts, value, [])
        except _BadPath as e:
            problems.append(f"--set {field_path}: {e}")
    if problems:
        raise SpecError(path, problems)
    return data


def _set(node: Any, parts: list[str], value: Any, done: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    where = ".".join(done) or "the sweep"
    if isinstance(node, list):
        if head != "*" and not head.isdigit():
            raise _BadPath(f"{where} is a list; {head!r} is not an index (use 0, 1, … or *)")
        if head.isdigit() and int(head) >= len(node):
            raise _BadPath(f"{where} has {len(node)} element(s); index {head} is out of range")
        for i in range(len(node)) if head == "*" else [int(head)]:
            if rest and isinstance(node[i], str):
                node[i] = {"name": node[i]}  # a bare model name gains options
            if rest:
                _set(node[i], rest, value, [*done, str(i)])
            else:
                node[i] = value
        return
    if not isinstance(node, dict):
        raise _BadPath(f"{where} is a {type(node).__name__}, not a mapping or list; it has no field {head!r}")
    key: Any = int(head) if head.isdigit() else head  # as YAML reads `5:` (kernel sizes)
    if not rest:
        node[key] = value
        return
    if node.get(key) is None:
        node[key] = {}
    _set(node[key], rest, value, [*done, head])


# -- the file --------------------------------------------------------------------------------------


def _read(path: Path) -> str:
    """The file's text, or one line saying why it cannot be a sweep file."""
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise SpecError(str(path), ["is a directory; give the path of a sweep .yaml file"])
        if size > MAX_FILE_BYTES:
            raise SpecError(str(path), [f"is {size / 2**20:.1f} MiB, not a sweep file (a few lines of YAML); "
                                        "check the path"])
        raw = path.read_bytes()
    except OSError as e:
        raise SpecError(str(path), [f"cannot read the sweep file ({e.strerror}); check the path"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(str(path), [f"not a text file (byte {e.start} is not UTF-8); give a YAML sweep file"]) from None
    if "\x00" in text:
        raise SpecError(str(path), ["not a text file (it holds NUL bytes); give a YAML sweep file"])
    if not text.strip():
        raise SpecError(str(path), ["the file is empty; write the sweep's fields (name, task, dataset, models, "
                                    "kernels, …)"])
    return text


def _parse(text: str, path: Path) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise SpecError(str(path), [f"{where}not valid YAML ({problem}); fix the file"]) from None
    except RecursionError:
        raise SpecError(str(path), ["nested too deeply to be a sweep file; check the file"]) from None


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and validate a sweep file (safe YAML loader only), after ``--set`` overrides."""
    path = Path(path)
    data = _parse(_read(path), path)
    _check_mapping(data, str(path))
    return parse_sweep(apply_overrides(data, overrides or [], str(path)), str(path))

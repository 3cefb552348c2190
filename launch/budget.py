"""Seconds per epoch for a sweep's budget (``wconv plan``, ``wconv submit --dry-run``), from wconv's own measurements.

Each cell's number comes from the first of these that has one, and the budget names which:

1. **Earlier trials in the results store**: the median over its trials of ``wall_time_s / epochs_run`` (training
   and per-epoch validation, as trials really run) for the same model with the same options on the same
   dataset, at the same kernel size if any was timed, else at any kernel size.
2. **benchmarks/gpu.py's measurements** shipped with wconv (``launch/epoch_seconds.yaml``): the weighted
   model's epoch on a named card, at the paper's model size on CIFAR-100- or DIV2K-shaped data, training only.
3. **The paper's A100 timings** (Tables 4 and 6, ``launch.cell.PAPER_SECONDS_PER_EPOCH``), at the same sizes.

2 and 3 are GPU epochs of paper-size models on the paper's datasets: they apply only to a sweep that trains
on GPUs (``resources.gpus_per_trial`` > 0), on cifar100 or div2k, with the model's default options. Anything
else is "no timing yet" until a first sweep has timed it. Reading never writes: a missing database is no timing.

Fused groups (``resources.group_size`` K > 1, ``wconv.fused``): a cell's ``num_samples + 1`` trials train in
``ceil((num_samples + 1) / K)`` groups, each one unit of work on one trial's resources. A group's seconds per
epoch (``group_seconds_per_epoch``) come from the first of these that has one:

a. **Earlier groups of the same size K in the results store**: the median over their members of
   ``wall_time_s / epochs_run`` (a member's wall time is its group's, so this is a group's epoch), keyed as
   in 1; a group's size is the number of trials sharing its ``group_id`` in its sweep.
b. **One trial's epoch (1–3 above) × K ÷ the fused speedup at K**: member-epochs per second of a group of K
   ÷ epochs per second of a lone trial, taken from the store (groups of K and lone trials of the same model,
   options, dataset and kernel size on the same device, of the sweep's kind: GPU or CPU), else from the
   ``fused`` table of ``launch/epoch_seconds.yaml`` (``benchmarks/gpu.py`` per card; GPU sweeps of paper-size
   models on the paper's datasets only, as 2).
c. **K × one trial's epoch**, said to be no fused timing: not a bound either way (fused K = 2 ran at 0.61×
   the trials per hour of one trial per GPU on an H100, K = 16 at 4.53×).

Trials that trained in groups are not counted in 1: their epochs are groups', not one trial's. With K = 1
nothing of this applies: every number is 1–3's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional

import yaml

from launch.spec import Cell, Sweep

MEASURED_FILE = Path(__file__).with_name("epoch_seconds.yaml")
PAPER_DATASETS = ("cifar100", "div2k")
"""The datasets whose shapes the benchmark and the paper timed (CIFAR-100 32×32 images, DIV2K 64×64 patches)."""
NO_TIMING = "no timing yet"
EARLIER_GROUPS = "earlier groups"
"""How a group's epoch measured in the store is named (``group_seconds_per_epoch``): its source starts with it."""


@dataclass(frozen=True)
class StoreTiming:
    """Epoch times of the store's earlier trials: median seconds per epoch and trial count, by (model, options,
    dataset, kernel size) and by (model, options, dataset); the devices they ran on. Lone trials only; the
    members of fused groups in ``groups_by_kernel`` and ``groups_by_model`` (the same keys, then the group
    size), and ``fused``: per (model, group size, device), the speedups measured on that device (member-epochs
    per second of a group ÷ epochs per second of a lone trial, one per key of ``by_kernel`` timed both ways)."""

    by_kernel: dict = field(default_factory=dict)
    by_model: dict = field(default_factory=dict)
    groups_by_kernel: dict = field(default_factory=dict)
    groups_by_model: dict = field(default_factory=dict)
    fused: dict = field(default_factory=dict)


@lru_cache(maxsize=1)
def measured_table() -> list[dict]:
    """The shipped benchmark results: one entry per card, ``seconds[model][kernel] = [standard, weighted]``, and
    where measured ``fused[model][kernel][K]``: a fused group of K's speedup over one trial per GPU."""
    return yaml.safe_load(MEASURED_FILE.read_text())


def store_timing(store) -> StoreTiming:
    """What the store's trials say about epoch times (see the module docstring)."""
    trials = store.trials()
    if trials.empty:
        return StoreTiming()
    # A fused group's size: the trials sharing its group_id in its sweep, timed or not; 0: a lone trial (no group_id,
    # which groupby leaves out).
    sizes = trials.groupby(["sweep", "group_id"]).size()
    trials = trials.assign(group_size=[int(sizes.get((sweep, group), 0))
                                       for sweep, group in zip(trials["sweep"], trials["group_id"])])
    trials = trials[(trials["epochs_run"].fillna(0) > 0) & trials["wall_time_s"].notna()]
    sweeps = store.sweeps()
    specs = {name: spec for name, spec in zip(sweeps["name"], sweeps["spec"]) if isinstance(spec, dict)}
    lone: dict[tuple, list[tuple[float, str]]] = {}
    members: dict[tuple, list[tuple[float, str]]] = {}
    for row in trials.to_dict("records"):
        spec = specs.get(row["sweep"])
        if spec is None or row.get("kernel_size") is None or row["kernel_size"] != row["kernel_size"]:
            continue  # not a sweep's trial, or no kernel size (NaN)
        options = next((m.get("options") or {} for m in spec.get("models", [])
                        if isinstance(m, dict) and m.get("name") == row["model"]), {})
        key = (row["model"], _options_key(options), (spec.get("dataset") or {}).get("name"))
        sample = (float(row["wall_time_s"]) / float(row["epochs_run"]), str(row.get("device") or "?"))
        size = int(row["group_size"])
        if not size:
            lone.setdefault((*key, int(row["kernel_size"])), []).append(sample)
            lone.setdefault(key, []).append(sample)
        else:  # a member: its epoch is its group's (a group of one is no lone trial either: it ran fused)
            members.setdefault((*key, int(row["kernel_size"]), size), []).append(sample)
            members.setdefault((*key, size), []).append(sample)
    by_kernel, by_model, groups_by_kernel, groups_by_model = {}, {}, {}, {}
    for key, samples in lone.items():
        (by_kernel if len(key) == 4 else by_model)[key] = _median(samples)
    for key, samples in members.items():
        (groups_by_kernel if len(key) == 5 else groups_by_model)[key] = _median(samples)
    fused: dict[tuple, list[float]] = {}
    for key, samples in members.items():  # the same model, options, dataset and kernel size on the same device
        if len(key) != 5:
            continue
        *lone_key, size = key
        for device in sorted({d for _, d in samples}):
            alone = [s for s, d in lone.get(tuple(lone_key), []) if d == device]
            if alone:  # a group's member-epochs per second ÷ a lone trial's epochs per second
                group = [s for s, d in samples if d == device]
                fused.setdefault((key[0], size, device), []).append(size * _middle(alone) / _middle(group))
    return StoreTiming(by_kernel, by_model, groups_by_kernel, groups_by_model, fused)


def read_store_timing(url: str) -> StoreTiming:
    """``store_timing`` of the store at ``url``, opened read-only; nothing there yet is no timing."""
    from analysis.store import NoResults, Store

    try:
        with Store(url, create=False) as store:
            return store_timing(store)
    except NoResults:
        return StoreTiming()


def _median(samples: list[tuple[float, str]]) -> tuple[float, int, list[str]]:
    return _middle([s for s, _ in samples]), len(samples), sorted({d for _, d in samples})


def _middle(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _options_key(options: dict) -> str:
    return json.dumps(options, sort_keys=True, default=str)


def seconds_per_epoch(sweep: Sweep, cell: Cell, timing: StoreTiming) -> tuple[Optional[float], str]:
    """Seconds per epoch of ``cell``'s trials and where the number comes from (module docstring)."""
    key = (cell.model, _options_key(cell.model_options), sweep.dataset.name)
    found = timing.by_kernel.get((*key, cell.kernel_size))
    at = "" if found is not None else ", other kernel sizes"
    found = found or timing.by_model.get(key)
    if found is not None:
        seconds, n, devices = found
        return seconds, f"earlier trials ({n}, {', '.join(devices)}{at})"
    if not sweep.resources.gpus_per_trial or sweep.dataset.name not in PAPER_DATASETS or cell.model_options:
        return None, NO_TIMING
    for entry in measured_table():
        pair = (entry.get("seconds") or {}).get(cell.model, {}).get(cell.kernel_size)
        if pair is not None:
            return float(pair[1]), f"benchmarks/gpu.py, {entry['card']}"
    from launch.cell import PAPER_SECONDS_PER_EPOCH

    paper = PAPER_SECONDS_PER_EPOCH.get((cell.model, cell.kernel_size))
    if paper is None and cell.kernel_size == 3:
        paper = PAPER_SECONDS_PER_EPOCH.get(cell.model)  # Table 4 is 3×3
    return (float(paper), "paper, A100") if paper is not None else (None, NO_TIMING)


# -- fused groups (resources.group_size > 1) ---------------------------------------------------------------


@dataclass(frozen=True)
class CellGroups:
    """A cell's fused groups: ``sizes``, members per group (the baseline's group first, the last one smaller);
    ``worst``: group-epochs with every group to the full budget; ``expected``: under ASHA, each group as long
    as its longest member (``launch.cell.expected_epochs``), the baseline's group the full budget."""

    sizes: tuple[int, ...]
    worst: int
    expected: float

    def shown(self) -> str:
        return "+".join(map(str, self.sizes))


def groups_word(n: int) -> str:
    """"1 group", "5 groups"."""
    return f"{n} group{'s' if n != 1 else ''}"


def cell_groups(sweep: Sweep) -> CellGroups:
    """The groups of one cell of ``sweep`` and their group-epochs (``resources.group_size`` 1: one per trial)."""
    from launch.cell import expected_epochs, trials_per_cell

    k, n, epochs = sweep.resources.group_size, trials_per_cell(sweep), sweep.training_config().epochs
    alone = k > 1 and sweep.training_config().learnable_alpha  # the baseline trains alone (launch/search.py)
    rest = n - 1 if alone else n
    sizes = (1,) * alone + (k,) * (rest // k) + ((rest % k,) if rest % k else ())
    # The baseline α = 1 is member 0 of the cell's first group (wconv.fused), or alone: it runs the full budget.
    expected = epochs + sum(expected_epochs(sweep, size) for size in sizes[1:])
    return CellGroups(sizes, len(sizes) * epochs, expected)


def group_seconds_per_epoch(sweep: Sweep, cell: Cell, timing: StoreTiming,
                            size: Optional[int] = None) -> tuple[Optional[float], str]:
    """Seconds per epoch of a fused group of ``size`` (default ``resources.group_size``) of ``cell``'s trials and
    where the number comes from (module docstring, a–c); for size 1, ``seconds_per_epoch``'s."""
    size = sweep.resources.group_size if size is None else size
    if size == 1:
        return seconds_per_epoch(sweep, cell, timing)
    key = (cell.model, _options_key(cell.model_options), sweep.dataset.name)
    found = timing.groups_by_kernel.get((*key, cell.kernel_size, size))
    at = "" if found is not None else ", other kernel sizes"
    found = found or timing.groups_by_model.get((*key, size))
    if found is not None:
        seconds, n, devices = found
        return seconds, f"{EARLIER_GROUPS} of {size} ({n} members, {', '.join(devices)}{at})"
    one, source = seconds_per_epoch(sweep, cell, timing)
    if one is None:
        return None, NO_TIMING
    speedup, measured = fused_speedup(sweep, cell, timing, size)
    if speedup is None:
        return size * one, f"{source}; no fused timing: {size} × one trial's epoch"
    return size * one / speedup, f"{source}; × {size} ÷ fused {speedup:.2f}× ({measured})"


def fused_speedup(sweep: Sweep, cell: Cell, timing: StoreTiming, size: int) -> tuple[Optional[float], str]:
    """A fused group of ``size``'s member-epochs per second ÷ one trial's epochs per second for ``cell``'s model,
    and where it was measured: the store's groups and lone trials on devices of the sweep's kind (GPU or CPU),
    else the shipped ``fused`` table (a GPU sweep of a paper-size model on the paper's datasets); None: not
    measured."""
    on_gpus = bool(sweep.resources.gpus_per_trial)
    found = sorted((ratio, device) for (model, k, device), ratios in timing.fused.items()
                   if model == cell.model and k == size and (device != "cpu") == on_gpus for ratio in ratios)
    if found:
        speedup, n, devices = _median(found)
        return speedup, f"earlier groups of {size} and lone trials, {', '.join(devices)}"
    if not on_gpus or sweep.dataset.name not in PAPER_DATASETS or cell.model_options:
        return None, NO_TIMING
    for entry in measured_table():
        speedup = (((entry.get("fused") or {}).get(cell.model) or {}).get(cell.kernel_size) or {}).get(size)
        if speedup is not None:
            return float(speedup), f"benchmarks/gpu.py, {entry['card']}"
    return None, NO_TIMING

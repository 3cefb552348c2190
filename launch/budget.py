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


@dataclass(frozen=True)
class StoreTiming:
    """Epoch times of the store's earlier trials: median seconds per epoch and trial count, by (model, options,
    dataset, kernel size) and by (model, options, dataset); the devices they ran on."""

    by_kernel: dict = field(default_factory=dict)
    by_model: dict = field(default_factory=dict)


@lru_cache(maxsize=1)
def measured_table() -> list[dict]:
    """The shipped benchmark results: one entry per card, ``seconds[model][kernel] = [standard, weighted]``."""
    return yaml.safe_load(MEASURED_FILE.read_text())


def store_timing(store) -> StoreTiming:
    """What the store's trials say about epoch times (see the module docstring)."""
    trials = store.trials()
    if trials.empty:
        return StoreTiming()
    trials = trials[(trials["epochs_run"].fillna(0) > 0) & trials["wall_time_s"].notna()]
    sweeps = store.sweeps()
    specs = {name: spec for name, spec in zip(sweeps["name"], sweeps["spec"]) if isinstance(spec, dict)}
    groups: dict[tuple, list[tuple[float, str]]] = {}
    for row in trials.to_dict("records"):
        spec = specs.get(row["sweep"])
        if spec is None or row.get("kernel_size") is None or row["kernel_size"] != row["kernel_size"]:
            continue  # not a sweep's trial, or no kernel size (NaN)
        options = next((m.get("options") or {} for m in spec.get("models", [])
                        if isinstance(m, dict) and m.get("name") == row["model"]), {})
        key = (row["model"], _options_key(options), (spec.get("dataset") or {}).get("name"))
        sample = (float(row["wall_time_s"]) / float(row["epochs_run"]), str(row.get("device") or "?"))
        groups.setdefault((*key, int(row["kernel_size"])), []).append(sample)
        groups.setdefault(key, []).append(sample)
    by_kernel, by_model = {}, {}
    for key, samples in groups.items():
        (by_kernel if len(key) == 4 else by_model)[key] = _median(samples)
    return StoreTiming(by_kernel, by_model)


def read_store_timing(url: str) -> StoreTiming:
    """``store_timing`` of the store at ``url``, opened read-only; nothing there yet is no timing."""
    from analysis.store import NoResults, Store

    try:
        with Store(url, create=False) as store:
            return store_timing(store)
    except NoResults:
        return StoreTiming()


def _median(samples: list[tuple[float, str]]) -> tuple[float, int, list[str]]:
    values = sorted(s for s, _ in samples)
    mid = len(values) // 2
    median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    return median, len(values), sorted({d for _, d in samples})


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

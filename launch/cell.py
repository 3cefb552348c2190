"""Cells and their trials, by name; and the one preparation every launcher makes before anything runs.

A cell (model × kernel size × seed, see ``launch/spec.py``) is one search: ``num_samples`` trials
proposed by Optuna plus the α = 1 baseline. This module names its trials and checks a sweep against
the results store; it imports neither Ray nor torch, so the CLI's quick commands stay quick.

**Sweep identity.** The store keeps the validated spec of every sweep and a hash of the fields that
decide its results (task, dataset, models, kernels, search, scheduler, training, seeds; not where the
data or the database live, the resources, the workers or the concurrency). Running a sweep whose spec
differs from the stored one under the same name is refused, listing the fields that differ.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from launch.spec import Cell, Sweep, detach_password
from wconv.status import Stage

DEFAULT_RUNS_DIR = Path("results/runs")
"""Where a sweep's runs go (Ray Tune experiments, checkpoints, Optuna journal, SLURM logs) unless told."""

BASELINE_ALPHA = 1.0

# Fields that do not change what a sweep computes: where things live, and how fast it runs.
_NOT_IDENTITY = {("name",), ("storage",), ("resources",), ("workers",), ("search", "max_concurrent"),
                 ("dataset", "root")}


class SweepChanged(Exception):
    """The sweep file differs from the sweep of the same name in the store; one line, with what to do."""


def baseline_alpha(cell: Cell) -> tuple[float, ...]:
    return tuple(BASELINE_ALPHA for _ in cell.ranges)


def is_baseline(alpha) -> bool:
    return all(float(a) == BASELINE_ALPHA for a in alpha)


def alpha_names(cell: Cell) -> list[str]:
    """The names of α's free coefficients in a trial's config (and in its Optuna study)."""
    return [f"alpha_{i + 1}" for i in range(len(cell.ranges))]


def alpha_of(config: dict, cell: Cell) -> tuple[float, ...]:
    return tuple(float(config[name]) for name in alpha_names(cell))


def trial_key(alpha, arm: str | None = None) -> str:
    """A trial's name within its cell: its α, exactly (and its arm, in a confirmation). No α runs twice in a
    cell, so the key names the same trial in every run and on every worker, and with it the trial's
    checkpoint folder."""
    key = "alpha=" + ",".join(repr(float(a)) for a in alpha)
    return key if arm is None else f"{arm}-{key}"


def group_key(alpha, arm: str | None = None) -> str:
    """A fused group's name within its cell, and its folder beside its members': named by its first member's
    trial key, which no other group of the cell can have."""
    return f"group-{trial_key(alpha, arm)}"


def group_id(cell: Cell, alpha, arm: str | None = None) -> str:
    """The store's id of the fused group whose first member is the trial of ``alpha`` (and ``arm``)."""
    return f"{cell.id}/{group_key(alpha, arm)}"


def trial_id(cell: Cell, alpha, arm: str | None = None) -> str:
    return f"{cell.id}/{trial_key(alpha, arm)}"


def key_of(config: dict, cell: Cell) -> str:
    """The store's trial id of a Tune trial's config."""
    return trial_id(cell, alpha_of(config, cell), config.get("arm"))


def trials_per_cell(sweep: Sweep) -> int:
    """Optuna's samples plus the α = 1 baseline."""
    return sweep.search.num_samples + 1


def epoch_budget(sweep: Sweep) -> int:
    return len(sweep.cells()) * trials_per_cell(sweep) * sweep.training_config().epochs


def cell_dir(runs_dir: Path | str, sweep: Sweep, cell: Cell) -> Path:
    """Where a cell's trials keep their checkpoints (``trials/<trial key>``)."""
    return Path(runs_dir) / sweep.name / cell.id


def record_fields(cell: Cell, alpha, arm: str | None = None) -> dict:
    """The store's description of a trial of ``cell``."""
    return {"cell": cell.id, "model": cell.model, "kernel_size": cell.kernel_size,
            "alpha": [float(a) for a in alpha], "seed": cell.seed,
            "baseline": is_baseline(alpha) and arm in (None, "baseline"), "arm": arm}


def trial_config(sweep: Sweep, cell: Cell, alpha, *, arm: str | None = None, **controls):
    """The ``wconv.train.TrialConfig`` of one trial (imports torch: call it where trials run).

    A search's baseline runs its full budget (``baseline=True``: no early stopping, never stopped by ASHA);
    a confirmation's arms (``arm``) all run the same protocol. ``controls``: a control arm's ``TrialConfig``
    field set to the chosen α (``analysis.arms.FIELDS``: ``init_scale``, ``init_shape``, ``lr_shape``)."""
    from wconv.train import TrialConfig

    baseline = is_baseline(alpha)
    extra = {k: tuple(float(a) for a in v) for k, v in controls.items() if v is not None}
    return TrialConfig(model=cell.model, dataset=sweep.dataset.name, kernel_size=cell.kernel_size,
                       alpha=None if baseline else tuple(float(a) for a in alpha), seed=cell.seed,
                       training=sweep.training_config(), model_options=cell.model_options,
                       dataset_root=sweep.dataset.root, dataset_options=dict(sweep.dataset.options),
                       baseline=baseline and arm is None, **extra)


# -- sweep identity --------------------------------------------------------------------------------


def identity(spec: dict) -> dict:
    """The part of a sweep's spec (``Sweep.model_dump(mode="json")``) that decides its results."""
    def strip(node: Any, path: tuple) -> Any:
        if isinstance(node, dict):
            return {k: strip(v, (*path, k)) for k, v in sorted(node.items(), key=lambda kv: str(kv[0]))
                    if (*path, k) not in _NOT_IDENTITY}
        return node

    return strip(json.loads(json.dumps(spec)), ())


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(identity(spec), sort_keys=True).encode()).hexdigest()


def changed_fields(old: dict, new: dict) -> list[str]:
    """Dotted paths where two identities differ, with the old and new values."""
    out = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                walk(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        elif a != b:
            out.append(f"{path} ({json.dumps(a)} → {json.dumps(b)})")

    walk(identity(old), identity(new), "")
    return out


def check_identity(store, sweep: Sweep) -> None:
    """Refuse a sweep whose spec differs from the one recorded under its name."""
    recorded = store.sweep(sweep.name)
    if recorded is None or not isinstance(recorded.get("spec"), dict):
        return
    new = sweep.model_dump(mode="json")
    if recorded.get("spec_hash") == spec_hash(new):
        return
    changes = changed_fields(recorded["spec"], new)
    if changes:
        shown = "; ".join(changes[:6]) + ("; …" if len(changes) > 6 else "")
        raise SweepChanged(f"sweep {sweep.name!r} in {store!r} was recorded with a different spec: {shown}; "
                           f"give the changed sweep a new name (e.g. --set name={sweep.name}-2), or run it "
                           f"against another database (--storage)")


# -- the preparation every launcher makes -----------------------------------------------------------


def prepare_sweep(sweep: Sweep, runs_dir: Path | str, *, record: bool = True,
                  check_data: bool = True) -> tuple[Sweep, Path]:
    """Everything that can be checked before a trial runs or a job is submitted, in this order:
    absolute paths (trials run in other working directories, on other nodes), the dataset, the results
    store (reachable, and this sweep's identity), then the sweep recorded in the store (``record=False``:
    nothing is written, not even a new database). A password in the storage URL leaves the sweep for this
    process's environment (``launch.spec.detach_password``).
    Returns the sweep with absolute paths and the absolute runs folder."""
    from analysis.store import NoResults, Store
    from wconv import data

    runs_dir = Path(runs_dir).expanduser().resolve()
    sweep = sweep.model_copy(update={"storage": _absolute_sqlite(detach_password(sweep.storage))})
    if sweep.dataset.root is not None:
        dataset = sweep.dataset.model_copy(update={"root": str(Path(sweep.dataset.root).expanduser().resolve())})
        sweep = sweep.model_copy(update={"dataset": dataset})
    if check_data:
        check = {"verify": sweep.dataset.options["verify"]} if "verify" in sweep.dataset.options else {}
        data.check(sweep.dataset.name, sweep.dataset.root, **check)
    try:
        with Store(sweep.storage, create=record) as store:
            check_identity(store, sweep)
            if record:
                spec = sweep.model_dump(mode="json")
                store.record_sweep(sweep.name, task=sweep.task, metric=sweep.metric, mode=sweep.mode, spec=spec,
                                   spec_hash=spec_hash(spec))
    except NoResults:
        pass  # not recorded, and nothing written: a dry run before the first submission
    return sweep, runs_dir


def _absolute_sqlite(url: str) -> str:
    """A SQLite URL with an absolute path: trials and array tasks run in other working directories."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:" \
            or parsed.database.startswith("file:"):
        return url
    path = Path(parsed.database).expanduser().resolve()
    return parsed.set(database=str(path)).render_as_string(hide_password=False)


def cell_finished(store, sweep: Sweep, cell: Cell, *, stage: str = Stage.SEARCH) -> bool:
    """A cell is finished when the store holds ``num_samples + 1`` terminal trials of it."""
    return store.terminal_counts(sweep.name, stage=stage).get(cell.id, 0) >= trials_per_cell(sweep)


# -- budgets -------------------------------------------------------------------------------------

PAPER_SECONDS_PER_EPOCH = {
    "resnet56": 215, "vgg16": 414, "nin": 115, "gmlp": 56, "gac_snn": 130,  # Table 4, weighted, A100
    ("dncnn", 3): 2.50, ("nafnet", 3): 2.10, ("cgnet", 3): 3.07,  # Table 6, weighted, A100
    ("dncnn", 5): 9.76, ("nafnet", 5): 9.11, ("cgnet", 5): 11.13,
}
"""The paper's measured seconds per epoch (Leonardo, one A100): a budget's estimate before any timing of ours."""


def asha_rungs(sweep: Sweep) -> list[int]:
    """Epochs at which ASHA compares trials: grace_period × reduction_factor^k below the budget."""
    if sweep.scheduler.type != "asha":
        return []
    rungs, t = [], float(sweep.scheduler.grace_period)
    while t < sweep.training_config().epochs:
        rungs.append(int(t))
        t *= sweep.scheduler.reduction_factor
    return rungs


def expected_epochs(sweep: Sweep, members: int = 1) -> float:
    """Epochs one sampled trial runs on average under ASHA, if 1/reduction_factor of the trials reaching a
    rung go on (ASHA's promotion rate; early stopping on patience would cut more). FIFO: the full budget.
    ``members`` > 1: a fused group of that many sampled trials, which runs as long as its longest member (each
    going on independently)."""
    epochs = sweep.training_config().epochs
    rungs = asha_rungs(sweep)
    if not rungs:
        return float(epochs)
    go_on = 1.0 / sweep.scheduler.reduction_factor
    expected, reach = float(rungs[0]), 1.0
    for k, rung in enumerate(rungs):
        reach *= go_on  # one trial's chance to go on past this rung; a group's: any member's
        share = reach if members == 1 else 1 - (1 - reach) ** members
        expected += share * ((rungs[k + 1] if k + 1 < len(rungs) else epochs) - rung)
    return expected


def cell_epochs(sweep: Sweep) -> tuple[int, float]:
    """(worst case, expected under ASHA) epochs of one cell: its sampled trials and its full-budget baseline."""
    epochs = sweep.training_config().epochs
    return trials_per_cell(sweep) * epochs, sweep.search.num_samples * expected_epochs(sweep) + epochs


def seconds_per_epoch(cell: Cell, measured: dict[str, float]) -> tuple[float | None, str]:
    """Seconds per epoch of a cell's model: measured earlier in this store, else the paper's A100 timing."""
    if cell.model in measured:
        return measured[cell.model], "earlier trials"
    paper = PAPER_SECONDS_PER_EPOCH.get(cell.model, PAPER_SECONDS_PER_EPOCH.get((cell.model, cell.kernel_size)))
    return (float(paper), "paper, A100") if paper is not None else (None, "no timing yet")

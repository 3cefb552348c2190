"""Run a sweep on a Ray local cluster (a laptop, a workstation, one GPU node, or the cluster in RAY_ADDRESS).

Cells run one after another; the trials of a cell run concurrently on every free slot. Running
the same sweep again resumes it from the results store: finished cells are skipped, an interrupted
cell keeps its finished trials and continues its unfinished ones from their last per-epoch checkpoint.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, TextIO

from ray import tune

from analysis.store import TERMINAL
from launch.search import alpha_of, check_resources, run_cell, start_ray, trial_key, trials_per_cell
from launch.spec import Cell, Sweep


def _record_fields(sweep: Sweep, cell: Cell, alpha: tuple[float, ...]) -> dict:
    baseline = all(a == 1.0 for a in alpha)
    return {"cell": cell.id, "model": cell.model, "kernel_size": cell.kernel_size, "alpha": list(alpha),
            "alpha_1": alpha[0] if alpha else None, "alpha_2": alpha[1] if len(alpha) > 1 else None,
            "seed": cell.seed, "baseline": baseline}


def _trial_id(cell: Cell, trial) -> str:
    return f"{cell.id}/{trial_key(alpha_of(trial.config, cell))}"


class StoreCallback(tune.Callback):
    """Tune callback, run in the driver, that writes every trial to the results store and prints progress."""

    def __init__(self, sweep: Sweep, cell: Cell, position: str, out: TextIO = sys.stdout, finished: int = 0):
        self.sweep, self.cell, self.position, self.out = sweep, cell, position, out
        self.finished = finished  # trials finished in earlier runs of the cell
        self.store = None

    def __getstate__(self):
        # Tune pickles callbacks with the experiment state; the engine and stream are not picklable.
        return {k: v for k, v in self.__dict__.items() if k not in ("store", "out")}

    def __setstate__(self, state):
        self.__dict__.update(state, store=None, out=sys.stdout)

    def _store(self):
        from analysis.store import Store

        if self.store is None:
            self.store = Store(self.sweep.storage)
        return self.store

    def _record(self, trial, **fields):
        alpha = alpha_of(trial.config, self.cell)
        self._store().record_trial(self.sweep.name, _trial_id(self.cell, trial),
                                   **_record_fields(self.sweep, self.cell, alpha), **fields)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._record(trial, status="running", started_at=datetime.now(timezone.utc))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        trial_id = _trial_id(self.cell, trial)
        for metrics in [*result.get("replay", []), result]:  # replay: epochs reported before a restart
            self._store().record_epoch(self.sweep.name, trial_id, int(metrics["epoch"]), _epoch_metrics(metrics))
        if not result.get("finished"):
            self._record(trial, status="running", epochs_run=int(result["epoch"]), host=result.get("host"),
                         device=result.get("device"), wall_time_s=result.get("wall_time_s"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if last.get("finished"):
            self._record(trial, status=last["trial_status"], reason=last["reason"], metrics=last["final"],
                         metric_settings=last.get("metric_settings"), epochs_run=int(last["epoch"]),
                         wall_time_s=last.get("wall_time_s"), host=last.get("host"), device=last.get("device"))
        else:
            epochs = int(last.get("epoch", 0))
            partial = {k: v for k, v in last.items() if k.startswith("val_")}
            self._record(trial, status="stopped", reason=f"stopped by ASHA after {epochs} epoch(s)",
                         metrics=partial, epochs_run=epochs, wall_time_s=last.get("wall_time_s"))
        self._progress(trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, status="failed", reason=_error_line(trial))
        self._progress(trials, trial)

    def _progress(self, trials, just_done):
        # Tune calls back before it marks ``just_done`` terminated.
        sweep = self.sweep
        done = [t for t in trials if t.status in ("TERMINATED", "ERROR") or t is just_done]
        n_done = self.finished + len(done)
        best, best_alpha = None, None
        for t in done:
            last = t.last_result or {}
            value = (last.get("final") or {}).get(sweep.metric) if last.get("finished") else None
            if value is not None and not last.get("baseline") and (
                    best is None or (value > best if sweep.mode == "max" else value < best)):
                best, best_alpha = value, alpha_of(t.config, self.cell)
        shown = f"best {sweep.metric} {best:.4g} at α=({_fmt_alpha(best_alpha)})" if best is not None else "no best yet"
        print(f"[{self.position} {self.cell.id}] trials {n_done}/{trials_per_cell(sweep)} done · {shown}",
              file=self.out, flush=True)


def _epoch_metrics(result: dict) -> dict:
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and (k.startswith(("val_", "train_")) or k in ("lr", "wall_time_s"))}


def _fmt_alpha(alpha) -> str:
    return ", ".join(f"{a:.3f}" for a in alpha) if alpha else "-"


def _error_line(trial) -> str:
    text = getattr(trial, "error_msg", None) or ""
    if not text and getattr(trial, "error_file", None):
        try:
            text = Path(trial.error_file).read_text()
        except OSError:
            text = ""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "the trial raised an error (see Ray's logs)"


def cell_finished(store, sweep: Sweep, cell: Cell) -> bool:
    trials = store.trials(sweep=sweep.name)
    if trials.empty:
        return False
    mine = trials[trials["cell"] == cell.id]
    return len(mine) >= trials_per_cell(sweep) and mine["status"].isin(TERMINAL).all()


def run_sweep(sweep: Sweep, runs_dir: Path | str = "results/runs", out: TextIO = sys.stdout,
              num_cpus: Optional[int] = None) -> None:
    """Run every unfinished cell of ``sweep``; say so and do nothing when all are finished."""
    from analysis.store import Store
    from wconv import data

    runs_dir = Path(runs_dir)
    if sweep.dataset.root is not None:  # Tune runs trials in their own working directories
        dataset = sweep.dataset.model_copy(update={"root": str(Path(sweep.dataset.root).expanduser().resolve())})
        sweep = sweep.model_copy(update={"dataset": dataset})
    data.check(sweep.dataset.name, sweep.dataset.root, **_check_options(sweep))  # fails here, not in a worker
    store = Store(sweep.storage)
    cells = sweep.cells()
    todo = [c for c in cells if not cell_finished(store, sweep, c)]
    if not todo:
        print(f"sweep {sweep.name!r} is finished: {len(cells)} cell(s), {len(cells) * trials_per_cell(sweep)} "
              f"trials in {sweep.storage}; nothing to do (see `wconv best --sweep {sweep.name}`)", file=out)
        return
    start_ray(num_cpus)
    check_resources(sweep)
    store.record_sweep(sweep.name, task=sweep.task, metric=sweep.metric, mode=sweep.mode,
                       spec=sweep.model_dump(mode="json"))
    started = time.time()
    for i, cell in enumerate(cells, 1):
        if cell not in todo:
            print(f"[cell {i}/{len(cells)} {cell.id}] finished earlier, skipped", file=out, flush=True)
            continue
        recorded = _recorded(store, sweep, cell)
        finished = sum(t["status"] in TERMINAL for t in recorded)
        print(f"[cell {i}/{len(cells)} {cell.id}] {trials_per_cell(sweep)} trials "
              f"({sweep.search.num_samples} sampled + α = 1 baseline), α ranges {list(cell.ranges)}"
              + (f"; resuming: {finished} finished earlier, {len(recorded) - finished} to continue" if recorded else ""),
              file=out, flush=True)
        run_cell(sweep, cell, runs_dir, [StoreCallback(sweep, cell, f"cell {i}/{len(cells)}", out, finished)],
                 recorded)
    print(f"sweep {sweep.name!r} done in {time.time() - started:.0f} s; results in {sweep.storage}", file=out)


def _check_options(sweep: Sweep) -> dict:
    return {"verify": sweep.dataset.options["verify"]} if "verify" in sweep.dataset.options else {}


def _recorded(store, sweep: Sweep, cell: Cell) -> list[dict]:
    """The cell's trials in the store, stopped ones with their per-epoch curve of the sweep's metric."""
    trials = store.trials(sweep=sweep.name)
    if trials.empty:
        return []
    out = []
    for t in trials[trials["cell"] == cell.id].to_dict("records"):
        if t["status"] == "stopped":
            epochs = store.epochs(sweep.name, t["trial_id"])
            t["curve"] = {int(e): m[sweep.metric] for e, m in zip(epochs["epoch"], epochs["metrics"])
                          if sweep.metric in m}
        out.append(t)
    return out

"""Run a sweep on a Ray local cluster (a laptop, a workstation, one GPU node, or the cluster in RAY_ADDRESS).

The local launcher runs its tasks in this process, cells one after another; the trials of a cell run
concurrently on every free slot. It takes the lease of every cell it will run before anything starts,
so a second ``wconv run`` of the same sweep is refused at once. Running the same sweep again resumes it
from the results store (see ``launch/search.py``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, TextIO

from analysis.store import Store
from launch.cell import DEFAULT_RUNS_DIR, cell_finished, prepare_sweep, trials_per_cell
from launch.launcher import Task, plan_tasks
from launch.lease import LeaseKeeper
from launch.spec import Sweep
from wconv.status import TERMINAL, Stage


@dataclass
class LocalHandle:
    job_id: str
    task: Task
    finished: Optional[bool] = None

    def state(self) -> str:
        return {None: "PENDING", True: "COMPLETED", False: "INCOMPLETE"}[self.finished]


class LocalLauncher:
    """Runs tasks in this process; ``submit`` returns when they are done."""

    def __init__(self, out: TextIO = sys.stdout, num_cpus: Optional[int] = None, callbacks: Sequence = ()):
        self.out, self.num_cpus, self.callbacks = out, num_cpus, callbacks

    def submit(self, sweep: Sweep, tasks: Sequence[Task]) -> list[LocalHandle]:
        from launch.runner import run_task, stop_ray  # Ray and torch: only when something runs here
        handles = [LocalHandle(f"local-{i}", t) for i, t in enumerate(tasks)]
        try:
            with LeaseKeeper(sweep.storage, sweep.name) as leases:
                for task in tasks:  # every lease before anything runs: a second run is refused at once
                    leases.take(task.cell.id, task.worker)
                cells = list(dict.fromkeys(t.cell.id for t in tasks))
                for handle in handles:
                    position = f"cell {cells.index(handle.task.cell.id) + 1}/{len(cells)}"
                    self._announce(sweep, handle.task, position)
                    handle.finished = run_task(handle.task, leases=leases, position=position, out=self.out,
                                               num_cpus=self.num_cpus, callbacks=self.callbacks)
        finally:
            stop_ray()  # one Ray cluster for all the tasks; its temp dir goes with it
        return handles

    def _announce(self, sweep: Sweep, task: Task, position: str) -> None:
        with Store(sweep.storage) as store:
            rows = store.trials(sweep=sweep.name, cell=task.cell.id, stage=Stage.SEARCH if task.plan is None else Stage.CONFIRM)
        finished = int(rows["status"].isin(TERMINAL).sum()) if not rows.empty else 0
        what = (f"{trials_per_cell(sweep)} trials ({sweep.search.num_samples} sampled + α = 1 baseline), α ranges "
                f"{[list(r) for r in task.cell.ranges]}" if task.plan is None else
                f"confirmation: {', '.join(p['arm'] for p in task.plan)} on seed {task.cell.seed}")
        if sweep.resources.group_size > 1:
            what += f", fused in groups of up to {sweep.resources.group_size}"
        print(f"[{position} {task.cell.id}] {what}"
              + (f"; resuming: {finished} finished earlier, {len(rows) - finished} to continue" if len(rows) else ""),
              file=self.out, flush=True)

    def status(self, handles: Sequence[LocalHandle]) -> list[str]:
        return [h.state() for h in handles]

    def cancel(self, handles: Sequence[LocalHandle]) -> None:
        """Nothing to cancel: a local run is interrupted with Ctrl-C, and resumes when run again."""


def run_sweep(sweep: Sweep, runs_dir: Path | str = DEFAULT_RUNS_DIR, out: TextIO = sys.stdout,
              num_cpus: Optional[int] = None, callbacks: Sequence = ()) -> None:
    """Run every unfinished cell of ``sweep``; say so and do nothing when all are finished."""
    from launch.runner import allocation, check_allocation

    check_allocation(sweep, allocation(num_cpus))
    sweep, runs_dir = prepare_sweep(sweep, runs_dir)
    cells = sweep.cells()
    with Store(sweep.storage) as store:
        todo = [c for c in cells if not cell_finished(store, sweep, c)]
    if not todo:
        print(f"sweep {sweep.name!r} is finished: {len(cells)} cell(s), {len(cells) * trials_per_cell(sweep)} "
              f"trials in {sweep.storage}; nothing to do (see `wconv best --sweep {sweep.name}`)", file=out)
        return
    for i, cell in enumerate(cells, 1):
        if cell not in todo:
            print(f"[cell {i}/{len(cells)} {cell.id}] finished earlier, skipped", file=out, flush=True)
    started = time.time()
    tasks = [t for t in plan_tasks(sweep, runs_dir, workers=1) if t.cell in todo]
    handles = LocalLauncher(out, num_cpus, callbacks).submit(sweep, tasks)
    unfinished = [h.task.cell.id for h in handles if not h.finished]
    if unfinished:
        print(f"sweep {sweep.name!r}: cell(s) {', '.join(unfinished)} still have trials held by another runner; "
              f"run the same command again later to finish them", file=out)
        return
    print(f"sweep {sweep.name!r} done in {time.time() - started:.0f} s; results in {sweep.storage}", file=out)

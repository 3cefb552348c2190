"""Confirmation on paired seeds: does the α a search picked beat α = 1 on seeds it never saw?

A search picks the α that did best on its own seed and data, so its gain is biased upward (on the bundled
digits, +0.45 points on the picking seed, +0.05 on others). ``wconv confirm`` retrains, for each (model,
kernel size), the chosen α and α = 1 on N fresh seeds — the same seed fixes the initial weights and the
data order of both arms, so the runs pair up — and ``analysis.query.confirmation`` turns them into a
verdict (paired difference, bootstrap CI, paired test). ``--control init-scale`` adds a third arm: α = 1
with each would-be-weighted conv's initial weights scaled by √mean(Φ²) of the chosen α, to tell how much
of a gain the density's scale at initialisation explains.

Confirmation trials live in the sweep's store with ``stage='confirm'`` and an ``arm``; each (model,
kernel size, seed) is a cell of its own with fixed trials (``PlannedSearch``), run by the same launchers
as the search, so a killed confirmation resumes like a sweep.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence, TextIO

from launch.cell import baseline_alpha, prepare_sweep
from launch.launcher import SubmitError, Task
from launch.spec import Cell, Sweep

ARMS = ("baseline", "alpha")
CONTROL = "init-scale"
FIRST_SEED = 1000


def fresh_seeds(sweep: Sweep, n: int) -> list[int]:
    """N seeds no search cell used, always the same ones: a confirmation run again continues, and
    ``--seeds`` raised later adds seeds."""
    seeds, seed = [], FIRST_SEED
    while len(seeds) < n:
        if seed not in sweep.seeds:
            seeds.append(seed)
        seed += 1
    return seeds


def chosen_alphas(sweep: Sweep, alpha: Optional[Sequence[float]]) -> dict[tuple[str, int], tuple[float, ...]]:
    """The α to confirm per (model, kernel size): ``alpha`` if given, else the search's best across seeds."""
    from analysis.query import best_alpha
    from analysis.store import NoResults

    pairs = {(m.name, k): len(r) for m in sweep.models for k, r in sweep.kernels.items()}
    if alpha is not None:
        out = {}
        for (model, kernel), n in pairs.items():
            if len(alpha) != n:
                raise SubmitError(f"--alpha has {len(alpha)} coefficient(s) but kernel {kernel} needs {n}; "
                                  "give one per free coefficient, outer edge inward (e.g. --alpha 0.1,0.9 for 5×5)")
            out[(model, kernel)] = tuple(float(a) for a in alpha)
        return out
    try:
        table = best_alpha(sweep.storage, sweep=sweep.name, by="model")
    except NoResults:
        table = None
    best = {} if table is None else {(r["model"], int(r["kernel_size"])): r["best_alpha"]
                                     for _, r in table.iterrows() if r["best_alpha"] is not None}
    missing = [f"{m} {k}×{k}" for (m, k) in pairs if (m, k) not in best]
    if missing:
        raise SubmitError(f"no α to confirm for {', '.join(missing)}: the search of sweep {sweep.name!r} has no "
                          f"completed trial there; run the sweep first (wconv run) or give --alpha")
    return {pair: tuple(float(a) for a in best[pair]) for pair in pairs}


def plan_confirmation(sweep: Sweep, runs_dir: Path | str, chosen: dict, seeds: Sequence[int],
                      control: bool = False) -> list[Task]:
    """One task per (model, kernel size, seed), each a cell with the arms as its fixed trials."""
    tasks = []
    for model in sweep.models:
        for kernel, ranges in sorted(sweep.kernels.items()):
            alpha = chosen[(model.name, kernel)]
            for seed in seeds:
                cell = Cell(sweep.name, model.name, dict(model.options), kernel, tuple(map(tuple, ranges)), seed)
                one = baseline_alpha(cell)
                plan = [{"arm": "baseline", "alpha": one}, {"arm": "alpha", "alpha": alpha}]
                if control:
                    plan.append({"arm": CONTROL, "alpha": one, "init_scale": alpha})
                tasks.append(Task(sweep, cell, 0, str(runs_dir), plan=tuple(plan)))
    return tasks


def confirm_sweep(sweep: Sweep, runs_dir: Path | str, seeds: int, *, alpha: Optional[Sequence[float]] = None,
                  control: Optional[str] = None, launcher=None, out: TextIO = sys.stdout) -> None:
    """Plan and run (locally, or through ``launcher``) the confirmation of every (model, kernel size)."""
    from analysis.store import Store
    from launch.local import LocalLauncher

    with Store(sweep.storage, create=False) as store:
        if store.sweep(sweep.name) is None:
            raise SubmitError(f"sweep {sweep.name!r} is not in {store!r}: run its search first (wconv run)")
    sweep, runs_dir = prepare_sweep(sweep, runs_dir)
    chosen = chosen_alphas(sweep, alpha)
    tasks = plan_confirmation(sweep, runs_dir, chosen, fresh_seeds(sweep, seeds), control == CONTROL)
    for (model, kernel), a in chosen.items():
        print(f"confirming {model} {kernel}×{kernel}: α = ({', '.join(f'{x:.3f}' for x in a)}) against α = 1"
              + (" and the init-scale control" if control else "") + f" on seeds {fresh_seeds(sweep, seeds)}",
              file=out)
    handles = (launcher or LocalLauncher(out)).submit(sweep, tasks)
    if launcher is not None:
        print(f"submitted array job {handles[0].job_id.split('_')[0]}: {len(tasks)} task(s); run `wconv best "
              f"--sweep {sweep.name} --by model` when it is done", file=out)
        return
    print_verdicts(sweep, out)


def print_verdicts(sweep: Sweep, out: TextIO = sys.stdout) -> None:
    from analysis.query import best_alpha, format_table

    table = best_alpha(sweep.storage, sweep=sweep.name, by="model")
    print(format_table(table, "table"), file=out, end="")

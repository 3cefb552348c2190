"""Confirmation on paired seeds: does the α a search picked beat α = 1 on seeds it never saw?

A search picks the α that did best on its own seed and data, so its gain is biased upward (on the bundled
digits, +0.45 points on the picking seed, +0.05 on others). ``wconv confirm`` retrains, for each (model,
kernel size), the chosen α and α = 1 on N fresh seeds — the same seed fixes the initial weights and the
data order of both arms, so the runs pair up — and ``analysis.query.confirmation`` turns them into a
verdict (paired difference, bootstrap CI, paired test). ``--control init-scale,init-shape,lr-shape`` adds
control arms (any of them, ``analysis.arms``), each α = 1 with one part of the chosen α's density: its scale
at initialisation (√mean(Φ²)), its shape at initialisation (Φ ∘ W₀) or its per-position learning rate
(Φ² on the SGD gradient, Φ on the Adam step), to tell which part carries a gain. Under SGD init-shape and
lr-shape together are the weighted conv exactly (``wconv.conv.LRShape``).

The sweep is named by its file, or by its name when the store holds it: every search records its validated
spec, so ``wconv run sweeps/smoke.yaml`` followed by ``wconv confirm smoke --seeds 5`` confirms that sweep
(``find_sweep``).

A (model, kernel size) whose search found no α better than α = 1 has nothing to confirm: it is left out, said
so, unless ``--alpha`` names the α to confirm.

Confirmation trials live in the sweep's store with ``stage='confirm'`` and an ``arm``; each (model,
kernel size, seed) is a cell of its own with fixed trials (``PlannedSearch``), run by the same launchers
as the search, so a killed confirmation resumes like a sweep.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional, Sequence, TextIO

from analysis.arms import CONTROLS, FIELDS, Arm
from launch.cell import baseline_alpha, prepare_sweep
from launch.launcher import SubmitError, Task
from launch.spec import Cell, Sweep

FIRST_SEED = 1000


def find_sweep(given: str, overrides: Sequence[str] = (), storage: Optional[str] = None) -> Sweep:
    """The sweep to confirm, named as ``wconv run`` took it (a sweep file) or as ``best`` and ``report`` take it
    (a name): a path that exists, or that does not look like a sweep name, is read as a sweep file; a name is
    looked up in the results store (``storage``, else the default), whose recorded spec — validated when the
    search ran — is validated again, ``--set`` overrides applied. The sweep's storage is the store given."""
    from analysis.store import DEFAULT_URL, Store
    from launch.spec import apply_overrides, load_sweep, parse_sweep

    if Path(given).exists() or not re.fullmatch(r"[A-Za-z0-9_.-]+", given) or given.endswith((".yaml", ".yml")):
        sweep = load_sweep(given, list(overrides))
        return sweep.model_copy(update={"storage": storage}) if storage else sweep
    with Store(storage or DEFAULT_URL, create=False) as store:
        recorded = store.sweep(given)
        if recorded is None or not isinstance(recorded.get("spec"), dict):
            known = [n for n, spec in zip(store.sweeps()["name"], store.sweeps()["spec"]) if isinstance(spec, dict)]
            raise SubmitError(f"{given!r} is neither a sweep file nor a sweep recorded in {_masked(store)}; "
                              f"the sweeps it records: {', '.join(known) or 'none yet'}; give a sweep file or one of "
                              "those names")
        url = store.url
    where = f"sweep {given!r} recorded in {_masked(url)}"
    spec = dict(recorded["spec"])
    spec["kernels"] = {int(k): v for k, v in (spec.get("kernels") or {}).items()}  # JSON keeps keys as text
    spec["storage"] = url
    return parse_sweep(apply_overrides(spec, list(overrides), where), where)


def _masked(store) -> str:
    from analysis.store import masked_url

    return masked_url(store if isinstance(store, str) else store.url)


def fresh_seeds(sweep: Sweep, n: int) -> list[int]:
    """N seeds no search cell used, always the same ones: a confirmation run again continues, and
    ``--seeds`` raised later adds seeds."""
    seeds, seed = [], FIRST_SEED
    while len(seeds) < n:
        if seed not in sweep.seeds:
            seeds.append(seed)
        seed += 1
    return seeds


def chosen_alphas(sweep: Sweep, alpha: Optional[Sequence[float]], out: TextIO = sys.stdout,
                  ) -> dict[tuple[str, int], tuple[float, ...]]:
    """The α to confirm per (model, kernel size): ``alpha`` if given, else the search's best across seeds
    (left out where it is α = 1: no α beat it)."""
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
    rows = {} if table is None else {(r["model"], int(r["kernel_size"])): r for _, r in table.iterrows()}
    best = {pair: r["best_alpha"] for pair, r in rows.items() if r["best_alpha"] is not None}
    missing = [f"{m} {k}×{k}" for (m, k) in pairs if (m, k) not in best]
    if missing:
        raise SubmitError(f"no α to confirm for {', '.join(missing)}: the search of sweep {sweep.name!r} has no "
                          f"completed trial there; run the sweep first (wconv run) or give --alpha")
    beaten = [pair for pair in pairs if rows[pair]["beats_baseline"] is False]
    if len(beaten) == len(pairs):
        raise SubmitError(f"nothing to confirm in sweep {sweep.name!r}: its search found no α better than α = 1 "
                          f"({', '.join(f'{m} {k}×{k}' for m, k in beaten)}); give --alpha to confirm one anyway")
    for model, kernel in beaten:
        print(f"not confirming {model} {kernel}×{kernel}: {rows[(model, kernel)]['note']}; give --alpha to confirm "
              "an α there anyway", file=out)
    return {pair: tuple(float(a) for a in best[pair]) for pair in pairs if pair not in beaten}


def check_controls(sweep: Sweep, controls: Sequence[Arm]) -> None:
    """SubmitError unless every control can run on every (model, kernel size) of ``sweep``: a control needs
    convs the density would weight (checked on the meta device: nothing allocated), and lr-shape an
    optimiser its derivation covers (``wconv.conv.lr_shape_problem``)."""
    if not controls:
        return
    import torch

    from wconv import models
    from wconv.conv import lr_shape_problem, weightable

    tc = sweep.training_config()
    problem = Arm.LR_SHAPE in controls and lr_shape_problem(tc.optimizer, tc.weight_decay, tc.learnable_alpha)
    if problem:
        others = [c for c in CONTROLS if c != Arm.LR_SHAPE]
        raise SubmitError(f"--control {problem} (sweep {sweep.name!r}, training.optimizer {tc.optimizer}); the "
                          f"controls that can run here: {', '.join(others)}")
    found, empty = [], []
    for model in sweep.models:
        for kernel in sorted(sweep.kernels):
            with torch.device("meta"):
                net = models.build(model.name, kernel_size=kernel, **dict(model.options))
            (found if weightable(net, kernel) else empty).append(f"{model.name} {kernel}×{kernel}")
    if empty:
        raise SubmitError(f"--control {','.join(controls)}: {', '.join(empty)} has no conv the density weights, so "
                          f"no control differs from α = 1 there; the (model, kernel) pairs with one: "
                          f"{', '.join(found) or 'none'}; drop --control or those models")


def plan_confirmation(sweep: Sweep, runs_dir: Path | str, chosen: dict, seeds: Sequence[int],
                      controls: Sequence[Arm] = ()) -> list[Task]:
    """One task per (model, kernel size, seed), each a cell with the arms as its fixed trials: α = 1, the
    chosen α, then each control (α = 1 with its ``TrialConfig`` field set to the chosen α)."""
    tasks = []
    for model in sweep.models:
        for kernel, ranges in sorted(sweep.kernels.items()):
            if (model.name, kernel) not in chosen:
                continue
            alpha = chosen[(model.name, kernel)]
            for seed in seeds:
                cell = Cell(sweep.name, model.name, dict(model.options), kernel, tuple(map(tuple, ranges)), seed)
                one = baseline_alpha(cell)
                plan = [{"arm": Arm.BASELINE.value, "alpha": one}, {"arm": Arm.ALPHA.value, "alpha": alpha}]
                plan += [{"arm": c.value, "alpha": one, FIELDS[c]: alpha} for c in controls]
                tasks.append(Task(sweep, cell, 0, str(runs_dir), plan=tuple(plan)))
    return tasks


def confirm_sweep(sweep: Sweep, runs_dir: Path | str, seeds: int, *, alpha: Optional[Sequence[float]] = None,
                  controls: Sequence[Arm] = (), launcher=None, out: TextIO = sys.stdout) -> None:
    """Plan and run (locally, or through ``launcher``) the confirmation of every (model, kernel size), with
    the control arms ``controls`` (``analysis.arms.CONTROLS``)."""
    from analysis.store import Store
    from launch.local import LocalLauncher

    controls = tuple(Arm(c) for c in controls)
    check_controls(sweep, controls)
    with Store(sweep.storage, create=False) as store:
        if store.sweep(sweep.name) is None:
            raise SubmitError(f"sweep {sweep.name!r} is not in {store!r}: run its search first (wconv run)")
    sweep, runs_dir = prepare_sweep(sweep, runs_dir)
    chosen = chosen_alphas(sweep, alpha, out)
    tasks = plan_confirmation(sweep, runs_dir, chosen, fresh_seeds(sweep, seeds), controls)
    for (model, kernel), a in chosen.items():
        print(f"confirming {model} {kernel}×{kernel}: α = ({', '.join(f'{x:.3f}' for x in a)}) against α = 1"
              + (f" and the {', '.join(controls)} control(s)" if controls else "")
              + f" on seeds {fresh_seeds(sweep, seeds)}",
              file=out)
    handles = (launcher or LocalLauncher(out)).submit(sweep, tasks)
    if launcher is not None:
        print(f"submitted array job {handles[0].job_id.split('_')[0]}: {len(tasks)} task(s); run `wconv best "
              f"{sweep.name} --by model` when it is done", file=out)
        return
    print_verdicts(sweep, out)


def print_verdicts(sweep: Sweep, out: TextIO = sys.stdout) -> None:
    from analysis.query import best_alpha, format_table

    table = best_alpha(sweep.storage, sweep=sweep.name, by="model")
    print(format_table(table, "table"), file=out, end="")

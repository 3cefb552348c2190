"""What ASHA saves and what it costs in accuracy: one cell (digits, tiny_cnn, 3×3, α ∈ [0.5, 1.5]).

Targets: (a) the ASHA sweep runs ≤ 0.4 of the exhaustive epoch budget, counted over the sampled
trials (epochs run ÷ (num_samples × max epochs); the α = 1 baseline always runs in full and is shown
apart); (b) its best α matches the best α of an exhaustive grid over the same cell.

(a) runs ``launch.local.run_sweep`` (Ray Tune + Optuna TPE + ASHA on a Ray local cluster). (b) runs the
grid directly with ``wconv.train.run_trial`` in two worker processes, with the very trial config the
sweep builds (``launch.cell.trial_config``), evenly spaced α, FIFO, full budget, at the cell's seed 0
and ``--grid-seeds`` − 1 more seeds. The seeds give the noise: a different seed moves the metric by
about its standard deviation across seeds (averaged over the grid's α), so differences below that
mean nothing. ASHA's best α is also re-run at the same seeds.

ASHA matches the grid if its best α is within one grid step of the grid's best α (by the mean over
seeds), or if its seed-mean metric is within one seed standard deviation of the grid's best.

    python benchmarks/early_stopping.py                 # ~5 min on 2 free cores
    python benchmarks/early_stopping.py --grid-points 6 --grid-seeds 1   # quicker, no noise estimate
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml


def sweep_spec(args, storage: str) -> dict:
    return {
        "name": "bench-early-stopping",
        "task": "classification",
        "dataset": {"name": "digits"},
        "models": [{"name": "tiny_cnn", "options": {"width": args.width}}],
        "kernels": {3: [[0.5, 1.5]]},
        "search": {"num_samples": args.num_samples, "metric": args.metric, "seed": 0},
        "scheduler": {"type": "asha", "max_epochs": args.epochs, "grace_period": args.grace_period,
                      "reduction_factor": args.reduction_factor},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.05, "hflip": False,
                     "patience": None},
        "resources": {"cpus_per_trial": 1},
        "storage": storage,
    }


def _grid_trial(spec: dict, alpha: float, seed: int) -> tuple[float, int, dict]:
    """One full-budget trial, in a worker process (one thread)."""
    import dataclasses

    import torch

    from launch.cell import trial_config
    from launch.spec import parse_sweep
    from wconv.train import run_trial

    torch.set_num_threads(1)
    sweep = parse_sweep(spec)
    cell = dataclasses.replace(sweep.cells()[0], seed=seed)
    with tempfile.TemporaryDirectory() as work:
        result = run_trial(trial_config(sweep, cell, (alpha,)), lambda m, d: None, work)
    return alpha, seed, result["final"]


def _fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-samples", type=int, default=12, help="trials sampled by TPE (+1 baseline)")
    p.add_argument("--epochs", type=int, default=10, help="epoch budget = ASHA's max_t")
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=float, default=3)
    p.add_argument("--metric", default="val_loss", choices=["val_loss", "val_accuracy", "val_f1"],
                   help="the sweep's metric; val_loss by default: digits' ~130 validation images make accuracy tie")
    p.add_argument("--width", type=float, default=1, help="tiny_cnn width multiplier")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--grid-points", type=int, default=11, help="evenly spaced α in [0.5, 1.5]; 11 → step 0.1")
    p.add_argument("--grid-seeds", type=int, default=3, help="seeds per grid α (seed 0 is the sweep's)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the Ray cluster and grid processes")
    p.add_argument("--workdir", default=None, help="keep the sweep YAML, DB and Tune folder here (default: temp)")
    args = p.parse_args()

    import io

    import ray

    from analysis.query import best_alpha
    from analysis.store import Store
    from launch.local import run_sweep
    from launch.spec import load_sweep

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="wconv-bench-asha-")
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    spec = sweep_spec(args, f"sqlite:///{work / 'wconv.db'}")
    path = work / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = load_sweep(path)
    better = min if sweep.mode == "min" else max

    # (a) the ASHA sweep
    print(f"(a) ASHA sweep: {args.num_samples} sampled + baseline, max {args.epochs} epochs, grace "
          f"{args.grace_period}, reduction factor {args.reduction_factor:g}, metric {sweep.metric} ({sweep.mode}), "
          f"tiny_cnn width {args.width:g}, batch {args.batch_size}")
    t0 = time.time()
    run_sweep(sweep, runs_dir=work / "runs", out=io.StringIO(), num_cpus=args.num_cpus)
    asha_time = time.time() - t0
    ray.shutdown()
    store = Store(sweep.storage)
    trials = store.trials(sweep=sweep.name).sort_values("alpha_1")
    print(f"{'α':>7} {'status':<10} {'epochs':>6} {sweep.metric:>10}")
    for _, t in trials.iterrows():
        value = (t["metrics"] or {}).get(sweep.metric)
        print(f"{t['alpha_1']:>7.3f} {t['status']:<10} {t['epochs_run']:>6} {_fmt(value):>10}"
              + ("  (baseline)" if t["baseline"] else ""))
    sampled = trials[~trials["baseline"].astype(bool)]
    epochs_sampled = int(sampled["epochs_run"].sum())
    epochs_all = int(trials["epochs_run"].sum())
    fraction = epochs_sampled / (args.num_samples * args.epochs)
    fraction_all = epochs_all / ((args.num_samples + 1) * args.epochs)
    best = best_alpha(store, sweep=sweep.name).iloc[0]
    asha_alpha = best["best_alpha"][0]
    print(f"ASHA: {asha_time:.0f} s (Ray start included); sampled trials ran {epochs_sampled} of "
          f"{args.num_samples * args.epochs} epochs = {fraction:.3f}; with the full-budget baseline {epochs_all} of "
          f"{(args.num_samples + 1) * args.epochs} = {fraction_all:.3f}; "
          f"{(sampled['status'] == 'completed').sum()} sampled trial(s) completed, "
          f"{(sampled['status'] == 'stopped').sum()} stopped")
    print(f"ASHA best α = {asha_alpha:.3f} ({sweep.metric} {best['best_value']:.4f}; baseline α = 1: "
          f"{best['baseline_value']:.4f})")

    # (b) the exhaustive grid, and ASHA's best α at the same seeds
    step = 1.0 / (args.grid_points - 1)
    grid = [round(0.5 + i * step, 6) for i in range(args.grid_points)]
    seeds = list(range(args.grid_seeds))
    jobs = [(a, s) for a in grid + [asha_alpha] for s in seeds]
    print(f"\n(b) grid: {args.grid_points} α in [0.5, 1.5] (step {step:.3f}) × seeds {seeds}, FIFO, full "
          f"{args.epochs} epochs, run_trial in {args.num_cpus} processes; ASHA's α = {asha_alpha:.3f} at the same seeds")
    t0 = time.time()
    values: dict[float, dict[int, float]] = {}
    with ProcessPoolExecutor(args.num_cpus, mp_context=multiprocessing.get_context("spawn")) as pool:
        for alpha, seed, final in pool.map(_grid_trial, [spec] * len(jobs), *zip(*jobs)):
            values.setdefault(alpha, {})[seed] = final[sweep.metric]
    grid_time = time.time() - t0

    def mean(a):
        return statistics.fmean(values[a].values())

    print(f"{'α':>7} " + " ".join(f"{'seed ' + str(s):>10}" for s in seeds) + f" {'mean':>10}")
    for a in sorted(values):
        print(f"{a:>7.3f} " + " ".join(f"{values[a][s]:>10.4f}" for s in seeds) + f" {mean(a):>10.4f}"
              + ("  ← ASHA's best" if a == asha_alpha else ""))
    grid_best_seed0 = better(grid, key=lambda a: values[a][0])
    grid_best = better(grid, key=mean)
    noise = statistics.fmean(statistics.stdev(values[a].values()) for a in grid) if len(seeds) > 1 else None
    print(f"grid: {grid_time:.0f} s; best α by the mean over seeds {grid_best:.3f} ({mean(grid_best):.4f}); "
          f"best α at seed 0 {grid_best_seed0:.3f} ({values[grid_best_seed0][0]:.4f}); "
          + (f"seed noise (sd across seeds, mean over α) {noise:.4f}" if noise is not None else "no noise estimate"))

    distance = abs(asha_alpha - grid_best)
    gap = abs(mean(asha_alpha) - mean(grid_best))
    near = distance <= step + 1e-9
    within = noise is not None and gap <= noise
    print(f"ASHA vs grid: |Δα| = {distance:.3f} (grid step {step:.3f}: {'within' if near else 'outside'}); "
          f"{sweep.metric} seed-mean gap {gap:.4f}"
          + (f" ({'within' if within else 'outside'} the seed noise {noise:.4f})" if noise is not None else ""))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"SUMMARY early stopping: epochs ratio {fraction:.3f} (target ≤ 0.4: {'met' if fraction <= 0.4 else 'NOT met'}); "
          f"ASHA best α {asha_alpha:.3f} vs grid best {grid_best:.3f}: "
          f"{'match' if near or within else 'NO match'} ({'|Δα| ≤ step' if near else ''}"
          f"{' and ' if near and within else ''}{'metric within seed noise' if within else ''})")
    if tmp:
        tmp.cleanup()
    sys.stdout.flush()


if __name__ == "__main__":
    main()

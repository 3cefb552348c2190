"""What fused groups buy a sweep: trials per hour of ``wconv run`` with ``resources.group_size`` 1, 4 and 8.

The same cell (tiny_cnn on digits, 15 sampled α + the α = 1 baseline, FIFO and ``patience: null``, so every trial
runs its full budget and every size trains the same 16 × epochs member-epochs) is run once per group size, in
one process, interleaved over ``--repeat`` rounds, each size into its own store. Trials per hour = 16 ÷ the
sweep's wall time (``run_sweep``, what ``wconv run`` calls, after a shared Ray start). Ratios are against
``group_size: 1`` of the same round. Target on 2 CPU cores: ``group_size: 4`` ≥ 1.3× ``group_size: 1``.

    python benchmarks/groups.py                     # ~5 min on 2 free cores
    python benchmarks/groups.py --epochs 4 --repeat 1   # a quick look (ratios mean little)
    python benchmarks/groups.py --model resnet56 --width 1 --dataset cifar100 --dataset-root DIR --batch-size 128 \
        --gpus-per-trial 1 --num-cpus 8 --cpus-per-trial 8 --sizes 1,8 --epochs 2 --max-steps 100 --repeat 1
                                                    # one GPU (target there: group_size 8 ≥ 4× group_size 1)
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml


def sweep_spec(args, name: str, size: int, storage: str) -> dict:
    training = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.05, "hflip": False, "patience": None}
    if args.max_steps:
        training["max_steps_per_epoch"] = args.max_steps
    dataset = {"name": args.dataset, **({"root": args.dataset_root} if args.dataset_root else {})}
    return {
        "name": name, "task": "classification", "dataset": dataset,
        "models": [{"name": args.model, "options": {"width": args.width}}], "kernels": {3: [[0.5, 1.5]]},
        "search": {"num_samples": args.num_samples, "seed": 0}, "scheduler": {"type": "fifo"},
        "training": training, "storage": storage,
        "resources": {"cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial, "group_size": size},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1,4,8", help="group sizes, comma-separated (the first is the reference)")
    p.add_argument("--num-samples", type=int, default=15, help="sampled trials (+1 baseline); default 15")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--width", type=float, default=0.5, help="tiny_cnn width multiplier (16·width channels)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch (default: whole split)")
    p.add_argument("--model", default="tiny_cnn", help="a classification model (e.g. resnet56 on a GPU)")
    p.add_argument("--dataset", default="digits", help="digits (bundled) or cifar100 (staged: --dataset-root)")
    p.add_argument("--dataset-root", default=None)
    p.add_argument("--cpus-per-trial", type=float, default=1)
    p.add_argument("--gpus-per-trial", type=float, default=0, help="1 on a GPU node: one group (or trial) per GPU")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the Ray local cluster (slots at 1 CPU each)")
    p.add_argument("--repeat", type=int, default=3, help="rounds, each running every size once")
    p.add_argument("--workdir", default=None, help="keep the sweeps, stores and runs here (default: temp)")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    import ray

    import launch.local as local
    from analysis.store import Store
    from launch.runner import start_ray
    from launch.spec import load_sweep

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="wconv-bench-groups-")
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    n = args.num_samples + 1
    print(f"cell: {n} trials (FIFO, full budget), {args.model} width {args.width} on {args.dataset}, {args.epochs} "
          f"epochs, batch {args.batch_size}; {args.num_cpus}-CPU Ray local cluster, {args.cpus_per_trial:g} CPU and "
          f"{args.gpus_per_trial:g} GPU per trial or group")
    start_ray(args.num_cpus)
    rates: dict[int, list[float]] = {s: [] for s in sizes}
    for r in range(args.repeat):
        for size in sizes:
            name = f"bench-groups-{size}-r{r}"
            path = work / f"{name}.yaml"
            storage = f"sqlite:///{work / f'{name}.db'}"
            path.write_text(yaml.safe_dump(sweep_spec(args, name, size, storage)))
            sweep = load_sweep(path)
            t0 = time.time()
            local.run_sweep(sweep, runs_dir=work / "runs", out=io.StringIO(), num_cpus=args.num_cpus)
            wall = time.time() - t0
            trials = Store(storage).trials(sweep=name)
            done = int(trials["status"].eq("completed").sum())
            assert done == n, f"{name}: {done} of {n} trials completed"
            groups = trials["group_id"].nunique()
            rates[size].append(n / wall * 3600)
            print(f"round {r + 1} group_size {size}: {wall:.1f} s for {n} trials ({groups or n} Tune trials), "
                  f"{rates[size][-1]:.0f} trials/h", flush=True)
    ray.shutdown()
    ref = sizes[0]
    print(f"\n{'group_size':>10} {'trials/h (median)':>18} {'÷ group_size ' + str(ref):>18}  per round")
    for size in sizes:
        ratios = [a / b for a, b in zip(rates[size], rates[ref])]
        print(f"{size:>10} {statistics.median(rates[size]):>18.0f} {statistics.median(ratios):>17.2f}×  "
              + ", ".join(f"{x:.2f}" for x in ratios))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if 4 in rates and ref == 1:
        ratio = statistics.median(a / b for a, b in zip(rates[4], rates[1]))
        print(f"SUMMARY group_size 4 ÷ 1 trials per hour: {ratio:.2f}× (target ≥ 1.3: {'met' if ratio >= 1.3 else 'NOT met'})")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()

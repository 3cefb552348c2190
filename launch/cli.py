"""The ``wconv`` command: parse, call one function, print. User errors exit with 2 and one line per problem."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_STORAGE = "sqlite:///results/wconv.db"
USER_ERROR = 2


def _cmd_validate(args) -> None:
    from launch.cell import trials_per_cell
    from launch.spec import load_sweep

    sweep = load_sweep(args.sweep, args.set)
    cells = sweep.cells()
    print(f"{args.sweep}: valid — sweep {sweep.name!r}, {len(cells)} cell(s), "
          f"{len(cells) * trials_per_cell(sweep)} trials")


def _cmd_plan(args) -> None:
    from launch.cell import epoch_budget, trials_per_cell
    from launch.spec import load_sweep

    sweep = load_sweep(args.sweep, args.set)
    tc = sweep.training_config()
    per_epoch = _seconds_per_epoch(sweep)
    print(f"sweep {sweep.name!r} ({sweep.task}, dataset {sweep.dataset.name}): optimise {sweep.metric} ({sweep.mode}), "
          f"scheduler {sweep.scheduler.type}, {tc.epochs} epochs per trial")
    print(f"{'cell':<28} {'α ranges':<34} {'trials':>6} {'epoch budget':>12} {'rough time':>12}")
    total_time = 0.0
    for cell in sweep.cells():
        budget = trials_per_cell(sweep) * tc.epochs
        seconds = per_epoch.get(cell.model)
        total_time += (seconds or 0) * budget
        shown = _duration(seconds * budget) if seconds else "no timing yet"
        print(f"{cell.id:<28} {str(list(cell.ranges)):<34} {trials_per_cell(sweep):>6} {budget:>12} {shown:>12}")
    print(f"total: {len(sweep.cells())} cell(s), {len(sweep.cells()) * trials_per_cell(sweep)} trials, "
          f"{epoch_budget(sweep)} epochs at most (ASHA stops most trials early)"
          + (f", ≤ {_duration(total_time)} of trial time on one slot" if total_time else ""))
    if sweep.scheduler.type == "asha":
        print(f"ASHA compares trials at epochs {', '.join(map(str, asha_rungs(sweep)))} of {tc.epochs}; "
              "the trials it stops there count as stopped, never as the best")
    if not per_epoch:
        print("rough time comes from earlier trials of the same model in the results database; run a short sweep first")


def asha_rungs(sweep) -> list[int]:
    """Epochs at which ASHA compares trials: grace_period × reduction_factor^k below the budget."""
    rungs, t = [], float(sweep.scheduler.grace_period)
    while t < sweep.training_config().epochs:
        rungs.append(int(t))
        t *= sweep.scheduler.reduction_factor
    return rungs


def _seconds_per_epoch(sweep) -> dict[str, float]:
    """Median wall time per epoch of earlier trials of each model in this sweep's database (read-only)."""
    from analysis.store import NoResults, Store

    try:
        with Store(sweep.storage, create=False) as store:
            return store.seconds_per_epoch()
    except NoResults:
        return {}


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _cmd_run(args) -> None:
    from launch.local import run_sweep
    from launch.spec import load_sweep

    sweep = load_sweep(args.sweep, args.set)
    if args.storage:
        sweep = sweep.model_copy(update={"storage": args.storage})
    run_sweep(sweep, runs_dir=args.runs_dir, num_cpus=args.num_cpus)


def _cmd_best(args) -> None:
    from analysis.query import best_alpha, format_table
    from analysis.store import Store

    table = best_alpha(Store(args.storage, create=False), sweep=args.sweep, model=args.model, kernel=args.kernel)
    if table.empty and args.format == "table":
        print("no finished cell matches" + (f" (sweep {args.sweep!r})" if args.sweep else "") + f" in {args.storage}")
        return
    print(format_table(table, args.format))


def _cmd_data(args) -> None:
    from wconv import data

    if args.action == "prepare":
        path = data.prepare(args.name, args.root)
        print(f"{args.name}: downloaded and verified in {path}")
    else:
        data.check(args.name, args.root)
        print(f"{args.name}: complete and verified in {args.root}")


def _add_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep YAML file")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of the sweep file, e.g. --set training.epochs=2 "
                        "--set models.*.options.width=0.25 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wconv", description="Tune the density α of weighted convolutions.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run (or resume) a sweep on a Ray local cluster")
    _add_sweep(p)
    p.add_argument("--runs-dir", default="results/runs", type=Path, help="Ray Tune experiments and checkpoints")
    p.add_argument("--storage", help="results database URL (overrides the sweep file's storage)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster (default: all)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("validate", help="check a sweep file")
    _add_sweep(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("plan", help="cells, trials, epoch budget and rough time of a sweep")
    _add_sweep(p)
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("best", help="best α per cell against the α = 1 baseline")
    p.add_argument("--sweep")
    p.add_argument("--model")
    p.add_argument("--kernel", type=int)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"results database URL (default {DEFAULT_STORAGE})")
    p.set_defaults(func=_cmd_best)

    p = sub.add_parser("data", help="stage datasets for offline compute nodes")
    p.add_argument("action", choices=["prepare", "check"])
    p.add_argument("name", help="cifar100 or div2k")
    p.add_argument("--root", required=True, help="dataset folder")
    p.set_defaults(func=_cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    from analysis.store import StoreError
    from launch.cell import SweepChanged
    from launch.launcher import ResourceError
    from launch.lease import LeaseHeld
    from launch.spec import SpecError
    from wconv.data import DatasetError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SpecError as e:
        print(str(e), file=sys.stderr)
        return USER_ERROR
    except (DatasetError, StoreError, ResourceError, LeaseHeld, SweepChanged) as e:
        print(f"wconv {args.command}: {e}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``wconv`` command: parse, call one function, print. User errors exit with 2 and one line per problem."""

from __future__ import annotations

import argparse
import os
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
    from launch.cell import asha_rungs, cell_epochs, epoch_budget, seconds_per_epoch, trials_per_cell
    from launch.spec import load_sweep

    sweep = load_sweep(args.sweep, args.set)
    tc = sweep.training_config()
    measured = _seconds_per_epoch(sweep)
    print(f"sweep {sweep.name!r} ({sweep.task}, dataset {sweep.dataset.name}): optimise {sweep.metric} ({sweep.mode}), "
          f"scheduler {sweep.scheduler.type}, {tc.epochs} epochs per trial")
    print(f"{'cell':<28} {'α ranges':<30} {'trials':>6} {'epochs (worst)':>14} {'expected':>9} {'rough time':>11}  "
          "timing from")
    total_time = 0.0
    for cell in sweep.cells():
        worst, expected = cell_epochs(sweep)
        seconds, source = seconds_per_epoch(cell, measured)
        total_time += (seconds or 0) * expected
        shown = _duration(seconds * expected) if seconds else "-"
        print(f"{cell.id:<28} {str(list(cell.ranges)):<30} {trials_per_cell(sweep):>6} {worst:>14} {expected:>9.0f} "
              f"{shown:>11}  {source}")
    print(f"total: {len(sweep.cells())} cell(s), {len(sweep.cells()) * trials_per_cell(sweep)} trials, "
          f"{epoch_budget(sweep)} epochs at most"
          + (f"; about {_duration(total_time)} of trial time on one slot as ASHA is expected to stop trials"
             if total_time else ""))
    if sweep.scheduler.type == "asha":
        print(f"ASHA compares trials at epochs {', '.join(map(str, asha_rungs(sweep)))} of {tc.epochs}; "
              "the trials it stops there count as stopped, never as the best")
    if not measured:
        print("rough time comes from earlier trials of the same model in the results database, else the paper's "
              "A100 timings (Tables 4 and 6); run a short sweep first to time this machine")


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

    with Store(args.storage, create=False) as store:
        table = best_alpha(store, sweep=args.sweep, model=args.model, kernel=args.kernel, by=args.by)
    if table.empty and args.format == "table":
        print("no finished cell matches" + (f" (sweep {args.sweep!r})" if args.sweep else "") + f" in {args.storage}")
        return
    print(format_table(table, args.format), end="")


def _cmd_report(args) -> None:
    from analysis.report import write_report

    index = write_report(args.storage, args.sweep, args.out or Path("results/reports") / args.sweep)
    print(f"report of sweep {args.sweep!r}: {index}")


def _cmd_data(args) -> None:
    from wconv import data

    if args.action == "prepare":
        path = data.prepare(args.name, args.root)
        print(f"{args.name}: downloaded and verified in {path}")
    else:
        data.check(args.name, args.root)
        print(f"{args.name}: complete and verified in {args.root}")


def _cmd_submit(args) -> None:
    from launch.profile import load_profile
    from launch.slurm import submit_sweep
    from launch.spec import load_sweep

    sweep = load_sweep(args.sweep, args.set)
    if args.storage:
        sweep = sweep.model_copy(update={"storage": args.storage})
    profile = load_profile(args.cluster)
    submit_sweep(sweep, profile, args.runs_dir, workers=args.workers, account=args.account, dry_run=args.dry_run)


def _cmd_confirm(args) -> None:
    from launch.confirm import confirm_sweep
    from launch.spec import load_sweep

    sweep = load_sweep(args.sweep, args.set)
    if args.storage:
        sweep = sweep.model_copy(update={"storage": args.storage})
    launcher = None
    if args.cluster:
        from launch.profile import load_profile
        from launch.slurm import SlurmLauncher, require_slurm

        require_slurm()
        launcher = SlurmLauncher(load_profile(args.cluster), Path(args.runs_dir).resolve() / sweep.name / "slurm",
                                 args.account)
    confirm_sweep(sweep, args.runs_dir, args.seeds, alpha=args.alpha, control=args.control, launcher=launcher)


def _alpha_list(text: str) -> list[float]:
    """--alpha 0.8 or --alpha 0.1,0.9: positive, finite numbers."""
    import math

    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 0.8 or 0.1,0.9") \
            from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every coefficient must be a finite number > 0")
    return values


def _cmd_status(args) -> None:
    from analysis.store import Store
    from launch.slurm import sweep_status

    with Store(args.storage, create=False) as store:
        sweep_status(store, _known_sweep(store, args.sweep))


def _cmd_cancel(args) -> None:
    from analysis.store import Store
    from launch.slurm import cancel_sweep, recorded_jobs

    with Store(args.storage, create=False) as store:  # nothing is created for a sweep that is not there
        recorded_jobs(store, _known_sweep(store, args.sweep))
    with Store(args.storage) as store:
        cancel_sweep(store, args.sweep)


def _known_sweep(store, name: str) -> str:
    from launch.launcher import SubmitError

    if store.sweep(name) is None:
        known = list(store.sweeps()["name"])
        raise SubmitError(f"no sweep {name!r} in {store!r}; it has {known or 'none'}")
    return name


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (the usage itself is one --help away)."""

    def error(self, message: str):
        self.exit(USER_ERROR, f"{self.prog}: {message}; see {self.prog} --help\n")


def _at_least(low: int):
    """An argparse type: an integer ≥ ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be ≥ {low}")
        return value

    parse.__name__ = f"integer ≥ {low}"
    return parse


def _kernel_size(text: str) -> int:
    value = _at_least(1)(text)
    if value < 3 or value % 2 == 0:
        raise argparse.ArgumentTypeError(f"{value} is not a kernel size; use an odd size ≥ 3")
    return value


def _add_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep YAML file")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of the sweep file, e.g. --set training.epochs=2 "
                        "--set models.*.options.width=0.25 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wconv", description="Tune the density α of weighted convolutions.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run (or resume) a sweep on a Ray local cluster")
    _add_sweep(p)
    p.add_argument("--runs-dir", default="results/runs", type=Path, help="Ray Tune experiments and checkpoints")
    p.add_argument("--storage", help="results database URL (overrides the sweep file's storage)")
    p.add_argument("--num-cpus", type=_at_least(1), help="CPUs of the local Ray cluster (default: all)")
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
    p.add_argument("--kernel", type=_kernel_size)
    p.add_argument("--by", choices=["cell", "model"], default="cell",
                   help="cell: the best α of each search cell (one seed); model: per model and kernel size across "
                        "seeds, paired against α = 1, with the confirmation verdict")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"results database URL (default {DEFAULT_STORAGE})")
    p.set_defaults(func=_cmd_best)

    p = sub.add_parser("report", help="the paper's tables and figures of a sweep, with verdicts, as files and index.html")
    p.add_argument("sweep", help="sweep name")
    p.add_argument("--out", type=Path, help="report folder (default results/reports/SWEEP); only files of an earlier "
                                            "report in it are replaced")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"results database URL (default {DEFAULT_STORAGE})")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("submit", help="submit a sweep to SLURM as one array job (submitit); returns at once")
    _add_sweep(p)
    p.add_argument("--cluster", required=True, metavar="PROFILE",
                   help="a bundled cluster profile (leonardo, local) or the path of a profile YAML file")
    p.add_argument("--workers", type=_at_least(1), help="array tasks per cell sharing its study (default: the "
                                                        "sweep's workers)")
    p.add_argument("--account", help="SLURM account to charge (default: the profile's, or its environment variable)")
    p.add_argument("--runs-dir", default="results/runs", type=Path,
                   help="checkpoints, Optuna journal and SLURM logs; must be on the shared filesystem")
    p.add_argument("--storage", help="results database URL (overrides the sweep file's storage)")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script, the task → cell map and the "
                                                          "budget; submit and write nothing")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("confirm", help="retrain the chosen α and α = 1 on fresh paired seeds; say whether the gain "
                                       "holds")
    _add_sweep(p)
    p.add_argument("--seeds", type=_at_least(2), required=True, help="fresh seeds per (model, kernel size), ≥ 2")
    p.add_argument("--alpha", type=_alpha_list, help="the α to confirm for every model (default: the search's best)")
    p.add_argument("--control", choices=["init-scale"], help="add α = 1 with the chosen α's initial weight scale")
    p.add_argument("--cluster", metavar="PROFILE", help="run through SLURM with this cluster profile")
    p.add_argument("--account", help="SLURM account to charge (with --cluster)")
    p.add_argument("--runs-dir", default="results/runs", type=Path, help="checkpoints of the confirmation trials")
    p.add_argument("--storage", help="results database URL (overrides the sweep file's storage)")
    p.set_defaults(func=_cmd_confirm)

    p = sub.add_parser("status", help="SLURM state of a submitted sweep's array tasks, and its cells' progress")
    p.add_argument("sweep", help="sweep name")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"results database URL (default {DEFAULT_STORAGE})")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("cancel", help="cancel a submitted sweep; what was running is resumed by the next submit")
    p.add_argument("sweep", help="sweep name")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"results database URL (default {DEFAULT_STORAGE})")
    p.set_defaults(func=_cmd_cancel)

    p = sub.add_parser("data", help="stage datasets for offline compute nodes")
    p.add_argument("action", choices=["prepare", "check"])
    p.add_argument("name", help="cifar100 or div2k")
    p.add_argument("--root", required=True, help="dataset folder")
    p.set_defaults(func=_cmd_data)
    return parser


def _user_errors() -> tuple[type, ...]:
    """The exceptions that are a user's mistake (one line, exit 2), imported only when something went wrong:
    importing them up front would load torch for every command."""
    from analysis.frames import ResultsError
    from analysis.report import ReportFolderError
    from analysis.store import StoreError
    from launch.cell import SweepChanged
    from launch.launcher import ResourceError, SubmitError
    from launch.lease import LeaseHeld
    from wconv.data import DatasetError

    return (DatasetError, StoreError, ResourceError, LeaseHeld, SweepChanged, SubmitError, ResultsError,
            ReportFolderError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
        sys.stdout.flush()  # a closed pipe (`wconv plan … | head`) shows here, inside the try
    except BrokenPipeError:
        # The reader went away: stop quietly, as a Unix tool does. Python flushes stdout again at exit, so point it
        # at /dev/null first (the recipe of Python's `signal` documentation, "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:
        from launch.spec import SpecError

        if isinstance(e, SpecError):
            print(str(e), file=sys.stderr)
            return USER_ERROR
        if isinstance(e, _user_errors()):
            print(f"wconv {args.command}: {e}", file=sys.stderr)
            return USER_ERROR
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

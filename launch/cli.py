"""The ``wconv`` command: parse, call one function, print. User errors exit with 2 and one line per problem."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

USER_ERROR = 2


def _cmd_validate(args) -> None:
    from launch.cell import trials_per_cell
    from launch.spec import load_sweep

    sweep = load_sweep(args.sweep, args.set)
    cells = sweep.cells()
    print(f"{args.sweep}: valid — sweep {sweep.name!r}, {len(cells)} cell(s), "
          f"{len(cells) * trials_per_cell(sweep)} trials")


def _cmd_plan(args) -> None:
    from launch.budget import seconds_per_epoch
    from launch.cell import asha_rungs, cell_epochs, epoch_budget, trials_per_cell
    from launch.spec import grid_has_baseline, load_sweep

    sweep = load_sweep(args.sweep, args.set)
    tc = sweep.training_config()
    timing = _seconds_per_epoch(sweep)
    print(f"sweep {sweep.name!r} ({sweep.task}, dataset {sweep.dataset.name}): optimise {sweep.metric} ({sweep.mode}), "
          f"scheduler {sweep.scheduler.type}, {tc.epochs} epochs per trial")
    if sweep.search.sampler == "grid":
        n, k = sweep.search.grid_points, next(iter(sorted(sweep.kernels)))
        points = n ** len(sweep.kernels[k])
        print(f"grid search: {n} values per free coefficient, {points} grid points per cell"
              + (", α = 1 among them (the baseline)" if grid_has_baseline(sweep.kernels[k], n)
                 else ", plus the α = 1 baseline"))
    else:
        print(f"{sweep.search.sampler} sampler: {sweep.search.num_samples} sampled α per cell, plus the α = 1 baseline")
    if sweep.resources.group_size > 1:
        _plan_groups(sweep, timing)
        return
    print(f"{'cell':<28} {'α ranges':<30} {'trials':>6} {'epochs (worst)':>14} {'expected':>9} {'rough time':>11}  "
          "timing from")
    total_time, sources = 0.0, set()
    for cell in sweep.cells():
        worst, expected = cell_epochs(sweep)
        seconds, source = seconds_per_epoch(sweep, cell, timing)
        sources.add(source.split(" (")[0])
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
    if sources != {"earlier trials"}:
        print(TRIAL_TIMING)


TRIAL_TIMING = ("rough time comes from earlier trials of the same model and dataset in the results database, else "
                "benchmarks/gpu.py's measurements shipped with wconv (per GPU card, paper-size models on cifar100 or "
                "div2k), else the paper's A100 timings (Tables 4 and 6); run a short sweep first to time this machine")


def _plan_groups(sweep, timing) -> None:
    """``wconv plan``'s table for fused groups (``resources.group_size`` > 1): a cell's rough time is its
    group-epochs × a group's seconds per epoch (``launch.budget.group_seconds_per_epoch``)."""
    from launch.budget import EARLIER_GROUPS, cell_groups, group_seconds_per_epoch, groups_word
    from launch.cell import asha_rungs, epoch_budget, trials_per_cell

    k, epochs, groups = sweep.resources.group_size, sweep.training_config().epochs, cell_groups(sweep)
    asha = sweep.scheduler.type == "asha"
    n = len(groups.sizes)
    print(f"fused groups: up to {k} trials per group, {groups_word(n)} per cell ({groups.shown()}); each group "
          f"trains as one model on one trial's resources for up to {epochs} epochs, as long as its longest member"
          + ("; rough time counts the last, smaller group at a full group's epoch" if len(set(groups.sizes)) > 1
             else ""))
    print(f"{'cell':<28} {'α ranges':<30} {'trials':>6} {'groups':>6} {'group-epochs (worst)':>20} {'expected':>9} "
          f"{'rough time':>11}  timing from (a group's epoch)")
    total_time, one_trial, measured = 0.0, set(), True
    for cell in sweep.cells():
        seconds, source = group_seconds_per_epoch(sweep, cell, timing, groups.sizes[0])
        measured &= source.startswith(EARLIER_GROUPS)
        if not source.startswith(EARLIER_GROUPS):
            one_trial.add(source.split(";")[0].split(" (")[0])
        total_time += (seconds or 0) * groups.expected
        shown = _duration(seconds * groups.expected) if seconds else "-"
        print(f"{cell.id:<28} {str(list(cell.ranges)):<30} {trials_per_cell(sweep):>6} {n:>6} "
              f"{groups.worst:>20} {groups.expected:>9.0f} {shown:>11}  {source}")
    cells = len(sweep.cells())
    print(f"total: {cells} cell(s), {cells * trials_per_cell(sweep)} trials in {groups_word(cells * n)}, "
          f"{cells * groups.worst} group-epochs ({epoch_budget(sweep)} trial epochs) at most"
          + (f"; about {_duration(total_time)} of group time on one slot"
             + (" as ASHA is expected to stop members" if asha else "") if total_time else ""))
    if asha:
        print(f"ASHA compares members at epochs {', '.join(map(str, asha_rungs(sweep)))} of {epochs}; a member it "
              "stops there counts as stopped, never as the best, and its group goes on with the others; expected "
              f"group-epochs if each member goes on at a rung with chance 1/{sweep.scheduler.reduction_factor:g}, "
              f"the baseline's group all {epochs}")
    if not measured:
        print("a group's epoch comes from earlier groups of the same size in the results database, else one trial's "
              "epoch × K ÷ the fused speedup at K (earlier groups and lone trials of the model in the database, else "
              "benchmarks/gpu.py's per GPU card), else K × one trial's epoch, which is no bound (fused K = 2 ran at "
              "0.61× the trials per hour of one trial per GPU on an H100)")
    if one_trial - {"earlier trials"}:
        print(TRIAL_TIMING)


def _seconds_per_epoch(sweep):
    """Epoch times of the earlier trials in this sweep's database (read-only; ``launch.budget``)."""
    from launch.budget import read_store_timing

    return read_store_timing(sweep.storage)


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
    from analysis.frames import ResultsError
    from analysis.query import best_alpha, format_table
    from analysis.store import Store

    if args.sweep and args.sweep_option and args.sweep != args.sweep_option:
        raise ResultsError(f"two sweeps given ({args.sweep!r} and --sweep {args.sweep_option!r}); give one")
    sweep = args.sweep or args.sweep_option
    with Store(args.storage, create=False) as store:
        table = best_alpha(store, sweep=sweep, model=args.model, kernel=args.kernel, by=args.by)
        where = store.url
    if table.empty and args.format == "table":
        from analysis.store import masked_url

        print("no finished cell matches" + (f" (sweep {sweep!r})" if sweep else "") + f" in {masked_url(where)}")
        return
    print(format_table(table, args.format), end="")


def _cmd_report(args) -> None:
    from analysis.report import write_report

    index = write_report(args.storage, args.sweep, args.out or Path("results/reports") / args.sweep)
    print(f"report of sweep {args.sweep!r}: {index}")


def _cmd_data(args) -> None:
    from wconv import data

    if args.sources and args.action != "prepare":
        raise data.DatasetError("--from gives archives to `wconv data prepare`; `check` reads only --root")
    if args.name in data.BUNDLED:  # checked (it must load), but it has no folder: --root is not used
        if args.sources:
            raise data.DatasetError(f"{args.name} is bundled with {data.BUNDLED[args.name]}: it has no archive; "
                                    "drop --from")
        data.check(args.name)
        print(f"{args.name}: bundled with {data.BUNDLED[args.name]} and readable; it needs no folder "
              f"(--root {args.root} is not used)" + ("; nothing to prepare" if args.action == "prepare" else ""))
    elif args.action == "prepare":
        for staged in data.prepare(args.name, args.root, args.sources):
            came = f"from {staged.source}, " if staged.source else ""
            print(f"{args.name}: {staged.folder} ready ({staged.archive}: {came}{staged.verified})")
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
    from launch.confirm import confirm_sweep, find_sweep

    sweep = find_sweep(args.sweep, args.set, args.storage)
    launcher = None
    if args.cluster:
        from launch.profile import load_profile
        from launch.slurm import SlurmLauncher, refuse_password, require_slurm

        refuse_password(sweep.storage)
        require_slurm()
        launcher = SlurmLauncher(load_profile(args.cluster), Path(args.runs_dir).resolve() / sweep.name / "slurm",
                                 args.account)
    confirm_sweep(sweep, args.runs_dir, args.seeds, alpha=args.alpha, controls=args.control or (),
                  launcher=launcher)


def _controls(text: str):
    """--control init-scale,lr-shape: names from ``analysis.arms.CONTROLS``."""
    from analysis.arms import parse_controls

    try:
        return parse_controls(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    """A submitted sweep: its array tasks' SLURM states and its cells; a sweep run locally: its cells."""
    from analysis.query import format_progress, progress
    from analysis.store import Store, masked_url
    from launch.jobs import jobs

    with Store(args.storage, create=False) as store:
        name = _known_sweep(store, args.sweep)
        if not jobs(store, name).empty:
            from launch.slurm import sweep_status

            sweep_status(store, name)
            return
        print(f"sweep {name!r} in {masked_url(store.url)} (not submitted to SLURM):")
        print(format_progress(progress(store, name)), end="")


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
        from analysis.store import masked_url

        known = ", ".join(store.sweeps()["name"]) or "none yet"
        raise SubmitError(f"no sweep {name!r} in {masked_url(store.url)}; the sweeps it records: {known}")
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


def _storage(text: str) -> str:
    """An argparse type: a results store URL or a plain path (a SQLite file), as ``analysis.store.storage_url``
    normalises it for every command; a malformed one is a usage error in one line."""
    from analysis.store import StoreError, storage_url

    try:
        return storage_url(text)
    except StoreError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_storage.__name__ = "results store"
STORAGE_HELP = "results database: a SQLite file's path, or a URL such as postgresql+psycopg://user@host/db"


def _add_storage(p: argparse.ArgumentParser, *, sweeps_own: bool = False) -> None:
    """``--storage``: the results store (``analysis.store.DEFAULT_URL`` unless given); ``sweeps_own``: unless
    given, the sweep's own ``storage``."""
    from analysis.store import DEFAULT_URL

    shown = " (default: the sweep's storage)" if sweeps_own else f" (default {DEFAULT_URL})"
    p.add_argument("--storage", type=_storage, default=None if sweeps_own else DEFAULT_URL, help=STORAGE_HELP + shown)


def _add_runs_dir(p: argparse.ArgumentParser, help: str) -> None:
    from launch.cell import DEFAULT_RUNS_DIR

    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, type=Path, help=help)


def _add_sweep(p: argparse.ArgumentParser, what: str = "sweep YAML file") -> None:
    p.add_argument("sweep", help=what)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of the sweep file, e.g. --set training.epochs=2 "
                        "--set models.*.options.width=0.25 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wconv", description="Tune the density α of weighted convolutions.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run (or resume) a sweep on a Ray local cluster")
    _add_sweep(p)
    _add_runs_dir(p, "Ray Tune experiments and checkpoints")
    _add_storage(p, sweeps_own=True)
    p.add_argument("--num-cpus", type=_at_least(1), help="CPUs of the local Ray cluster (default: all)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("validate", help="check a sweep file")
    _add_sweep(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("plan", help="cells, trials, epoch budget and rough time of a sweep")
    _add_sweep(p)
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("best", help="best α per cell against the α = 1 baseline")
    p.add_argument("sweep", nargs="?", help="sweep name (default: every sweep in the database)")
    p.add_argument("--sweep", dest="sweep_option", metavar="SWEEP", help="the same as the positional SWEEP")
    p.add_argument("--model", help="only this model, e.g. resnet20")
    p.add_argument("--kernel", type=_kernel_size, help="only this kernel size, e.g. 5 for 5×5")
    p.add_argument("--by", choices=["cell", "model"], default="cell",
                   help="cell: the best α of each search cell (one seed); model: per model and kernel size across "
                        "seeds, paired against α = 1, with the confirmation verdict")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table",
                   help="table: the compact view for a terminal; json, csv: every column, full precision")
    _add_storage(p)
    p.set_defaults(func=_cmd_best)

    p = sub.add_parser("report", help="the paper's tables and figures of a sweep, with verdicts, as files and index.html")
    p.add_argument("sweep", help="sweep name")
    p.add_argument("--out", type=Path, help="report folder (default results/reports/SWEEP); only files of an earlier "
                                            "report in it are replaced")
    _add_storage(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("submit", help="submit a sweep to SLURM as one array job (submitit); returns at once")
    _add_sweep(p)
    p.add_argument("--cluster", required=True, metavar="PROFILE",
                   help="a bundled cluster profile (leonardo, local) or the path of a profile YAML file")
    p.add_argument("--workers", type=_at_least(1), help="array tasks per cell sharing its study (default: the "
                                                        "sweep's workers)")
    p.add_argument("--account", help="SLURM account to charge (default: the profile's, or its environment variable)")
    _add_runs_dir(p, "checkpoints, Optuna journal and SLURM logs; must be on the shared filesystem")
    _add_storage(p, sweeps_own=True)
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script, the task → cell map and the "
                                                          "budget; submit and write nothing")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("confirm", help="retrain the chosen α and α = 1 on fresh paired seeds; say whether the gain "
                                       "holds")
    _add_sweep(p, "sweep YAML file, or the name of a sweep the results store holds (as `wconv run` recorded it)")
    p.add_argument("--seeds", type=_at_least(2), required=True, help="fresh seeds per (model, kernel size), ≥ 2")
    p.add_argument("--alpha", type=_alpha_list, help="the α to confirm for every model (default: the search's best)")
    p.add_argument("--control", type=_controls, metavar="ARM[,ARM…]",
                   help="control arms, comma-separated: init-scale (α = 1, initial weights × √mean(Φ²)), init-shape "
                        "(× Φ), lr-shape (per-position learning rate Φ² under SGD, Φ under Adam)")
    p.add_argument("--cluster", metavar="PROFILE", help="run through SLURM with this cluster profile")
    p.add_argument("--account", help="SLURM account to charge (with --cluster)")
    _add_runs_dir(p, "checkpoints of the confirmation trials")
    _add_storage(p, sweeps_own=True)
    p.set_defaults(func=_cmd_confirm)

    p = sub.add_parser("status", help="a sweep's cells: trials done, running, best α so far; and, for a submitted "
                                      "sweep, its array tasks' SLURM states")
    p.add_argument("sweep", help="sweep name")
    _add_storage(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("cancel", help="cancel a submitted sweep; what was running is resumed by the next submit")
    p.add_argument("sweep", help="sweep name")
    _add_storage(p)
    p.set_defaults(func=_cmd_cancel)

    p = sub.add_parser("data", help="stage datasets for offline compute nodes")
    p.add_argument("action", choices=["prepare", "check"],
                   help="prepare: download (or take --from) the official archives, verify, extract; check: verify")
    p.add_argument("name", help="cifar100 or div2k (digits and natural are bundled: nothing to prepare)")
    p.add_argument("--root", required=True, help="dataset folder (e.g. on the shared filesystem)")
    p.add_argument("--from", dest="sources", action="append", type=Path, metavar="ARCHIVE",
                   help="an official archive already downloaded (e.g. cifar-100-python.tar.gz), or a folder "
                        "holding them; repeat for several; nothing is downloaded then")
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
    from wconv.checkpoint import UnsafeCheckpoint
    from wconv.data import DatasetError

    return (DatasetError, StoreError, ResourceError, LeaseHeld, SweepChanged, SubmitError, ResultsError,
            ReportFolderError, UnsafeCheckpoint)


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
        from analysis.store import EXIT_UNAVAILABLE, StoreUnavailable

        if isinstance(e, StoreUnavailable):  # an outage, not a mistake: run again later
            print(f"wconv {args.command}: {e}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        if isinstance(e, _user_errors()):
            print(f"wconv {args.command}: {e}", file=sys.stderr)
            return USER_ERROR
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Submit a sweep to SLURM through submitit: one array job, one array task per (cell, worker).

Each array task runs ``launch.runner.run_task`` from its pickled ``Task`` alone: it starts a private
Ray local cluster sized from its allocation (``launch.runner.start_ray``), takes its cell's lease and
runs trials — one per GPU, or several per GPU when ``resources.gpus_per_trial`` is fractional. The
workers of one cell share the cell's Optuna study and claim trials through the results store, so a
cell gets exactly ``num_samples + 1`` trials whatever the number of workers.

Time limits, preemption, failures: a task signalled before its time limit (USR2, ``signal_delay_s``
ahead) is checkpointed by submitit (``CellJob.checkpoint``) and requeued; a task killed outright
(``scontrol requeue``, a node failure) restarts from scratch. Either way the restarted task is the
same lease holder (its owner name is the array job and task id), takes its lease back at once and
continues its unfinished trials from their last per-epoch checkpoints; finished trials are in the store.

Store outages: a task waits for its store as any run does (``analysis/store/engine.py``, "Outages"), also
when the store is down as it starts; one that outlasts ``WCONV_STORE_RETRY_S`` requeues the task
(``requeue_self``), so the sweep goes on once the database is back.

Passwords: an array task's arguments are a pickle in the runs folder, so a storage URL that holds a
password is refused (``refuse_password``): a compute node's libpq finds it in ``~/.pgpass`` (or the file
``PGPASSFILE`` names) instead. The submission's files, and through sbatch's umask the tasks' logs and
files, are their owner's alone (``launch.launcher.owner_only``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Optional, Sequence, TextIO

import submitit

from analysis.store import EXIT_UNAVAILABLE, Store, StoreUnavailable
from launch.budget import StoreTiming, store_timing
from launch import jobs as job_records
from launch.lease import interrupt
from launch.cell import cell_finished, prepare_sweep
from launch.launcher import OWNER_ONLY_UMASK, ResourceError, SubmitError, Task, owner_only, plan_tasks
from launch.profile import ClusterProfile
from launch.spec import Sweep, without_password

ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
          "REQUEUE_FED")


class CellJob(submitit.helpers.Checkpointable):
    """What one array task runs. ``checkpoint`` (called by submitit on USR2) requeues the same task:
    its state lives in the store and the trials' checkpoints, not in this object."""

    def __init__(self, task: Task):
        self.task = task

    def __call__(self) -> bool:
        from analysis.store.engine import count_as_reached
        from launch import lease
        from launch.runner import run_task  # on the compute node: Ray and torch are imported there only

        # For the whole process, not only run_task: submitit pickles the result (and a requeue's state) after it.
        os.umask(os.umask(OWNER_ONLY_UMASK) | OWNER_ONLY_UMASK)
        count_as_reached(self.task.sweep.storage)  # `wconv submit` reached it: down now is an outage, not a typo
        lease.when_unavailable = requeue_self
        try:
            return run_task(self.task, position=f"task {self.task.name}")
        except StoreUnavailable as e:
            requeue_self(e)


def requeue_self(exc: BaseException) -> NoReturn:
    """End this array task for a store outage that outlasted ``WCONV_STORE_RETRY_S``, requeued (``scontrol
    requeue``): SLURM starts it again (after ~2 min with its default settings), and it resumes from the store and
    its trials' checkpoints. Exit 75 either way; where SLURM refuses the requeue (``MaxBatchRequeue``, default 5,
    reached; requeue disabled), the task ends and submitting the sweep again resumes it."""
    print(f"wconv: {exc}", file=sys.stderr, flush=True)
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{array}_{index}" if array and index else os.environ.get("SLURM_JOB_ID")
    if job_id:
        try:
            done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
            why = done.stderr.strip() or f"exit {done.returncode}"
        except (OSError, subprocess.TimeoutExpired) as e:
            done, why = None, str(e)
        if done is not None and done.returncode == 0:
            print(f"wconv: requeued array task {job_id}: it resumes when SLURM starts it again", file=sys.stderr,
                  flush=True)
        else:
            print(f"wconv: could not requeue array task {job_id} ({why}); submit the sweep again once the store "
                  "is back: it resumes", file=sys.stderr, flush=True)
    os._exit(EXIT_UNAVAILABLE)


@dataclass
class SlurmHandle:
    job_id: str
    task: Task
    job: Optional[submitit.Job] = None

    def state(self) -> str:
        return job_states([self.job_id]).get(self.job_id, "UNKNOWN")


def refuse_password(storage: str) -> None:
    """SubmitError if the storage URL holds a password: it would travel in every array task's pickled arguments."""
    from sqlalchemy.engine import make_url

    url = make_url(storage)
    if url.password is not None:
        raise SubmitError(f"storage {url.render_as_string(hide_password=True)!r}: a password inside the URL would "
                          "be written into every array task's pickled arguments in the runs folder; give the URL "
                          f"without it ({without_password(storage)}) and put the password in ~/.pgpass on the "
                          "cluster (a line HOST:PORT:DB:USER:PASSWORD, chmod 600), or in the file PGPASSFILE names")


def require_slurm() -> None:
    for command in ("sbatch", "sacct", "squeue", "scancel"):
        if shutil.which(command) is None:
            raise SubmitError(f"{command} is not on PATH: submit from a SLURM login node (or load the slurm module)")


def job_states(job_ids: Sequence[str]) -> dict[str, str]:
    """SLURM state of each job or array task (``<job>_<task>``): ``sacct``'s, else ``squeue``'s.

    Right after submission sacct may list a pending array only under its job id, not yet by task: a task sacct
    does not name takes squeue's state (``-r``: one line per task), else its array's."""
    if not job_ids:
        return {}
    jobs = sorted({str(j).split("_")[0] for j in job_ids})
    states = _states("sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(jobs))
    missing = [j for j in job_ids if j not in states]
    if missing:
        live = _states("squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(jobs))
        for job_id in missing:
            array = str(job_id).split("_")[0]
            state = live.get(job_id) or states.get(array) or live.get(array)
            if state is not None:
                states[job_id] = state
    return states


def _states(*command: str) -> dict[str, str]:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = {}
    for line in proc.stdout.splitlines():
        job_id, _, state = line.partition("|")
        if job_id.strip():
            states[job_id.strip()] = state.split()[0] if state.strip() else "UNKNOWN"
    return states


class SlurmLauncher:
    """submitit's AutoExecutor for one profile; ``submit`` returns at once with the array's handles."""

    def __init__(self, profile: ClusterProfile, folder: Path, account: Optional[str] = None):
        self.profile, self.folder, self.account = profile, Path(folder), account

    def executor(self, tasks: Sequence[Task]) -> submitit.AutoExecutor:
        executor = self.profile.executor(self.folder / "%j", self.account)
        executor.update_parameters(slurm_array_parallelism=max(1, min(self.profile.array_parallelism, len(tasks))),
                                   name=f"wconv-{tasks[0].sweep.name}" if tasks else "wconv")
        return executor

    def submit(self, sweep: Sweep, tasks: Sequence[Task]) -> list[SlurmHandle]:
        for storage in {sweep.storage, *(t.sweep.storage for t in tasks)}:
            refuse_password(storage)
        with owner_only():  # submitit writes the pickles and the sbatch script; SLURM starts the tasks with this umask
            jobs = self.executor(tasks).submit_array([CellJob(t) for t in tasks])
        return [SlurmHandle(job.job_id, task, job) for job, task in zip(jobs, tasks)]

    def status(self, handles: Sequence[SlurmHandle]) -> list[str]:
        states = job_states([h.job_id for h in handles])
        return [states.get(h.job_id, "UNKNOWN") for h in handles]

    def cancel(self, handles: Sequence[SlurmHandle]) -> None:
        jobs = sorted({h.job_id.split("_")[0] for h in handles})
        if jobs:
            subprocess.run(["scancel", *jobs], check=False, capture_output=True, timeout=60)

    def script(self, tasks: Sequence[Task]) -> str:
        """The sbatch script ``submit`` would hand to SLURM (for ``--dry-run``)."""
        from submitit.slurm.slurm import _make_sbatch_string

        slurm = self.executor(tasks)._executor
        params = dict(slurm.parameters, map_count=len(tasks) if len(tasks) > 1 else None)
        return _make_sbatch_string(command=slurm._submitit_command_str, folder=slurm.folder, **params)


# -- the commands: submit, status, cancel ------------------------------------------------------------


def submission_problems(sweep: Sweep, profile: ClusterProfile, runs_dir: Path, workers: int) -> list[Exception]:
    """What SLURM would accept but could never run well, one error each (a real submission raises the first)."""
    problems: list[Exception] = []
    res = sweep.resources
    if res.gpus_per_trial > profile.gpus_per_node:
        problems.append(ResourceError(f"resources.gpus_per_trial ({res.gpus_per_trial:g}) is more than a node of "
                                      f"profile {profile.name!r} has ({profile.gpus_per_node}); lower it"))
    if res.cpus_per_trial > profile.cpus_per_node:
        problems.append(ResourceError(f"resources.cpus_per_trial ({res.cpus_per_trial:g}) is more than a node of "
                                      f"profile {profile.name!r} has ({profile.cpus_per_node}); lower it"))
    if workers > sweep.search.num_samples:
        problems.append(SubmitError(f"workers ({workers}) is more than search.num_samples "
                                    f"({sweep.search.num_samples}): a worker would have nothing to run; lower --workers"))
    database = _sqlite_path(sweep.storage)
    for what, path in (("the runs folder", runs_dir), ("the SQLite results store", database)):
        if path is not None and profile.node_local_path(path):
            problems.append(SubmitError(f"{what} {path} is on a node-local path that compute nodes cannot see; put it "
                                        f"on the shared filesystem (e.g. under $WORK or $SCRATCH)"))
    if database is not None and not profile.single_node:
        problems.append(SubmitError(f"storage {sweep.storage!r}: SQLite is unsafe with writers on several nodes (its "
                                    "locks do not work on NFS/Lustre); use a PostgreSQL URL reachable from the compute "
                                    "nodes (--storage postgresql+psycopg://USER@HOST/DB)"))
    return problems


def _sqlite_path(url: str) -> Optional[Path]:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).expanduser().resolve()


def _active_jobs(store: Store, sweep: str) -> list[str]:
    jobs = job_records.jobs(store, sweep)
    ids = ([j for j, state in zip(jobs["job_id"], jobs["state"]) if state != job_records.CANCELLED]
           if not jobs.empty else [])
    states = job_states(ids)
    return [j for j in ids if any(s in ACTIVE for k, s in states.items() if k.split("_")[0] == j)]


def budget_lines(sweep: Sweep, tasks: Sequence[Task], measured: StoreTiming) -> list[str]:
    """GPU-hours of the worst case (every trial to the full budget) and of the expected ASHA case; seconds per
    epoch as ``launch.budget`` finds them (``measured``: the store's earlier trials). With fused groups
    (``resources.group_size`` > 1) the same per group: a group's epochs on one trial's GPUs."""
    from launch.budget import seconds_per_epoch
    from launch.cell import cell_epochs

    if sweep.resources.group_size > 1:
        return _group_budget_lines(sweep, tasks, measured)
    worst_h = expected_h = 0.0
    sources, unknown, each = set(), [], []
    gpus = sweep.resources.gpus_per_trial or 0
    for cell in {t.cell.id: t.cell for t in tasks}.values():
        worst, expected = cell_epochs(sweep)
        seconds, source = seconds_per_epoch(sweep, cell, measured)
        if seconds is None:
            unknown.append(cell.model)
            continue
        sources.add(source)
        each.append(f"{cell.id} {seconds:.3g} s ({source})")
        worst_h += worst * seconds * gpus / 3600
        expected_h += expected * seconds * gpus / 3600
    worst, expected = cell_epochs(sweep)
    lines = [f"budget per cell: {worst} epochs worst case, {expected:.0f} expected under ASHA "
             f"({sweep.search.num_samples} sampled trials + the full-budget baseline)"]
    if gpus:
        lines.append(f"GPU-hours: {worst_h:.1f} worst case, {expected_h:.1f} expected under ASHA "
                     f"(seconds per epoch from {', '.join(sorted(sources)) or '-'}"
                     + (f"; no timing for {', '.join(sorted(set(unknown)))}" if unknown else "") + ")")
    if each:
        lines.append("seconds per epoch: " + "; ".join(each))
    return lines


def _group_budget_lines(sweep: Sweep, tasks: Sequence[Task], measured: StoreTiming) -> list[str]:
    """``budget_lines`` for fused groups: a cell's group-epochs (``launch.budget.cell_groups``) × a group's seconds
    per epoch (``group_seconds_per_epoch``, at the cell's largest group; the last, smaller group counted as a full
    one) × ``gpus_per_trial``."""
    from launch.budget import EARLIER_GROUPS, cell_groups, group_seconds_per_epoch, groups_word

    groups = cell_groups(sweep)
    k = groups.sizes[0]
    kinds = (("÷ fused", f"one trial's epoch × {k} ÷ a measured fused speedup"),  # names earlier groups too
             ("no fused timing", f"{k} × one trial's epoch (no fused timing)"), (EARLIER_GROUPS, f"earlier groups of {k}"))
    worst_h = expected_h = 0.0
    sources, unknown, each = set(), [], []
    gpus = sweep.resources.gpus_per_trial or 0
    for cell in {t.cell.id: t.cell for t in tasks}.values():
        seconds, source = group_seconds_per_epoch(sweep, cell, measured, k)
        if seconds is None:
            unknown.append(cell.model)
            continue
        sources.add(next(kind for found, kind in kinds if found in source))
        each.append(f"{cell.id} {seconds:.3g} s ({source})")
        worst_h += groups.worst * seconds * gpus / 3600
        expected_h += groups.expected * seconds * gpus / 3600
    n = len(groups.sizes)
    lines = [f"fused groups: up to {sweep.resources.group_size} trials per group, {groups_word(n)} per cell "
             f"({groups.shown()}), each on one trial's resources for as long as its longest member",
             f"budget per cell: {groups.worst} group-epochs worst case, {groups.expected:.0f} expected under ASHA "
             f"({sweep.search.num_samples} sampled trials + the full-budget baseline, in {groups_word(n)})"]
    if gpus:
        lines.append(f"GPU-hours: {worst_h:.1f} worst case, {expected_h:.1f} expected under ASHA "
                     f"(seconds per group epoch from {', '.join(kind for _, kind in kinds if kind in sources) or '-'}"
                     + (f"; no timing for {', '.join(sorted(set(unknown)))}" if unknown else "")
                     + ("; the last, smaller group counted as a full one" if len(set(groups.sizes)) > 1 else "") + ")")
    if each:
        lines.append("seconds per group epoch: " + "; ".join(each))
    return lines


def submit_sweep(sweep: Sweep, profile: ClusterProfile, runs_dir: Path | str, *, workers: Optional[int] = None,
                 account: Optional[str] = None, dry_run: bool = False, out: TextIO = sys.stdout) -> Optional[str]:
    """Submit the sweep's unfinished cells as one array job and return at once with its id (None: dry run,
    or nothing to do)."""
    workers = workers or sweep.workers
    refused = _Refusals(dry_run, out)
    with refused:
        refuse_password(sweep.storage)
    if not dry_run:
        require_slurm()
    with refused:
        prepare_sweep(sweep, runs_dir, record=False)  # dataset and store first: a dry run only warns
    sweep, runs_dir = prepare_sweep(sweep, runs_dir, record=False, check_data=False)
    for problem in submission_problems(sweep, profile, runs_dir, workers):
        with refused:
            raise problem
    launcher = SlurmLauncher(profile, runs_dir / sweep.name / "slurm", account)
    launcher.executor([])  # an unusable profile (e.g. no account) is refused before anything is written
    measured, todo, active = StoreTiming(), sweep.cells(), []
    with refused:
        measured, todo, active = _store_state(sweep, dry_run)
    if active:
        raise SubmitError(f"sweep {sweep.name!r} already has array job {', '.join(active)} queued or running; "
                          f"see `wconv status {sweep.name}`, or `wconv cancel {sweep.name}` first")
    if not dry_run:
        prepare_sweep(sweep, runs_dir)  # every check passed: record the sweep
    tasks = [t for t in plan_tasks(sweep, runs_dir, workers) if t.cell in todo]
    if not tasks:
        print(f"sweep {sweep.name!r} is finished: {len(sweep.cells())} cell(s) in {sweep.storage}; nothing to submit",
              file=out)
        return None
    if dry_run:
        print(launcher.script(tasks), file=out)
        print("array task → cell (worker):", file=out)
        for i, task in enumerate(tasks):
            print(f"  {i:>4} → {task.cell.id} (worker {task.worker + 1} of {workers})", file=out)
        for line in budget_lines(sweep, tasks, measured):
            print(line, file=out)
        print("dry run: nothing submitted, nothing written", file=out)
        return None
    handles = launcher.submit(sweep, tasks)
    job_id = handles[0].job_id.split("_")[0]
    with Store(sweep.storage) as store:
        job_records.record_job(store, sweep.name, job_id, kind="sweep", cluster=profile.model_dump(mode="json"),
                               tasks=[{"task": h.job_id, "cell": h.task.cell.id, "worker": h.task.worker} for h in handles])
    print(f"submitted array job {job_id}: {len(tasks)} task(s) for sweep {sweep.name!r} "
          f"({len(todo)} cell(s) × {workers} worker(s)); follow it with `wconv status {sweep.name}`", file=out)
    return job_id


class _Refusals:
    """Around a check: a real submission raises its one-line refusal; a dry run prints it as a warning and
    goes on, so that the script can still be read before the data, the database or the paths are ready."""

    def __init__(self, dry_run: bool, out: TextIO):
        self.dry_run, self.out = dry_run, out

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb) -> bool:
        from analysis.store import StoreError
        from wconv.data import DatasetError

        if error is None or not self.dry_run or not isinstance(error, (DatasetError, StoreError, SubmitError,
                                                                       ResourceError)):
            return False
        print(f"warning: a real submission would be refused: {error}", file=self.out)
        return True


def _store_state(sweep: Sweep, dry_run: bool) -> tuple[StoreTiming, list, list]:
    """Timings, unfinished cells and active jobs of the sweep in its store (a dry run writes nothing)."""
    from analysis.store import NoResults

    try:
        with Store(sweep.storage, create=not dry_run) as store:
            todo = [c for c in sweep.cells() if not cell_finished(store, sweep, c)]
            return store_timing(store), todo, [] if dry_run else _active_jobs(store, sweep.name)
    except NoResults:
        return StoreTiming(), sweep.cells(), []


def recorded_jobs(store: Store, sweep: str) -> list[dict]:
    jobs = job_records.jobs(store, sweep)
    if jobs.empty:
        raise SubmitError(f"sweep {sweep!r} was never submitted to SLURM from {store!r}; "
                          f"submit it with `wconv submit SWEEP.yaml --cluster PROFILE`")
    return jobs.to_dict("records")


def sweep_status(store: Store, sweep: str, out: TextIO = sys.stdout) -> None:
    """Per array task its SLURM state; per cell trials done/total and the best so far."""
    import pandas as pd

    from analysis.query import format_progress, progress

    jobs = recorded_jobs(store, sweep)
    tasks = [dict(t, job=j["job_id"], job_state=j["state"]) for j in jobs for t in (j["tasks"] or [])]
    states = job_states([t["task"] for t in tasks])
    rows = [{"array task": t["task"], "cell": t["cell"], "worker": t["worker"],
             "state": "CANCELLED" if t["job_state"] == "cancelled" and states.get(t["task"]) in (None, "PENDING")
             else states.get(t["task"], "UNKNOWN")} for t in tasks]
    print(pd.DataFrame(rows).to_string(index=False), file=out)
    print(format_progress(progress(store, sweep)), file=out, end="")


def cancel_sweep(store: Store, sweep: str, out: TextIO = sys.stdout) -> None:
    """Cancel the sweep's array jobs and mark what was running as interrupted: a later ``submit`` resumes it."""
    jobs = recorded_jobs(store, sweep)
    ids = [j["job_id"] for j in jobs if j["state"] != job_records.CANCELLED]
    if ids:  # before any write: a task stopped mid-transaction holds SQLite's lock until SLURM ends it
        require_slurm()
        subprocess.run(["scancel", *ids], check=False, capture_output=True, timeout=60)
    owners = {f"slurm:{t['task']}" for j in jobs for t in (j["tasks"] or [])}
    owners |= {f"slurm:{j['job_id']}" for j in jobs}
    interrupted = interrupt(store, sweep, owners)
    for job_id in ids:
        job_records.set_job_state(store, sweep, job_id, job_records.CANCELLED)
    print(f"cancelled array job(s) {', '.join(ids) or '(none active)'} of sweep {sweep!r}; {interrupted} running "
          f"trial(s) marked interrupted (`wconv submit` of the same sweep resumes them)", file=out)

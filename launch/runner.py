"""Run one cell on a Ray local cluster: what a ``wconv run`` process and a SLURM array task both do.

``run_cell(sweep, cell, runs_dir, worker=…)`` needs nothing but picklable arguments: it takes the
cell's lease, reads the cell's state from the results store (through ``CellSearch``), runs trials
until the cell needs nothing more from this worker, and writes every trial through ``StoreCallback``.
Console progress is a separate callback.

Ray is started from the allocation, not the machine (``allocation``): inside SLURM the CPUs of the
task and the GPUs in ``CUDA_VISIBLE_DEVICES``, a private cluster with its own short temp dir (Unix
socket paths must stay under 107 bytes) and an explicit object store, never another job's Ray.
``stop_ray`` ends that cluster and removes its temp dir (Ray leaves it behind): at the end of a local run,
when a cell is interrupted or fails, and at the exit of any process that started one (a SLURM task).

Ctrl-C: Tune's own SIGINT handler is turned off, so SIGINT is Python's ``KeyboardInterrupt`` in the
driver. Tune's handler would end ``fit()`` normally, snapshot an experiment state wconv never restores and
print how to restore it, and the run would exit 0 as if the cell were merely unfinished. Instead ``run_cell``
stops Ray (no trial keeps running or writing its checkpoint), gives the lease back and lets the interrupt
through: ``wconv run`` exits 130, and the next run resumes every trial from its last epoch.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, TextIO

import psutil
import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from analysis.arms import FIELDS
from analysis.store import Store
from analysis.store.engine import count_as_reached
from launch.cell import (alpha_of, cell_dir, group_key, key_of, record_fields, trial_config, trial_id,
                         trial_key, trials_per_cell)
from launch.launcher import ResourceError, Task, owner_only
from launch.lease import LeaseKeeper
from launch.search import GROUP, MEMBERS, CellSearch, MemberASHA, PlannedSearch, make_scheduler, outcome
from launch.spec import Cell, Sweep
from wconv.status import TERMINAL, Stage, TrialStatus
from wconv.train import (DEVICE, EPOCH, FINAL, FINISHED, HOST, MEMBER, METRIC_SETTINGS, REASON, REPLAY, STATUS,
                         WALL_TIME_S)

OBJECT_STORE_BYTES = 200 * 1024**2  # trials exchange metrics, not tensors


@dataclass(frozen=True)
class Allocation:
    """What this process may use: CPUs and GPUs, and whether SLURM gave them."""

    cpus: int
    gpus: Optional[int]
    """None: let Ray detect them (outside SLURM, without CUDA_VISIBLE_DEVICES)."""
    slurm: bool


def allocation(num_cpus: Optional[int] = None) -> Allocation:
    """The CPUs of this task (SLURM_CPUS_PER_TASK, else the CPU affinity), the GPUs it was given."""
    slurm = "SLURM_JOB_ID" in os.environ
    cpus = num_cpus or int(os.environ.get("SLURM_CPUS_PER_TASK") or 0) or len(os.sched_getaffinity(0))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = None
    if visible is not None:
        gpus = len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    elif slurm:
        gpus = 0
    return Allocation(cpus, gpus, slurm)


def _quiet_ray_environment() -> None:
    """Ray 2.6x defaults that hurt on laptops and compute nodes; each may still be set by the user."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no auth token written to ~/.ray
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the results store is our logger
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # A failed trial's last report has no validation metric; the searcher and scheduler handle that.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    # Ray pre-starts one idle worker per CPU, but Tune gives its trial actors a runtime_env of their own, so
    # those workers are never used: each cost a Python start and an import of Ray.
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    os.environ.setdefault("RAY_enable_worker_prestart", "0")
    # Not a default: Ctrl-C must reach wconv as KeyboardInterrupt (see the module docstring).
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"


_private_temp: Optional[Path] = None
"""The temp dir of the private cluster ``start_ray`` started in this process, until ``stop_ray`` removes it."""


def start_ray(num_cpus: Optional[int] = None) -> Allocation:
    """Join the cluster in ``RAY_ADDRESS`` (outside SLURM), or start a private, quiet local one sized to
    this process's allocation."""
    _quiet_ray_environment()
    # Result files are not written (the store is the logger), so Tune's result grid would warn per trial.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    alloc = allocation(num_cpus)
    if ray.is_initialized():
        return alloc
    if os.environ.get("RAY_ADDRESS") and not alloc.slurm:
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING, log_to_driver=False)
        return alloc
    global _private_temp
    job = os.environ.get("SLURM_JOB_ID")
    temp = Path(tempfile.gettempdir()) / f"wr-{job or os.getpid()}"  # short: Ray's socket paths ≤ 107 bytes
    _private_temp = temp
    atexit.unregister(stop_ray)
    atexit.register(stop_ray)  # once; registered after Ray's own exit hook (at its import), so it runs first
    ray.init(address="local", num_cpus=alloc.cpus, num_gpus=alloc.gpus, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False, object_store_memory=OBJECT_STORE_BYTES,
             _temp_dir=str(temp))
    # No runtime_env: the workers inherit this process's environment through the raylet it starts. A job-level
    # runtime_env would re-exec every worker through Ray's setup_worker (a second Python start) and leave the
    # workers Ray pre-starts for this job unused.
    return alloc


def stop_ray() -> None:
    """Disconnect from Ray; for the private cluster of ``start_ray``, also wait until its processes (trial workers
    included) have ended and remove its temp dir. Does nothing when Ray is not running."""
    global _private_temp
    temp, _private_temp = _private_temp, None
    processes = []
    if temp is not None:  # the cluster's services name its temp dir on their command line; its workers descend
        for child in psutil.Process().children():  # from them (and rename themselves, e.g. ray::IDLE)
            try:
                if str(temp) in " ".join(child.cmdline()):
                    processes += [child, *child.children(recursive=True)]
            except psutil.Error:
                pass
    if ray.is_initialized():
        ray.shutdown()
    _, alive = psutil.wait_procs(processes, timeout=30)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)
    if temp is not None:
        shutil.rmtree(temp, ignore_errors=True)


def slots(sweep: Sweep) -> int:
    """Trials that fit at once on the Ray cluster (every slot is filled; no more trials are claimed
    than can run, so workers of one cell share its trials fairly)."""
    have = ray.cluster_resources()
    res = sweep.resources
    fit = int(have.get("CPU", 0) // res.cpus_per_trial)
    if res.gpus_per_trial > 0:
        fit = min(fit, int(round(have.get("GPU", 0) / res.gpus_per_trial, 6)))
    if sweep.search.max_concurrent:
        fit = min(fit, sweep.search.max_concurrent)
    return max(fit, 1)


def check_allocation(sweep: Sweep, alloc: Allocation) -> None:
    """Before Ray starts: a trial asking for more than this allocation has would wait forever."""
    gpus = alloc.gpus
    if gpus is None and sweep.resources.gpus_per_trial > 0:
        import torch

        gpus = torch.cuda.device_count()
    _check(sweep, {"CPU": alloc.cpus, "GPU": gpus or 0}, "this machine" if not alloc.slurm else "this SLURM task")


def check_resources(sweep: Sweep) -> None:
    """After joining a Ray cluster: the same check against what the cluster has."""
    _check(sweep, ray.cluster_resources(), "the Ray cluster")


def _check(sweep: Sweep, have: dict, where: str) -> None:
    for key, need in (("CPU", sweep.resources.cpus_per_trial), ("GPU", sweep.resources.gpus_per_trial)):
        if need > have.get(key, 0):
            field = "cpus_per_trial" if key == "CPU" else "gpus_per_trial"
            raise ResourceError(f"resources.{field}: each trial asks for {need:g} {key}(s) but {where} has "
                                f"{have.get(key, 0):g}; lower it (e.g. --set resources.{field}="
                                f"{0 if key == 'GPU' else 1}) or run where the resources are")


def _trainable(config: dict, sweep: Sweep, cell: Cell, cpus: float, trials_dir: str, stage: str = Stage.SEARCH) -> None:
    """Ray Tune function trainable: one trial, checkpointed every epoch by ``run_trial`` in its own folder, or a
    fused group (``_train_group``).

    The folder is named by the trial's α, so a trial interrupted in one run (a kill, a requeue,
    another node of a shared filesystem) continues from its last epoch in the next. Tune's own
    checkpoints are not used: they race with its experiment snapshots, and the store is the truth.
    """
    import torch

    from wconv.train import run_trial

    torch.set_num_threads(max(1, int(cpus)))
    if MEMBERS in config:
        return _train_group(config, sweep, cell, Path(trials_dir), stage)
    alpha, arm = alpha_of(config, cell), config.get("arm")
    controls = {f: config.get(f) for f in FIELDS.values()}

    def report(metrics: dict, directory: Path) -> None:
        tune.report(metrics)  # ray.train.report fails inside Tune; tune.report is the function-trainable API

    with owner_only():  # also when this worker belongs to a Ray cluster that another process started
        run_trial(trial_config(sweep, cell, alpha, arm=arm, **controls), report,
                  Path(trials_dir) / trial_key(alpha, arm))


def _train_group(config: dict, sweep: Sweep, cell: Cell, trials_dir: Path, stage: str) -> None:
    """A fused group (``wconv.fused.run_group``), or one trial alone among groups (``run_trial``): each member in
    its own folder (``trial_key``), as it would train alone, the group's ``group.pt`` in the group's folder. The
    members' reports of an epoch go to Tune as one result (``{epoch, members}``); ASHA decides per member here
    (``MemberASHA``), against the cell's rungs in the store."""
    from wconv.fused import run_group
    from wconv.train import run_trial

    count_as_reached(sweep.storage)  # its runner has reached the store: an outage is waited out here too
    members = config[MEMBERS]
    configs = [trial_config(sweep, cell, m["alpha"], arm=m.get("arm"), **{f: m.get(f) for f in FIELDS.values()})
               for m in members]
    dirs = [trials_dir / trial_key(m["alpha"], m.get("arm")) for m in members]
    tids = [trial_id(cell, m["alpha"], m.get("arm")) for m in members]
    asha = MemberASHA(sweep, cell) if stage == Stage.SEARCH and sweep.scheduler.type == "asha" else None
    pending: list[dict] = []

    def report(metrics: dict, directory: Path) -> Optional[str]:
        i = int(metrics.get(MEMBER, 0))
        pending.append(dict(metrics, **{MEMBER: i}))
        return asha.decide(tids[i], metrics) if asha is not None else None

    def flush() -> None:
        if pending:
            tune.report({EPOCH: max(int(m[EPOCH]) for m in pending), MEMBERS: list(pending)})
            pending.clear()

    def alone(metrics: dict, directory: Path) -> Optional[str]:
        decision = report(metrics, directory)
        if not decision:  # a stopped trial's epoch goes with its final report, once its checkpoint says stopped
            flush()
        return decision

    with owner_only():
        if config[GROUP] is None:
            run_trial(configs[0], alone, dirs[0])
        else:
            run_group(configs, report, trials_dir / group_key(members[0]["alpha"], members[0].get("arm")), dirs,
                      epoch_end=flush)
    flush()


def _epoch_metrics(result: dict) -> dict:
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and (k.startswith(("val_", "train_")) or k in ("lr", WALL_TIME_S))}


def _error_line(trial) -> str:
    text = getattr(trial, "error_msg", None) or ""
    if not text and getattr(trial, "error_file", None):
        try:
            text = Path(trial.error_file).read_text()
        except OSError:
            text = ""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "the trial raised an error (see Ray's logs)"


class StoreCallback(tune.Callback):
    """Tune callback, run in the driver, that writes every trial to the results store, fenced by this
    runner's ownership of the trial (a runner that lost its lease writes nothing)."""

    def __init__(self, sweep: Sweep, cell: Cell, trials_dir: Path, owner: str, stage: str = Stage.SEARCH):
        self.sweep, self.cell, self.trials_dir, self.owner, self.stage = sweep, cell, trials_dir, owner, stage
        self.store = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "store"}  # Tune pickles callbacks

    def __setstate__(self, state):
        self.__dict__.update(state, store=None)

    def _record(self, trial, **fields) -> None:
        self._record_entry({"alpha": alpha_of(trial.config, self.cell), "arm": trial.config.get("arm")}, **fields)

    def _record_entry(self, entry: dict, **fields) -> None:
        """Write the trial of ``entry`` (a trial's α and arm: a group's member, or a trial alone)."""
        if self.store is None:
            self.store = Store(self.sweep.storage)
        alpha, arm = entry["alpha"], entry.get("arm")
        self.store.record_trial(self.sweep.name, trial_id(self.cell, alpha, arm), owner=self.owner, stage=self.stage,
                                **record_fields(self.cell, alpha, arm), **fields)

    def _record_epochs(self, tid: str, result: dict) -> None:
        """The epoch of ``result`` and, after a restart, the epochs checkpointed before it that the store has not
        got (a replay has no wall time: it would erase it)."""
        if self.store is None:
            self.store = Store(self.sweep.storage)
        epochs = {int(m[EPOCH]): _epoch_metrics(m) for m in result.get(REPLAY, [])}
        if epochs:
            recorded = self.store.epochs(self.sweep.name, tid)
            epochs = {e: m for e, m in epochs.items() if recorded.empty or e not in set(recorded["epoch"])}
        epochs[int(result[EPOCH])] = _epoch_metrics(result)
        self.store.record_epochs(self.sweep.name, tid, epochs, owner=self.owner)

    def on_trial_start(self, iteration, trials, trial, **info):
        if MEMBERS in trial.config:
            group = trial.config[GROUP]
            for i, entry in enumerate(trial.config[MEMBERS]):
                self._record_entry(entry, status=TrialStatus.RUNNING, group_id=group,
                                   member=None if group is None else i,
                                   checkpoint=str(self.trials_dir / trial_key(entry["alpha"], entry.get("arm"))))
            return
        key = trial_key(alpha_of(trial.config, self.cell), trial.config.get("arm"))
        self._record(trial, status=TrialStatus.RUNNING, checkpoint=str(self.trials_dir / key))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if MEMBERS in trial.config:
            entries = trial.config[MEMBERS]
            for report in result.get(MEMBERS) or []:
                entry = entries[int(report[MEMBER])]
                self._record_epochs(trial_id(self.cell, entry["alpha"], entry.get("arm")), report)
                if report.get(FINISHED):
                    self._record_entry(entry, **ended(report, report.get(STATUS)))
                else:
                    self._record_entry(entry, **running(report))
            return
        self._record_epochs(key_of(trial.config, self.cell), result)
        if not result.get(FINISHED):
            self._record(trial, **running(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if MEMBERS in trial.config:
            ends = {int(r[MEMBER]): r for r in last.get(MEMBERS) or [] if r.get(FINISHED)}
            for i, entry in enumerate(trial.config[MEMBERS]):
                if i in ends:
                    self._record_entry(entry, **ended(ends[i], ends[i].get(STATUS)))
            self._fail_unfinished(trial, "its group ended without its final report")
            return
        self._record(trial, **ended(last, outcome(last, error=False)))

    def on_trial_error(self, iteration, trials, trial, **info):
        if MEMBERS in trial.config:
            self._fail_unfinished(trial, _error_line(trial))
            return
        self._record(trial, status=TrialStatus.FAILED, reason=_error_line(trial))

    def _fail_unfinished(self, trial, reason: str) -> None:
        """The members of a group that the store does not have ended: failed, for ``reason``."""
        if self.store is None:
            self.store = Store(self.sweep.storage)
        for entry in trial.config[MEMBERS]:
            row = self.store.trial(self.sweep.name, trial_id(self.cell, entry["alpha"], entry.get("arm")))
            if row is None or row["status"] not in TERMINAL:
                self._record_entry(entry, status=TrialStatus.FAILED, reason=reason)


def running(report: dict) -> dict:
    """A trial's store fields while it runs, from its epoch ``report``."""
    return dict(status=TrialStatus.RUNNING, epochs_run=int(report[EPOCH]), host=report.get(HOST),
                device=report.get(DEVICE), wall_time_s=report.get(WALL_TIME_S))


def ended(last: dict, status: str) -> dict:
    """A trial's store fields once it ended with ``status``, from its last report. Stopped (by Tune's ASHA, before
    its end, or by ``MemberASHA`` inside a group): its last epoch's ``val_*`` metrics, as far as it got."""
    common = dict(epochs_run=int(last.get(EPOCH, 0)), wall_time_s=last.get(WALL_TIME_S), host=last.get(HOST),
                  device=last.get(DEVICE))
    if status == TrialStatus.STOPPED:
        partial = {k: v for k, v in last.items() if k.startswith("val_")}
        return dict(status=TrialStatus.STOPPED, metrics=partial, **common,
                    reason=last.get(REASON) or f"stopped by ASHA after {common['epochs_run']} epoch(s)")
    return dict(status=status, reason=last.get(REASON), metrics=last.get(FINAL),
                metric_settings=last.get(METRIC_SETTINGS), **common)


class ProgressCallback(tune.Callback):
    """One console line per finished trial: the cell's trials done out of its total, and its best so far
    (from the store, so trials finished by other workers and earlier runs count)."""

    def __init__(self, sweep: Sweep, cell: Cell, position: str, out: Optional[TextIO] = None, stage: str = Stage.SEARCH,
                 total: Optional[int] = None):
        self.sweep, self.cell, self.position, self.stage = sweep, cell, position, stage
        self.total = total or trials_per_cell(sweep)
        self.out = out

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "out"}

    def __setstate__(self, state):
        self.__dict__.update(state, out=None)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if any(r.get(FINISHED) for r in result.get(MEMBERS) or []):  # members of a group end one by one
            self.show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        if MEMBERS not in trial.config:
            self.show()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.show()

    def show(self) -> None:
        with Store(self.sweep.storage) as store:
            rows = store.trials(sweep=self.sweep.name, cell=self.cell.id, stage=self.stage)
        done = rows[rows["status"].isin(TERMINAL)] if not rows.empty else rows
        best, best_alpha = None, None
        for _, row in done.iterrows():
            value = (row["metrics"] or {}).get(self.sweep.metric) if row["status"] == TrialStatus.COMPLETED else None
            if value is not None and not row["baseline"] and (
                    best is None or (value > best if self.sweep.mode == "max" else value < best)):
                best, best_alpha = value, row["alpha"]
        shown = (f"best {self.sweep.metric} {best:.4g} at α=({', '.join(f'{a:.3f}' for a in best_alpha)})"
                 if best is not None else "no best yet")
        print(f"[{self.position} {self.cell.id}] trials {len(done)}/{self.total} done · {shown}",
              file=self.out or sys.stdout, flush=True)


def run_cell(sweep: Sweep, cell: Cell, runs_dir: Path | str, *, worker: int = 0, plan: Optional[list[dict]] = None,
             leases: Optional[LeaseKeeper] = None, position: str = "cell", out: Optional[TextIO] = None,
             num_cpus: Optional[int] = None, callbacks: Sequence = ()) -> bool:
    """Run what one cell still needs from this worker; True when the cell is finished.

    ``sweep`` must have been through ``launch.cell.prepare_sweep`` (absolute paths, recorded). Takes
    the lease ``(cell, worker)`` first (``LeaseHeld`` if a live runner has it) and gives it back at the
    end, also when interrupted, so that the next run takes over at once. ``callbacks``: more Tune
    callbacks (instrumentation, e.g. the orchestration benchmark's clock). ``plan``: a confirmation's
    fixed trials (``PlannedSearch``) instead of a search, run to their budget (FIFO).
    """
    stage = Stage.SEARCH if plan is None else Stage.CONFIRM
    total = trials_per_cell(sweep) if plan is None else len(plan)

    def finished() -> bool:
        with Store(sweep.storage) as store:
            return store.terminal_counts(sweep.name, stage=stage).get(cell.id, 0) >= total

    own = leases is None
    leases = leases or LeaseKeeper(sweep.storage, sweep.name)
    try:
        leases.take(cell.id, worker)
        if finished():
            return True
        start_ray(num_cpus)
        check_resources(sweep)
        directory = cell_dir(runs_dir, sweep, cell)
        trials_dir = directory / ("trials" if plan is None else "confirm")
        shutil.rmtree(directory / f"tune-{worker}", ignore_errors=True)  # Tune's state is never restored
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, sweep=sweep, cell=cell, cpus=sweep.resources.cpus_per_trial,
                                 trials_dir=str(trials_dir), stage=stage),
            {"cpu": sweep.resources.cpus_per_trial, "gpu": sweep.resources.gpus_per_trial},
        )
        search = (CellSearch(sweep, cell, Path(runs_dir), leases.holder) if plan is None
                  else PlannedSearch(sweep, cell, Path(runs_dir), leases.holder, plan))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode,
                                        search_alg=search,
                                        scheduler=make_scheduler(sweep) if plan is None else FIFOScheduler(),
                                        num_samples=-1,  # the searcher says when the cell is done
                                        max_concurrent_trials=slots(sweep),
                                        # One worker per slot for the whole cell: a new worker per trial
                                        # (Tune's default) idles each slot ~5 s per hand-over.
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=f"tune-{worker}", storage_path=str(directory), verbose=0,
                                      callbacks=[StoreCallback(sweep, cell, trials_dir, leases.holder.owner, stage),
                                                 ProgressCallback(sweep, cell, position, out, stage, total),
                                                 *callbacks]),
        )
        tuner.fit()
        return finished()
    except BaseException:  # Ctrl-C or a failure: no trial may go on once the lease is given back
        stop_ray()
        raise
    finally:
        leases.release(cell.id)
        if own:
            leases.close()


def run_task(task: Task, **options) -> bool:
    """Run one task where this process is (a local run, a SLURM array task); True when its cell is finished.
    ``options`` go to ``run_cell``. What it writes (and Ray, if it starts Ray) is its owner's alone (``owner_only``)."""
    plan = None if task.plan is None else [dict(p) for p in task.plan]
    with owner_only():
        return run_cell(task.sweep, task.cell, task.runs_dir, worker=task.worker, plan=plan, **options)

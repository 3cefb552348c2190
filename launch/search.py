"""One cell's search: Ray Tune runs trials proposed by Optuna's TPE sampler, ASHA stops the poor ones.

Every cell also runs its α = 1 baseline (the standard convolution) with the cell's seed, to the
full epoch budget: ASHA never stops it and early stopping is off for it, so the comparison is fair.

How stopped trials are told to Optuna: Ray's ``OptunaSearch`` records a trial that ASHA stopped
as COMPLETE with the partial metric of its last rung, so TPE would compare a 2-epoch accuracy with
a 20-epoch one. ``CellSearch`` tells such trials as PRUNED instead (with their per-epoch
intermediate values, which TPE uses to rank pruned trials below every completed one), and trials
that failed (e.g. a non-finite loss) as FAIL.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from launch.spec import Cell, Sweep
from wconv.train import TrialConfig, run_trial

BASELINE_ALPHA = 1.0


def _quiet_ray_environment() -> None:
    """Ray 2.6x defaults that hurt on laptops and compute nodes; each may still be set by the user."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no auth token written to ~/.ray
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the results store is our logger
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # experiment state saved often: resume loses little
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # A failed trial's last report has no validation metric; the searcher and scheduler handle that.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # frequent on purpose
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")


def start_ray(num_cpus: Optional[int] = None) -> None:
    """Join the cluster in ``RAY_ADDRESS``, or start a quiet local one sized to this machine."""
    import logging

    import ray

    _quiet_ray_environment()
    # Result files are not written (the store is the logger), so Tune's result grid would warn per trial.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING, log_to_driver=False)
        return
    ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False, object_store_memory=200 * 1024**2,
             runtime_env={"env_vars": {k: os.environ[k] for k in ("RAY_AUTH_MODE", "PYTHONWARNINGS")}})


def check_resources(sweep: Sweep) -> None:
    """A trial asking for more than any node has would wait forever in Tune's queue."""
    import ray

    have = ray.cluster_resources()
    for key, need in (("CPU", sweep.resources.cpus_per_trial), ("GPU", sweep.resources.gpus_per_trial)):
        if need > have.get(key, 0):
            field = "cpus_per_trial" if key == "CPU" else "gpus_per_trial"
            raise ResourceError(f"resources.{field}: each trial asks for {need:g} {key}(s) but the Ray cluster has "
                                f"{have.get(key, 0):g}; lower it (e.g. --set resources.{field}="
                                f"{0 if key == 'GPU' else 1}) or run where the resources are")


class ResourceError(Exception):
    """The sweep asks for resources the Ray cluster does not have."""


def _alpha_names(cell: Cell) -> list[str]:
    return [f"alpha_{i + 1}" for i in range(len(cell.ranges))]


def alpha_of(config: dict, cell: Cell) -> tuple[float, ...]:
    return tuple(float(config[name]) for name in _alpha_names(cell))


def trial_config(sweep: Sweep, cell: Cell, alpha: tuple[float, ...]) -> TrialConfig:
    baseline = all(a == BASELINE_ALPHA for a in alpha)
    return TrialConfig(model=cell.model, dataset=sweep.dataset.name, kernel_size=cell.kernel_size,
                       alpha=None if baseline else alpha, seed=cell.seed, training=sweep.training_config(),
                       model_options=cell.model_options, dataset_root=sweep.dataset.root,
                       dataset_options=dict(sweep.dataset.options), baseline=baseline)


def _trainable(config: dict, sweep: Sweep, cell: Cell, cpus: float) -> None:
    """Ray Tune function trainable: one trial, resumed from Tune's checkpoint when there is one."""
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(cpus)))
    work = Path(tempfile.mkdtemp(prefix="wconv-trial-"))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        checkpoint.to_directory(str(work))

    def report(metrics: dict, directory: Path) -> None:
        # ray.train.report fails inside Tune; tune.report is the function-trainable API.
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(directory)))

    try:
        run_trial(trial_config(sweep, cell, alpha_of(config, cell)), report, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _make_searcher(sweep: Sweep, cell: Cell):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class CellSearch(OptunaSearch):
        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if self.metric in result:  # a failed trial's last report has none
                super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
            if result is not None and result.get("trial_status") == "failed":
                result, error = None, True
            elif result is not None and not error and not result.get("finished"):
                result = None  # stopped by the scheduler: PRUNED, not COMPLETE
            super().on_trial_complete(trial_id, result, error)

    baseline = {name: BASELINE_ALPHA for name in _alpha_names(cell)}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # metric and mode are given once, to TuneConfig, which passes them to searcher and scheduler.
    return CellSearch(points_to_evaluate=[baseline],
                      sampler=optuna.samplers.TPESampler(seed=sweep.search.seed))


def _make_scheduler(sweep: Sweep):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

    if sweep.scheduler.type == "fifo":
        return FIFOScheduler()

    class BaselineASHA(ASHAScheduler):
        """ASHA that never stops the α = 1 baseline and leaves it out of the rungs."""

        def on_trial_result(self, tune_controller, trial, result):
            if result.get("baseline"):
                return TrialScheduler.CONTINUE
            return super().on_trial_result(tune_controller, trial, result)

    return BaselineASHA(time_attr="training_iteration", max_t=sweep.training_config().epochs,
                        grace_period=sweep.scheduler.grace_period,
                        reduction_factor=sweep.scheduler.reduction_factor)


def search_space(cell: Cell) -> dict:
    from ray import tune

    return {name: tune.uniform(low, high) for name, (low, high) in zip(_alpha_names(cell), cell.ranges)}


def run_cell(sweep: Sweep, cell: Cell, runs_dir: Path, callbacks: list) -> set[str]:
    """Run (or resume) the search of one cell; trials report through ``callbacks`` to the store.

    Returns the Ray trial ids of the cell's experiment.
    """
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(_trainable, sweep=sweep, cell=cell, cpus=sweep.resources.cpus_per_trial),
        {"cpu": sweep.resources.cpus_per_trial, "gpu": sweep.resources.gpus_per_trial},
    )
    experiment = (runs_dir / sweep.name / cell.id).resolve()
    if tune.Tuner.can_restore(str(experiment)):
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=search_space(cell))
    else:
        shutil.rmtree(experiment, ignore_errors=True)  # killed before Tune saved any state
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(cell),
            tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, search_alg=_make_searcher(sweep, cell), scheduler=_make_scheduler(sweep),
                                        num_samples=sweep.search.num_samples + 1,
                                        max_concurrent_trials=sweep.search.max_concurrent,
                                        # One worker per slot for the whole cell: a new worker per trial
                                        # (Tune's default) idles each slot ~5 s per hand-over.
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=cell.id, storage_path=str((runs_dir / sweep.name).resolve()),
                                      callbacks=callbacks, verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
    results = tuner.fit()
    return {t.trial_id for t in results._experiment_analysis.trials}


def trials_per_cell(sweep: Sweep) -> int:
    """Optuna's samples plus the α = 1 baseline."""
    return sweep.search.num_samples + 1


def epoch_budget(sweep: Sweep) -> int:
    return len(sweep.cells()) * trials_per_cell(sweep) * sweep.training_config().epochs


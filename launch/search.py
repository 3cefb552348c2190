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
from pathlib import Path
from typing import Optional

from analysis.store import TERMINAL
from launch.spec import Cell, Sweep
from wconv.train import TrialConfig, run_trial

BASELINE_ALPHA = 1.0


def _quiet_ray_environment() -> None:
    """Ray 2.6x defaults that hurt on laptops and compute nodes; each may still be set by the user."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no auth token written to ~/.ray
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the results store is our logger
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
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


def trial_key(alpha: tuple[float, ...]) -> str:
    """A trial's name within its cell: its α, exactly. A search never proposes one α twice, so the key
    names the same trial in every run of the cell, and with it the trial's checkpoint folder."""
    return "alpha=" + ",".join(repr(float(a)) for a in alpha)


def _trainable(config: dict, sweep: Sweep, cell: Cell, cpus: float, trials_dir: str) -> None:
    """Ray Tune function trainable: one trial, checkpointed every epoch by ``run_trial`` in its own folder.

    The folder is named by the trial's α, so a trial interrupted in one run (a kill, a requeue,
    another node of a shared filesystem) continues from its last epoch in the next. Tune's own
    checkpoints are not used: they race with its experiment snapshots, and the next run does not
    restore Tune's state anyway (see ``run_cell``).
    """
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(cpus)))
    alpha = alpha_of(config, cell)

    def report(metrics: dict, directory: Path) -> None:
        # ray.train.report fails inside Tune; tune.report is the function-trainable API.
        tune.report(metrics)

    run_trial(trial_config(sweep, cell, alpha), report, Path(trials_dir) / trial_key(alpha))


def _study(sweep: Sweep, cell: Cell, finished: list[dict]):
    """An Optuna study holding the cell's finished trials, as Optuna would have recorded them.

    Completed trials are COMPLETE with their final metric, trials ASHA stopped are PRUNED with
    their per-epoch values (TPE ranks them below every completed one), failed trials are FAIL.
    """
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=cell.id,
                                direction="maximize" if sweep.mode == "max" else "minimize")
    distributions = {name: FloatDistribution(low, high) for name, (low, high) in zip(_alpha_names(cell), cell.ranges)}
    for t in finished:
        params = dict(zip(_alpha_names(cell), t["alpha"]))
        if not all(distributions[k]._contains(v) for k, v in params.items()):
            continue  # the baseline, when α = 1 lies outside the searched range
        value = (t.get("metrics") or {}).get(sweep.metric)
        state = {"completed": TrialState.COMPLETE, "stopped": TrialState.PRUNED}.get(t["status"], TrialState.FAIL)
        if state == TrialState.COMPLETE and value is None:
            state = TrialState.FAIL
        study.add_trial(create_trial(state=state, params=params, distributions=distributions,
                                     value=value if state == TrialState.COMPLETE else None,
                                     intermediate_values=t.get("curve") or {}))
    return storage


def _make_searcher(sweep: Sweep, cell: Cell, finished: list[dict], points: list[tuple[float, ...]]):
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

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # metric and mode are given once, to TuneConfig, which passes them to searcher and scheduler.
    return CellSearch(points_to_evaluate=[dict(zip(_alpha_names(cell), p)) for p in points] or None,
                      # A resumed cell must not replay the first run's random draws (they name finished trials).
                      sampler=optuna.samplers.TPESampler(seed=sweep.search.seed + 7919 * len(finished)),
                      storage=_study(sweep, cell, finished), study_name=cell.id)


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

    # time_attr is the trial's own epoch: Tune's training_iteration restarts at 1 when a trial restarts.
    return BaselineASHA(time_attr="epoch", max_t=sweep.training_config().epochs,
                        grace_period=sweep.scheduler.grace_period,
                        reduction_factor=sweep.scheduler.reduction_factor)


def search_space(cell: Cell) -> dict:
    from ray import tune

    return {name: tune.uniform(low, high) for name, (low, high) in zip(_alpha_names(cell), cell.ranges)}


def run_cell(sweep: Sweep, cell: Cell, runs_dir: Path, callbacks: list, recorded: list[dict]) -> None:
    """Run the rest of one cell's search; trials report through ``callbacks`` to the results store.

    ``recorded`` are the cell's trials in the store, which is the truth about what finished: a
    re-run (after a kill, at any moment) keeps every finished trial, tells them to a fresh
    Optuna study, runs the unfinished ones again from their checkpoints (their α first, so they
    keep their names) and samples only what is still missing. Tune's experiment state is not
    restored: it is saved in the background and can lag the store by seconds, which would lose
    or duplicate trials that started or ended in that gap.
    """
    from ray import tune

    finished = [t for t in recorded if t["status"] in TERMINAL]
    done = {tuple(t["alpha"]) for t in finished}
    baseline = tuple(BASELINE_ALPHA for _ in cell.ranges)
    points = [] if baseline in done else [baseline]
    points += [a for a in dict.fromkeys(tuple(t["alpha"]) for t in recorded) if a not in done and a not in points]
    remaining = trials_per_cell(sweep) - len(finished)
    cell_dir = (runs_dir / sweep.name / cell.id).resolve()
    shutil.rmtree(cell_dir / "tune", ignore_errors=True)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, sweep=sweep, cell=cell, cpus=sweep.resources.cpus_per_trial,
                             trials_dir=str(cell_dir / "trials")),
        {"cpu": sweep.resources.cpus_per_trial, "gpu": sweep.resources.gpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(cell),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode,
                                    search_alg=_make_searcher(sweep, cell, finished, points),
                                    scheduler=_make_scheduler(sweep), num_samples=remaining,
                                    max_concurrent_trials=sweep.search.max_concurrent,
                                    # One worker per slot for the whole cell: a new worker per trial
                                    # (Tune's default) idles each slot ~5 s per hand-over.
                                    reuse_actors=True),
        run_config=tune.RunConfig(name="tune", storage_path=str(cell_dir), callbacks=callbacks, verbose=0),
    )
    tuner.fit()


def trials_per_cell(sweep: Sweep) -> int:
    """Optuna's samples plus the α = 1 baseline."""
    return sweep.search.num_samples + 1


def epoch_budget(sweep: Sweep) -> int:
    return len(sweep.cells()) * trials_per_cell(sweep) * sweep.training_config().epochs


"""One cell's search: an Optuna study proposes α, Ray Tune runs the trials, ASHA stops the poor ones.

The results store is the truth about a cell's trials; the Optuna study is the sampler's memory, kept
in a persistent Optuna storage (a journal file beside the runs, or the sweep's PostgreSQL database) so
that ``optuna-dashboard`` opens it and several workers of one cell share it.

- **Claims.** ``CellSearch.suggest`` decides what a free slot runs inside one locked store
  transaction (``launch/claims.py``): first an unfinished trial whose runner is gone (it continues from its
  checkpoint), then the α = 1 baseline if the cell has none, then a new α from the study — never an α
  the cell already has (a duplicate proposal is told to Optuna as FAIL and asked again), and never
  beyond ``num_samples + 1`` trials. So a resumed or shared cell cannot lose or repeat a trial,
  whatever its samplers' seeds.
- **What Optuna is told** is what the store keeps: a completed trial's ``final[metric]`` (the best
  epoch's value, not the last epoch's), a trial ASHA stopped as PRUNED (with its per-epoch values, which
  TPE ranks below every completed trial), a failed trial as FAIL.
- **The baseline** (α = 1, the standard convolution) runs with the cell's seed to the full budget:
  ASHA neither stops it nor records it in its rungs, and early stopping is off for it. It joins the
  study only when it finishes, and only where α = 1 lies inside the searched ranges.
- **Outages.** The study's reads and writes wait out an outage of a PostgreSQL store as the store's own do
  (``analysis.store.engine.wait_out``); a claim, which asks the study inside the store's transaction, is run
  again whole.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from analysis.arms import FIELDS
from analysis.store import Store
from analysis.store.engine import storage_url, wait_out
from launch.claims import LockedSweep, claim
from launch.cell import (alpha_names, baseline_alpha, is_baseline, record_fields, trial_id,
                         trials_per_cell)
from launch.lease import Holder, gone
from launch.spec import Cell, Sweep
from wconv.status import TERMINAL, Stage, TrialStatus
from wconv.train import BASELINE, FINAL, FINISHED, REPLAY, STATUS, EPOCH


def study_name(sweep: Sweep, cell: Cell) -> str:
    return f"{sweep.name}/{cell.id}"


def study_storage(sweep: Sweep, runs_dir: Path):
    """The persistent Optuna storage of a sweep's studies.

    A PostgreSQL results store also holds the studies, in a schema of their own (``optuna``: Optuna's
    table names would collide with the store's). Anything else gets a journal file beside the runs,
    locked with open(O_EXCL) lock files, which are safe on NFS and Lustre (fcntl locks are not).
    """
    from sqlalchemy.engine import make_url

    url = make_url(sweep.storage)
    if url.get_backend_name() == "postgresql":
        from sqlalchemy import create_engine, text

        from sqlalchemy.exc import DBAPIError

        # Workers starting together race to create the schema and Optuna's tables (CREATE TYPE is not
        # idempotent on PostgreSQL): the losers try again, by when the winner has made them.
        for attempt in range(8):
            try:
                engine = create_engine(url)
                with engine.begin() as conn:
                    conn.execute(text("CREATE SCHEMA IF NOT EXISTS optuna"))
                engine.dispose()
                return optuna.storages.RDBStorage(
                    url.render_as_string(hide_password=False),
                    # pre-ping: a connection the server dropped (a restart, an outage) is replaced, not used
                    engine_kwargs={"connect_args": {"options": "-csearch_path=optuna"}, "pool_pre_ping": True})
            except DBAPIError:
                if attempt == 7:
                    raise
                time.sleep(0.2 * (attempt + 1))
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    path = Path(runs_dir) / sweep.name / "optuna.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def open_study(sweep: Sweep, cell: Cell, storage):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=study_name(sweep, cell), load_if_exists=True,
                                direction="maximize" if sweep.mode == "max" else "minimize")
    study.sampler = make_sampler(sweep, cell, len(study.get_trials(deepcopy=False)))
    return study


class CellGrid(optuna.samplers.GridSampler):
    """Optuna's GridSampler, except that it never calls ``study.stop()`` (which works only inside
    ``study.optimize``): the store's count ends a cell (``num_samples + 1`` trials), not the sampler."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(sweep: Sweep, cell: Cell, asked: int) -> optuna.samplers.BaseSampler:
    """The sweep's sampler (``search.sampler``) for a study that holds ``asked`` trials.

    TPE and random: each process draws from its own stream (the seed offset by the trials so far): the study
    already holds every earlier draw, so a resumed or second worker does not replay the first one's random
    start-up proposals. Grid: one seed everywhere, because GridSampler names a point by its index in the grid
    that its seed shuffles, and the indices in the study (``grid_id``) must mean the same points to every
    process; it proposes points that no trial of the study has taken, so a resumed or second worker moves on.
    The grid's point at α = 1 is the baseline: proposed, it is already in the cell and told as a duplicate."""
    seed = sweep.search.seed
    if sweep.search.sampler == "grid":
        from launch.spec import grid_axes

        return CellGrid(dict(zip(alpha_names(cell), grid_axes(cell.ranges, sweep.search.grid_points))), seed=seed)
    seed += 7919 * asked
    if sweep.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def outcome(result: Optional[dict], error: bool) -> str:
    """completed | stopped | failed, from a trial's last report (None: it never reported)."""
    if error or result is None:
        return TrialStatus.FAILED
    if not result.get(FINISHED):
        return TrialStatus.STOPPED  # the scheduler ended it
    return result.get(STATUS, TrialStatus.FAILED)


class CellSearch(Searcher):
    """A Ray Tune searcher for one cell that claims its trials in the results store (module docstring).

    ``stage`` separates a sweep's search from its confirmation runs, which reuse the machinery.
    """

    def __init__(self, sweep: Sweep, cell: Cell, runs_dir: Path, holder: Holder, *, stage: str = Stage.SEARCH):
        super().__init__(metric=sweep.metric, mode=sweep.mode)
        self.sweep, self.cell, self.holder, self.stage, self.runs_dir = sweep, cell, holder, stage, Path(runs_dir)
        self._open()
        self.distributions = {name: FloatDistribution(low, high)
                              for name, (low, high) in zip(alpha_names(cell), cell.ranges)}
        self.running: dict[str, str] = {}  # Tune trial id -> the store's trial id
        self.alphas: dict[str, tuple[float, ...]] = {}
        self._study(self.reconcile)

    def _open(self) -> None:
        self.store = Store(self.sweep.storage)
        self.study = self._study(lambda: open_study(self.sweep, self.cell, study_storage(self.sweep, self.runs_dir)),
                                 "open the study in")

    def _study(self, action, doing: str = "write the study to"):
        """``action()``, waiting out an outage of the store the study lives in (module docstring)."""
        return wait_out(storage_url(self.sweep.storage), action, doing)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("store", "study")}  # Tune pickles its config

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    # -- Tune's Searcher API -----------------------------------------------------------------------

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric and mode come from the sweep; the space is the cell's α ranges

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the store and the study are this searcher's state (Tune's is not restored)."""

    def suggest(self, tune_trial_id: str):
        alpha = self.claim()
        if alpha is None:
            return Searcher.FINISHED
        self.running[tune_trial_id] = trial_id(self.cell, alpha)
        self.alphas[tune_trial_id] = alpha
        return dict(zip(alpha_names(self.cell), alpha))

    def on_trial_result(self, tune_trial_id: str, result: dict) -> None:
        self._study(lambda: self._report(self.running.get(tune_trial_id), result))

    def _report(self, tid: Optional[str], result: dict) -> None:
        trial = self.study_trial(tid)
        if trial is None or trial.state != TrialState.RUNNING:
            return  # not asked from the study, or told its end while the store was not (a kill in between)
        storage = self.study._storage
        optuna_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, trial.number)
        for report in [*result.get(REPLAY, []), result]:
            if self.metric in report and math.isfinite(float(report[self.metric])):
                storage.set_trial_intermediate_value(optuna_id, int(report[EPOCH]), float(report[self.metric]))

    def on_trial_complete(self, tune_trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        tid = self.running.pop(tune_trial_id, None)
        alpha = self.alphas.pop(tune_trial_id, None)
        if tid is not None:  # tell reads the study's trial first: run again, it tells no trial twice
            self._study(lambda: self.tell(tid, alpha, outcome(result, error), _final_value(result or {}, self.metric)))

    # -- claims ------------------------------------------------------------------------------------

    def claim(self) -> Optional[tuple[float, ...]]:
        """What the next free slot runs, or None when the cell needs nothing more from this worker."""
        cell, owner = self.cell, self.holder.owner

        def decide(tx: LockedSweep) -> Optional[tuple[float, ...]]:
            rows = [r for r in tx.trials(cell.id) if (r.get("stage") or Stage.SEARCH) == self.stage]
            live = {lease["owner"] for lease in tx.leases(cell.id) if lease["owner"] != owner and not gone(lease)}
            mine = set(self.running.values())
            orphans = [r for r in rows if r["status"] not in TERMINAL and r["trial_id"] not in mine
                       and r.get("owner") not in live]
            if orphans:
                row = min(orphans, key=lambda r: (not r["baseline"], r["trial_id"]))
                tx.hand_over_trial(row["trial_id"], owner)
                return tuple(float(a) for a in row["alpha"])
            if len(rows) >= trials_per_cell(self.sweep):
                return None
            keys = {r["trial_id"] for r in rows}
            alpha = baseline_alpha(cell)
            if trial_id(cell, alpha) in keys:
                alpha = self.ask(keys)
            tx.record_trial(trial_id(cell, alpha), owner=owner, status=TrialStatus.RUNNING, stage=self.stage,
                            **record_fields(cell, alpha))
            return alpha

        return claim(self.store, self.sweep.name, decide)

    def ask(self, keys: set[str]) -> tuple[float, ...]:
        """A new α from the study; one the cell already has is told as FAIL and never run."""
        for _ in range(1000):
            trial = self.study.ask(self.distributions)
            alpha = tuple(float(trial.params[name]) for name in alpha_names(self.cell))
            key = trial_id(self.cell, alpha)
            trial.set_user_attr("trial_id", key)
            if key not in keys:
                return alpha
            trial.set_user_attr("duplicate", True)
            self.study.tell(trial, state=TrialState.FAIL)
        raise RuntimeError(f"cell {self.cell.id}: the sampler proposed only α values the cell already has")

    # -- telling Optuna what the store keeps -----------------------------------------------------

    def study_trial(self, tid: Optional[str]) -> Optional[FrozenTrial]:
        """The study's trial of the store's trial ``tid`` (None: not asked from the study)."""
        if tid is None:
            return None
        for t in self.study.get_trials(deepcopy=False):
            if t.user_attrs.get("trial_id") == tid and not t.user_attrs.get("duplicate"):
                return t
        return None

    def tell(self, tid: str, alpha, status: str, value: Optional[float]) -> None:
        state = {TrialStatus.COMPLETED: TrialState.COMPLETE, TrialStatus.STOPPED: TrialState.PRUNED}.get(status, TrialState.FAIL)
        if state == TrialState.COMPLETE and value is None:
            state = TrialState.FAIL
        trial = self.study_trial(tid)
        if trial is not None:
            if trial.state == TrialState.RUNNING:
                self.study.tell(trial.number, value if state == TrialState.COMPLETE else None, state=state)
            return
        params = dict(zip(alpha_names(self.cell), alpha))
        if is_baseline(alpha) and all(d._contains(params[k]) for k, d in self.distributions.items()):
            self.study.add_trial(create_trial(state=state, params=params, distributions=self.distributions,
                                              value=value if state == TrialState.COMPLETE else None,
                                              user_attrs={"trial_id": tid, "baseline": True}))

    def reconcile(self) -> None:
        """Tell the study what the store finished while no driver was there to tell it (a kill between
        the store's write and the study's). The other way round (the study told, the store not), the store's
        trial is claimed again, restarts from its checkpoint, replays its reports and is then recorded; the
        study keeps what it was told (``on_trial_result`` and ``tell`` leave a finished study trial alone)."""
        known = {t.user_attrs.get("trial_id"): t for t in self.study.get_trials(deepcopy=False)
                 if not t.user_attrs.get("duplicate")}
        rows = self.store.trials(sweep=self.sweep.name, cell=self.cell.id, stage=self.stage)
        for row in rows.to_dict("records"):
            trial = known.get(row["trial_id"])
            if row["status"] not in TERMINAL or (trial is not None and trial.state != TrialState.RUNNING):
                continue
            if trial is None and not row["baseline"]:
                continue  # never asked from this study (its storage was deleted): nothing to tell
            value = (row.get("metrics") or {}).get(self.sweep.metric)
            self.tell(row["trial_id"], tuple(row["alpha"]), row["status"], None if value is None else float(value))


def _final_value(result: dict, metric: str) -> Optional[float]:
    """``final[metric]`` of a last report; Tune hands searchers flattened results (``final/<metric>``)."""
    value = (result.get(FINAL) or {}).get(metric, result.get(f"{FINAL}/{metric}"))
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class BaselineASHA(ASHAScheduler):
    """ASHA that never stops the α = 1 baseline and never records it in a rung.

    Ray's ASHA also records every trial's last result into its rungs when the trial completes; the
    baseline's full-budget value there would make every cutoff stricter than ASHA intends.
    """

    def on_trial_result(self, tune_controller, trial, result):
        if result.get(BASELINE):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        if (result or {}).get(BASELINE):
            self.on_trial_remove(tune_controller, trial)
            return
        super().on_trial_complete(tune_controller, trial, result)


def make_scheduler(sweep: Sweep):
    if sweep.scheduler.type == "fifo":
        return FIFOScheduler()
    # time_attr is the trial's own epoch: Tune's training_iteration restarts at 1 when a trial restarts.
    return BaselineASHA(time_attr=EPOCH, max_t=sweep.training_config().epochs,
                        grace_period=sweep.scheduler.grace_period,
                        reduction_factor=sweep.scheduler.reduction_factor)


class PlannedSearch(CellSearch):
    """A fixed list of trials instead of a study: a confirmation's arms (α = 1, the chosen α, and the
    init-scale control) on one fresh seed. Same claims, same store, nothing told to Optuna."""

    def __init__(self, sweep: Sweep, cell: Cell, runs_dir: Path, holder: Holder, plan: list[dict], *,
                 stage: str = Stage.CONFIRM):
        self.plan = plan  # [{"arm": ..., "alpha": (...), <a control's TrialConfig field>: (...)}]
        super().__init__(sweep, cell, runs_dir, holder, stage=stage)

    def _open(self) -> None:
        self.store, self.study = Store(self.sweep.storage), None

    def reconcile(self) -> None:
        """Nothing to reconcile: there is no study."""

    def config(self, arm: str) -> dict:
        planned = next(p for p in self.plan if p["arm"] == arm)
        config = dict(zip(alpha_names(self.cell), planned["alpha"]), arm=arm)
        config.update({f: list(planned[f]) for f in FIELDS.values() if planned.get(f) is not None})
        return config

    def suggest(self, tune_trial_id: str):
        arm = self.claim_arm()
        if arm is None:
            return Searcher.FINISHED
        config = self.config(arm)
        self.running[tune_trial_id] = trial_id(self.cell, tuple(config[n] for n in alpha_names(self.cell)), arm)
        return config

    def claim_arm(self) -> Optional[str]:
        cell, owner = self.cell, self.holder.owner

        def decide(tx: LockedSweep) -> Optional[str]:
            rows = {r["trial_id"]: r for r in tx.trials(cell.id) if r.get("stage") == self.stage}
            live = {lease["owner"] for lease in tx.leases(cell.id) if lease["owner"] != owner and not gone(lease)}
            mine = set(self.running.values())
            for planned in self.plan:
                tid = trial_id(cell, planned["alpha"], planned["arm"])
                row = rows.get(tid)
                if row is None:
                    tx.record_trial(tid, owner=owner, status=TrialStatus.RUNNING, stage=self.stage,
                                    **record_fields(cell, planned["alpha"], planned["arm"]))
                    return planned["arm"]
                if row["status"] not in TERMINAL and tid not in mine and row.get("owner") not in live:
                    tx.hand_over_trial(tid, owner)
                    return planned["arm"]
            return None

        return claim(self.store, self.sweep.name, decide)

    def on_trial_result(self, tune_trial_id: str, result: dict) -> None:
        """Nothing to tell: no study."""

    def on_trial_complete(self, tune_trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        self.running.pop(tune_trial_id, None)

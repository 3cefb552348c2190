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

Fused groups (``resources.group_size: K`` > 1, ``GroupSearch``): a free slot claims up to K trials of the cell at
once, trained as one model (``wconv.fused.run_group``) in one Tune trial. The claim keeps the order above: an
orphaned group is claimed back whole (its members in their recorded order, so it continues from its
``group.pt``; an orphaned trial that trained alone continues alone), else the baseline as member 0 of the cell's
first group, then new α, the study asked up to K times (TPE with ``constant_liar``, so the K proposals spread),
never beyond ``num_samples + 1`` trials: the last group may be smaller. Each member keeps its own row, with the
group it trains in (``group_id``, ``member``). The study is told each member's end as it happens. ASHA decides
per member inside the group (``MemberASHA``): Ray's own rung bookkeeping, filled from the cell's per-epoch rows
in the store (every member's and every lone trial's), so a member is stopped where it would be as a lone trial.
A member that cannot share a group runs alone: the lr-shape control (its learning rate needs an optimiser of its
own) and, with learnable α, the α = 1 members.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket
from ray.tune.search import Searcher

from analysis.arms import FIELDS, Arm
from analysis.store import Store
from analysis.store.engine import storage_url, wait_out
from launch.claims import LockedSweep, claim
from launch.cell import (alpha_names, baseline_alpha, group_id, is_baseline, record_fields, trial_id,
                         trials_per_cell)
from launch.lease import Holder, gone
from launch.spec import Cell, Sweep
from wconv.status import TERMINAL, Stage, TrialStatus
from wconv.train import BASELINE, EPOCH, FINAL, FINISHED, MEMBER, REPLAY, STATUS

MEMBERS = "members"
"""A fused group's Tune config and reports: its members (config: each member's α, arm and controls; report: the
members' reports of one epoch, each with its ``member`` index)."""
GROUP = "group"
"""A fused group's Tune config: its ``group_id`` (``launch.cell.group_id``; None: one trial that trains alone)."""


@dataclass(frozen=True)
class Work:
    """What one Tune trial runs: one trial alone (``group`` None, one member) or a fused group's members, each
    ``{"alpha": (...), "arm": ...}`` plus, in a confirmation, a control's ``TrialConfig`` field."""

    group: Optional[str]
    members: list


def _value(v):
    """A store value, NULL (None, NaN, pandas' NA) as None."""
    return None if v is None or (not isinstance(v, (str, list, tuple, dict)) and pd.isna(v)) else v


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
    # Fused groups ask K α at once: the liar keeps TPE from proposing K times the same neighbourhood.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=sweep.resources.group_size > 1)


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
        self.size = sweep.resources.group_size
        self.running: dict[str, str] = {}  # Tune trial id -> the store's trial id, of a trial alone
        self.groups: dict[str, list[str]] = {}  # Tune trial id -> its members' trial ids, in member order
        self.alphas: dict[str, Any] = {}  # Tune trial id -> its α (a group's: one per member)
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
        work = self.claim()
        if work is None:
            return Searcher.FINISHED
        return self.start(tune_trial_id, work)

    def start(self, tune_trial_id: str, work: "Work") -> dict:
        """Note what the Tune trial ``tune_trial_id`` runs; its config. A trial alone, with groups off, has
        today's config (α by name); a group, or a trial alone among groups, has ``{group, members}``."""
        tids = [trial_id(self.cell, m["alpha"], m.get("arm")) for m in work.members]
        if work.group is None and self.size == 1:
            self.running[tune_trial_id], self.alphas[tune_trial_id] = tids[0], work.members[0]["alpha"]
            return self.config_of(work.members[0])
        self.groups[tune_trial_id] = tids
        self.alphas[tune_trial_id] = [m["alpha"] for m in work.members]
        return {GROUP: work.group, MEMBERS: [dict(m, alpha=list(m["alpha"])) for m in work.members]}

    def config_of(self, member: dict) -> dict:
        """The Tune config of one trial alone, from its entry."""
        return dict(zip(alpha_names(self.cell), member["alpha"]))

    def on_trial_result(self, tune_trial_id: str, result: dict) -> None:
        if tune_trial_id in self.groups:
            tids, alphas = self.groups[tune_trial_id], self.alphas[tune_trial_id]
            for report in result.get(MEMBERS) or []:
                i = int(report[MEMBER])
                self._study(lambda: self._report(tids[i], report))
                if report.get(FINISHED):  # a member that ended: told now, as a lone trial is at its end
                    self._study(lambda: self.tell(tids[i], alphas[i], outcome(report, error=False),
                                                  _final_value(report, self.metric)))
            return
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
        alpha = self.alphas.pop(tune_trial_id, None)
        if tune_trial_id in self.groups:  # members told at their end are left alone (tell tells no trial twice)
            tids = self.groups.pop(tune_trial_id)
            last = {int(r[MEMBER]): r for r in (result or {}).get(MEMBERS) or [] if r.get(FINISHED)}
            for i, tid in enumerate(tids):
                report = last.get(i)
                status = outcome(report, error) if report is not None else TrialStatus.FAILED
                self._study(lambda: self.tell(tid, alpha[i], status, _final_value(report or {}, self.metric)))
            return
        tid = self.running.pop(tune_trial_id, None)
        if tid is not None:  # tell reads the study's trial first: run again, it tells no trial twice
            self._study(lambda: self.tell(tid, alpha, outcome(result, error), _final_value(result or {}, self.metric)))

    # -- claims ------------------------------------------------------------------------------------

    def mine(self) -> set[str]:
        """The store's ids of the trials this searcher runs now (alone, or as members of groups)."""
        return set(self.running.values()) | {tid for tids in self.groups.values() for tid in tids}

    def rows(self, tx: LockedSweep) -> list[dict]:
        """The cell's trials of this stage, in the claim's transaction."""
        return [r for r in tx.trials(self.cell.id) if (r.get("stage") or Stage.SEARCH) == self.stage]

    def orphans(self, tx: LockedSweep, rows: list[dict]) -> list[dict]:
        """Unfinished trials whose runner is gone (not this one, not another live one), baseline first."""
        owner = self.holder.owner
        live = {lease["owner"] for lease in tx.leases(self.cell.id) if lease["owner"] != owner and not gone(lease)}
        mine = self.mine()
        return sorted((r for r in rows if r["status"] not in TERMINAL and r["trial_id"] not in mine
                       and r.get("owner") not in live), key=lambda r: (not r["baseline"], r["trial_id"]))

    def entry(self, row: dict) -> dict:
        """A claimed trial's entry (``Work.members``) from its store row."""
        return {"alpha": tuple(float(a) for a in row["alpha"]), "arm": _value(row.get("arm"))}

    def alone(self, entry: dict) -> bool:
        """Whether the trial of ``entry`` must train alone, never in a group (module docstring)."""
        learnable = self.sweep.training_config().learnable_alpha
        return bool(entry.get(FIELDS[Arm.LR_SHAPE])) or (learnable and is_baseline(entry["alpha"]))

    def take_orphan(self, tx: LockedSweep, rows: list[dict], orphan: dict) -> "Work":
        """Claim ``orphan`` back: its whole group, members in their recorded order (ended ones too: the group
        continues from its ``group.pt`` and hands their results back), or the trial alone."""
        group = _value(orphan.get("group_id"))
        if group is None:
            tx.hand_over_trial(orphan["trial_id"], self.holder.owner)
            return Work(None, [self.entry(orphan)])
        members = sorted((r for r in rows if _value(r.get("group_id")) == group), key=lambda r: int(r["member"]))
        for row in members:
            if row["status"] not in TERMINAL:
                tx.hand_over_trial(row["trial_id"], self.holder.owner)
        return Work(group, [self.entry(r) for r in members])

    def record_work(self, tx: LockedSweep, work: "Work") -> "Work":
        """Record the trials of new ``work`` as running, owned by this runner, in its group."""
        for i, m in enumerate(work.members):
            tx.record_trial(trial_id(self.cell, m["alpha"], m.get("arm")), owner=self.holder.owner,
                            status=TrialStatus.RUNNING, stage=self.stage, group_id=work.group,
                            member=None if work.group is None else i, **record_fields(self.cell, m["alpha"],
                                                                                      m.get("arm")))
        return work

    def claim(self) -> Optional["Work"]:
        """What the next free slot runs, or None when the cell needs nothing more from this worker: an orphan (its
        group whole) first, else new work, decided in one locked transaction."""

        def decide(tx: LockedSweep) -> Optional[Work]:
            rows = self.rows(tx)
            orphans = self.orphans(tx, rows)
            if orphans:
                return self.take_orphan(tx, rows, orphans[0])
            return self.new_work(tx, rows)

        return claim(self.store, self.sweep.name, decide)

    def new_work(self, tx: LockedSweep, rows: list[dict]) -> Optional["Work"]:
        """The baseline if the cell has none (member 0 of a group), then new α from the study up to the group's size;
        None once the cell has all its trials."""
        cell = self.cell
        left = trials_per_cell(self.sweep) - len(rows)
        if left <= 0:
            return None
        keys = {r["trial_id"] for r in rows}
        members = []
        if trial_id(cell, baseline_alpha(cell)) not in keys:
            members.append({"alpha": baseline_alpha(cell), "arm": None})
            if self.size == 1 or self.alone(members[0]):
                return self.record_work(tx, Work(None, members))
        while len(members) < min(self.size, left):
            alpha = self.ask(keys | {trial_id(cell, m["alpha"]) for m in members})
            members.append({"alpha": alpha, "arm": None})
        group = None if self.size == 1 else group_id(cell, members[0]["alpha"])
        return self.record_work(tx, Work(group, members))

    def ask(self, keys: set[str] | list[str]) -> tuple[float, ...]:
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
    """Tune's scheduler for a cell's search. With fused groups it is FIFO: a Tune trial is a whole group, and ASHA
    decides per member inside it (``MemberASHA``)."""
    if sweep.scheduler.type == "fifo" or sweep.resources.group_size > 1:
        return FIFOScheduler()
    # time_attr is the trial's own epoch: Tune's training_iteration restarts at 1 when a trial restarts.
    return BaselineASHA(time_attr=EPOCH, max_t=sweep.training_config().epochs,
                        grace_period=sweep.scheduler.grace_period,
                        reduction_factor=sweep.scheduler.reduction_factor)


@dataclass(frozen=True)
class _Named:
    trial_id: str
    """What Ray's rung bookkeeping reads of a trial."""


class MemberASHA:
    """ASHA's stop decisions for trials that Tune does not schedule one by one: the members of a fused group (and
    a trial alone among groups), decided where they train.

    The rungs are Ray's own (``_Bracket``, built as ``BaselineASHA`` builds its one bracket), filled from the
    store: at rung m, every non-baseline search trial of the cell with a value at epoch ⌈m⌉ — every member's and
    every lone trial's, from every worker and earlier run. A decision then goes exactly as Ray's ASHA decides a
    lone trial's report: a trial already recorded at a rung goes on; else its value is cut against the rung's
    (1 − 1/reduction_factor) quantile and recorded there, so the members of one group that reach a rung in the same
    epoch are decided one after another, as Tune decides trials' reports in the order they arrive. A trial's last
    report (it ended there: patience) is recorded, not decided. The baseline is never stopped and never recorded; a
    report at or past the budget is not decided (the trial ends there).
    """

    def __init__(self, sweep: Sweep, cell: Cell, store: Optional[Store] = None):
        self.sweep, self.cell = sweep, cell
        self.metric, self.op = sweep.metric, 1.0 if sweep.mode == "max" else -1.0
        self.max_t = sweep.training_config().epochs
        self.store = store
        self.bracket: Optional[_Bracket] = None
        self.epoch: Optional[int] = None

    def new_bracket(self) -> _Bracket:
        s = self.sweep.scheduler
        return _Bracket(s.grace_period, self.max_t, s.reduction_factor, 0, stop_last_trials=True)

    def decide(self, tid: str, report: dict) -> Optional[str]:
        """None to go on, or the reason that stops the trial ``tid`` after its (unfinished) epoch ``report``."""
        epoch, value = int(report[EPOCH]), report.get(self.metric)
        if report.get(BASELINE) or epoch >= self.max_t or value is None or not math.isfinite(float(value)):
            return None  # as Ray's ASHA: no metric, no decision (a failed epoch ends the trial anyway)
        if self.epoch != epoch:  # the rungs as the store has them now; then this epoch's decisions are added
            self.bracket, self.epoch = self.rungs(epoch), epoch
        action = self.bracket.on_result(_Named(tid), epoch, self.op * float(value))
        if report.get(FINISHED):  # ended here (patience): recorded in its rung, as Ray records a completed trial's
            return None
        return f"stopped by ASHA after {epoch} epoch(s)" if action == TrialScheduler.STOP else None

    def rungs(self, epoch: int) -> _Bracket:
        """A bracket whose rungs up to ``epoch`` hold the cell's values in the store."""
        bracket = self.new_bracket()
        due = {math.ceil(m): recorded for m, recorded in bracket._rungs if m <= epoch}
        if not due:
            return bracket
        if self.store is None:
            self.store = Store(self.sweep.storage)
        trials = self.store.trials(sweep=self.sweep.name, cell=self.cell.id, stage=Stage.SEARCH)
        if trials.empty:
            return bracket
        counted = set(trials.loc[~trials["baseline"].fillna(False).astype(bool), "trial_id"])
        rows = self.store.epochs(self.sweep.name, epochs=sorted(due))
        for row in rows.to_dict("records"):
            value = (row["metrics"] or {}).get(self.metric)
            if row["trial_id"] in counted and value is not None:
                due[int(row["epoch"])][row["trial_id"]] = self.op * float(value)
        return bracket


class PlannedSearch(CellSearch):
    """A fixed list of trials instead of a study: a confirmation's arms (α = 1, the chosen α, and the
    controls) on one fresh seed. Same claims, same store, nothing told to Optuna. With groups, the arms that can
    share one train as one group (up to ``group_size``): they share the seed, hence the data order."""

    def __init__(self, sweep: Sweep, cell: Cell, runs_dir: Path, holder: Holder, plan: list[dict], *,
                 stage: str = Stage.CONFIRM):
        self.plan = plan  # [{"arm": ..., "alpha": (...), <a control's TrialConfig field>: (...)}]
        super().__init__(sweep, cell, runs_dir, holder, stage=stage)

    def _open(self) -> None:
        self.store, self.study = Store(self.sweep.storage), None

    def reconcile(self) -> None:
        """Nothing to reconcile: there is no study."""

    def planned(self, arm: str) -> dict:
        planned = next(p for p in self.plan if p["arm"] == arm)
        return {"alpha": tuple(float(a) for a in planned["alpha"]), "arm": arm,
                **{f: [float(a) for a in planned[f]] for f in FIELDS.values() if planned.get(f) is not None}}

    def config(self, arm: str) -> dict:
        planned = self.planned(arm)
        return dict(zip(alpha_names(self.cell), planned.pop("alpha")), **planned)

    def config_of(self, member: dict) -> dict:
        return self.config(member["arm"])

    def entry(self, row: dict) -> dict:
        return self.planned(row["arm"])

    def new_work(self, tx: LockedSweep, rows: list[dict]) -> Optional[Work]:
        """The next unclaimed arm of the plan, with as many of the following ones as can share its group."""
        claimed = {r["trial_id"] for r in rows}
        todo = [self.planned(p["arm"]) for p in self.plan
                if trial_id(self.cell, p["alpha"], p["arm"]) not in claimed]
        if not todo:
            return None
        first = todo[0]
        if self.size == 1 or self.alone(first):
            return self.record_work(tx, Work(None, [first]))
        members = [first, *[m for m in todo[1:] if not self.alone(m)][:self.size - 1]]
        return self.record_work(tx, Work(group_id(self.cell, first["alpha"], first["arm"]), members))

    def on_trial_result(self, tune_trial_id: str, result: dict) -> None:
        """Nothing to tell: no study."""

    def on_trial_complete(self, tune_trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        self.running.pop(tune_trial_id, None)
        self.groups.pop(tune_trial_id, None)
        self.alphas.pop(tune_trial_id, None)

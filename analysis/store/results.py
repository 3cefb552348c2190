"""The results: sweeps, their trials and each trial's per-epoch metrics, written and read through ``Store``.

Many processes write at once (Ray trial workers on one node, SLURM array tasks across nodes), so every write is
one idempotent upsert: recording the same sweep, trial or epoch again updates the row and never duplicates it.
A trial's write may be *fenced* by its owner (the runner holding the cell's lease, ``launch/lease.py``): a runner
that lost its lease cannot overwrite its successor's trial. Which URL to use, and how writes are made, is the
engine's (``analysis/store/engine.py``).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import pandas as pd
from sqlalchemy import and_, select
from sqlalchemy.engine import make_url

from analysis.store.engine import Database, now
from analysis.store.schema import coerce, dumps, epochs_table, sweeps_table, trials_table
from wconv.status import TERMINAL, Stage, TrialStatus

TRIAL_FIELDS = tuple(c.name for c in trials_table.columns if c.name not in ("sweep", "trial_id"))


class Store(Database):
    """Sweeps, trials and epochs in one database; see ``engine`` for which URL to use.

    ``create=False`` opens an existing database for reading only: it creates no file, table or
    column, and refuses a missing database (``NoResults``), an empty file or one that wconv did not write.
    """

    # -- writes --------------------------------------------------------------------------------

    def record_sweep(self, name: str, *, task: str, metric: str, mode: str, spec: dict,
                     spec_hash: str | None = None) -> None:
        """Create or update the sweep ``name``; ``created_at`` keeps its first value. A password in the spec's
        ``storage`` is left out: the database is no place for it."""
        if mode not in ("min", "max"):
            raise ValueError(f"sweep {name!r}: mode must be 'min' or 'max', got {mode!r}")
        storage = make_url(spec["storage"]) if isinstance(spec.get("storage"), str) else None
        if storage is not None and storage.password is not None:
            spec = dict(spec, storage=storage._replace(password=None).render_as_string(hide_password=False))
        c = sweeps_table.c
        recorded = self.read(select(c.task, c.metric, c.mode, c.spec_hash).where(c.name == name))
        if spec_hash is not None and recorded.to_dict("records") == [dict(task=task, metric=metric, mode=mode,
                                                                          spec_hash=spec_hash)]:
            return  # already recorded: no write, so a run that is then refused never waits for the write lock
        stamp = now()
        values = dict(name=name, task=task, metric=metric, mode=mode, spec=dumps(spec), spec_hash=spec_hash,
                      created_at=stamp, updated_at=stamp)
        self.upsert(sweeps_table, values, ["name"], ["task", "metric", "mode", "spec", "spec_hash", "updated_at"])

    def record_trial(self, sweep: str, trial_id: str, *, reopen: bool = False, owner: str | None = None,
                     **fields: Any) -> bool:
        """Create or update one trial with the given fields only (partial updates are fine).

        ``alpha`` (a number or a sequence) also fills ``alpha_1``/``alpha_2``; dict and list fields
        are stored as JSON. A ``status="running"`` write for a trial that already reached a terminal
        status (completed, stopped, failed) is ignored as a whole: it is a late or retried message.
        Pass ``reopen=True`` when a finished trial really runs again (e.g. resumed after a failure).
        With ``owner``, the write is fenced: it changes a trial only while ``owner`` holds it (a runner
        that lost its lease cannot overwrite its successor). Returns False when the write was ignored.
        """
        return self.write(lambda conn: self.record_trial_in(conn, sweep, trial_id, reopen=reopen, owner=owner,
                                                            **fields))

    def record_trial_in(self, conn, sweep: str, trial_id: str, *, reopen: bool = False, owner: str | None = None,
                        **fields: Any) -> bool:
        """``record_trial`` inside ``conn``'s write transaction (a claim, ``launch/claims.py``)."""
        unknown = sorted(set(fields) - set(TRIAL_FIELDS))
        if unknown:
            raise TypeError(f"unknown trial field(s) {unknown}; known: {', '.join(TRIAL_FIELDS)}")
        if "status" in fields and fields["status"] not in set(TrialStatus):
            raise ValueError(f"trial {sweep}/{trial_id}: status must be one of {tuple(TrialStatus)}, "
                             f"got {fields['status']!r}")
        if "stage" in fields and fields["stage"] not in set(Stage):
            raise ValueError(f"trial {sweep}/{trial_id}: stage must be one of {tuple(Stage)}, got {fields['stage']!r}")
        values = {name: coerce(trials_table.c[name], value) for name, value in fields.items()}
        if "alpha" in fields:
            alpha = _alpha_list(fields["alpha"])
            values["alpha"] = dumps(alpha)
            if alpha is not None:
                values.setdefault("alpha_1", alpha[0] if len(alpha) > 0 else None)
                values.setdefault("alpha_2", alpha[1] if len(alpha) > 1 else None)
        update = [*values, "updated_at"]
        values.update(sweep=sweep, trial_id=trial_id, updated_at=now())
        values.setdefault("started_at", values["updated_at"])  # on insert only: not in `update`
        values.setdefault("stage", Stage.SEARCH.value)
        c = trials_table.c
        conditions = []
        if values.get("status") == TrialStatus.RUNNING and not reopen:
            conditions.append(c.status.is_(None) | c.status.not_in(TERMINAL))
        if owner is not None:
            values.setdefault("owner", owner)
            conditions.append(c.owner.is_(None) | (c.owner == owner))
        where = and_(*conditions) if conditions else None
        return self.upsert_in(conn, trials_table, values, ["sweep", "trial_id"], update, where=where)

    def record_epoch(self, sweep: str, trial_id: str, epoch: int, metrics: dict) -> None:
        """Create or replace the metrics of one epoch of one trial."""
        values = dict(sweep=sweep, trial_id=trial_id, epoch=int(epoch), metrics=dumps(metrics))
        self.upsert(epochs_table, values, ["sweep", "trial_id", "epoch"], ["metrics"])

    def record_epochs(self, sweep: str, trial_id: str, epochs: dict[int, dict], *, owner: str | None = None) -> bool:
        """Several epochs of one trial in one transaction (a replay after a restart); with ``owner``,
        only while ``owner`` holds the trial (see ``record_trial``). Returns False when ignored."""

        def record(conn) -> bool:
            if owner is not None:
                c = trials_table.c
                holder = conn.execute(select(c.owner).where(c.sweep == sweep, c.trial_id == trial_id)).scalar()
                if holder not in (None, owner):
                    return False
            for epoch, metrics in epochs.items():
                values = dict(sweep=sweep, trial_id=trial_id, epoch=int(epoch), metrics=dumps(metrics))
                self.upsert_in(conn, epochs_table, values, ["sweep", "trial_id", "epoch"], ["metrics"])
            return True

        return self.write(record)

    # -- reads ---------------------------------------------------------------------------------

    def sweep(self, name: str) -> dict | None:
        """The sweep ``name`` as a dict (``spec`` parsed), or None if it was never recorded."""
        df = self.sweeps(name=name)
        return None if df.empty else df.iloc[0].to_dict()

    def sweeps(self, *, name: str | None = None) -> pd.DataFrame:
        """All sweeps (or one), ``spec`` parsed back into a dict."""
        stmt = select(*self.present(sweeps_table)).order_by(sweeps_table.c.name)
        if name is not None:
            stmt = stmt.where(sweeps_table.c.name == name)
        return self.read(stmt)

    def trial(self, sweep: str, trial_id: str) -> dict | None:
        """One trial as a dict, or None if it was never recorded."""
        c = trials_table.c
        df = self.read(select(*self.present(trials_table)).where(c.sweep == sweep, c.trial_id == trial_id))
        return None if df.empty else df.iloc[0].to_dict()

    def trials(
        self,
        sweep: str | None = None,
        model: str | None = None,
        kernel: int | None = None,
        status: str | Iterable[str] | None = None,
        *,
        cell: str | None = None,
        stage: str | None = None,
    ) -> pd.DataFrame:
        """Trials matching every given filter, ``alpha`` as a list and the JSON fields as dicts."""
        c = trials_table.c
        stmt = select(*self.present(trials_table)).order_by(c.sweep, c.model, c.kernel_size, c.seed, c.cell,
                                                             c.trial_id)
        if sweep is not None:
            stmt = stmt.where(c.sweep == sweep)
        if model is not None:
            stmt = stmt.where(c.model == model)
        if kernel is not None:
            stmt = stmt.where(c.kernel_size == int(kernel))
        if status is not None:
            stmt = stmt.where(c.status.in_([status] if isinstance(status, str) else list(status)))
        if cell is not None:
            stmt = stmt.where(c.cell == cell)
        if stage is not None and "stage" in self.columns.get("trials", ()):
            stmt = stmt.where(c.stage == stage)
        elif stage not in (None, Stage.SEARCH):
            return self.read(stmt.where(False))  # a schema-1 database has search trials only
        return self.read(stmt)

    def terminal_counts(self, sweep: str, *, stage: str = Stage.SEARCH) -> dict[str, int]:
        """Per cell of ``sweep``: how many of its trials reached a terminal status."""
        trials = self.trials(sweep=sweep, stage=stage)
        if trials.empty:
            return {}
        return trials[trials["status"].isin(TERMINAL)].groupby("cell").size().astype(int).to_dict()

    def seconds_per_epoch(self) -> dict[str, float]:
        """Median wall time per epoch of every model's trials so far (what ``wconv plan`` estimates from)."""
        trials = self.trials()
        if trials.empty:
            return {}
        trials = trials[(trials["epochs_run"].fillna(0) > 0) & trials["wall_time_s"].notna()]
        per_epoch = trials["wall_time_s"] / trials["epochs_run"].astype(float)
        return per_epoch.groupby(trials["model"]).median().to_dict()

    def epochs(self, sweep: str, trial_id: str | None = None, *, epochs: Iterable[int] | None = None) -> pd.DataFrame:
        """Per-epoch metrics (``metrics`` as a dict) of one sweep, optionally of one trial or only at ``epochs``, in
        epoch order."""
        c = epochs_table.c
        stmt = select(epochs_table).where(c.sweep == sweep).order_by(c.trial_id, c.epoch)
        if trial_id is not None:
            stmt = stmt.where(c.trial_id == trial_id)
        if epochs is not None:
            stmt = stmt.where(c.epoch.in_([int(e) for e in epochs]))
        return self.read(stmt)


def _alpha_list(alpha: Any) -> list[float] | None:
    if alpha is None:
        return None
    if isinstance(alpha, str):
        alpha = json.loads(alpha)
    if hasattr(alpha, "tolist"):
        alpha = alpha.tolist()
    if isinstance(alpha, (int, float)):
        alpha = [alpha]
    return [float(a) for a in alpha]

"""Claims: what a runner sees and changes of one sweep's cell in one locked transaction of the results store.

A free slot of a cell decides what it runs — an orphaned trial to continue, the baseline, a new α — from the
cell's trials and leases, and records its choice, with no other runner of the sweep claiming in between:
``claim(store, sweep, decide)`` runs ``decide(LockedSweep)`` in one write transaction. SQLite: ``BEGIN
IMMEDIATE`` holds the database's write lock. PostgreSQL: the sweep's row is locked ``FOR UPDATE`` (the sweep is
recorded before any trial is claimed). What is decided is ``launch/search.py``'s.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from sqlalchemy import select, update

from analysis.store import Store
from analysis.store.schema import leases_table, records, sweeps_table, trials_table
from wconv.status import TERMINAL

T = TypeVar("T")


class LockedSweep:
    """One sweep inside a claim's transaction: its trials and leases, read and changed on ``conn``."""

    def __init__(self, store: Store, conn, sweep: str):
        self.store, self.conn, self.sweep = store, conn, sweep

    def trials(self, cell: str) -> list[dict]:
        c = trials_table.c
        return records(self.conn.execute(select(trials_table).where(c.sweep == self.sweep, c.cell == cell)))

    def record_trial(self, trial_id: str, **fields: Any) -> bool:
        """``Store.record_trial`` in this transaction."""
        return self.store.record_trial_in(self.conn, self.sweep, trial_id, **fields)

    def leases(self, cell: str) -> list[dict]:
        c = leases_table.c
        return records(self.conn.execute(select(leases_table).where(c.sweep == self.sweep, c.cell == cell)))

    def hand_over_trial(self, trial_id: str, new: str) -> None:
        """One unfinished trial whose runner is gone now belongs to ``new``."""
        c = trials_table.c
        self.conn.execute(update(trials_table).where(c.sweep == self.sweep, c.trial_id == trial_id,
                                                     c.status.not_in(TERMINAL)).values(owner=new))

    def hand_over(self, cell: str, old: str, new: str) -> None:
        """The unfinished trials ``old`` left in ``cell`` now belong to ``new``."""
        c = trials_table.c
        self.conn.execute(update(trials_table).where(c.sweep == self.sweep, c.cell == cell, c.owner == old,
                                                     c.status.not_in(TERMINAL)).values(owner=new))


def claim(store: Store, sweep: str, decide: Callable[[LockedSweep], T]) -> T:
    """``decide(LockedSweep)`` in one write transaction during which no other process claims trials of ``sweep``
    (module docstring); what it returns, once committed."""

    def locked(conn) -> T:
        if store.engine.dialect.name == "postgresql":
            conn.execute(select(sweeps_table.c.name).where(sweeps_table.c.name == sweep).with_for_update())
        return decide(LockedSweep(store, conn, sweep))

    return store.write(locked)

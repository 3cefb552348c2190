"""SLURM job records: which jobs a sweep was submitted as, on which cluster profile, with which array tasks
(index -> cell and worker), and whether they were cancelled. ``wconv status`` and ``wconv cancel`` read them;
``launch/slurm.py`` writes them. They live in the results store's database (``jobs``), over its engine."""

from __future__ import annotations

import pandas as pd
from sqlalchemy import select, update

from analysis.store import Database
from analysis.store.engine import now
from analysis.store.schema import dumps, jobs_table

SUBMITTED, CANCELLED = "submitted", "cancelled"


def record_job(db: Database, sweep: str, job_id: str, *, kind: str, cluster: dict, tasks: list,
               state: str = SUBMITTED) -> None:
    stamp = now()
    values = dict(sweep=sweep, job_id=str(job_id), kind=kind, cluster=dumps(cluster), tasks=dumps(tasks),
                  state=state, submitted_at=stamp, updated_at=stamp)
    db.upsert(jobs_table, values, ["sweep", "job_id"], ["kind", "cluster", "tasks", "state", "updated_at"])


def set_job_state(db: Database, sweep: str, job_id: str, state: str) -> None:
    c = jobs_table.c
    db.write(lambda conn: conn.execute(update(jobs_table).where(c.sweep == sweep, c.job_id == str(job_id))
                                       .values(state=state, updated_at=now())))


def jobs(db: Database, sweep: str | None = None) -> pd.DataFrame:
    """The sweep's (or every sweep's) jobs in the order they were submitted."""
    if "jobs" not in db.columns:
        return pd.DataFrame(columns=[c.name for c in jobs_table.columns])
    stmt = select(jobs_table).order_by(jobs_table.c.submitted_at)
    if sweep is not None:
        stmt = stmt.where(jobs_table.c.sweep == sweep)
    return db.read(stmt)

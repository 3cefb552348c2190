"""Who runs a cell: a lease in the results store's database, held by one runner process and refreshed by a
heartbeat. The leases are kept here (``take_lease``, ``heartbeat``, ``release_lease``, ``interrupt``,
``leases``), over the results store's engine; ``LeaseKeeper`` holds them for one process.

A runner is a ``wconv run`` process, or one SLURM array task (one of the cell's ``workers``). Two
*independent* runs of one sweep never collide: the second finds the cell's lease held and refuses.
Workers of one cell hold one lease each (``worker`` 0 … N−1) and share the cell's trials through
``launch/claims.py`` (see ``launch/search.py``).

A lease is taken over at once when its owner is provably gone, and otherwise only after its
heartbeat has been silent for ``lease_timeout()`` seconds (default 300, env ``WCONV_LEASE_TIMEOUT_S``):
- the same host, and the owner's pid no longer runs (or runs a different process, started later);
- the same SLURM array task restarted after a requeue (its owner name is the job and task id).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, NoReturn, Optional

import pandas as pd
import psutil
from sqlalchemy import delete, select, update

from analysis.store import Database, Store
from analysis.store.engine import back_since, now
from analysis.store.schema import leases_table, trials_table
from launch.claims import claim
from wconv.status import TrialStatus

DEFAULT_LEASE_TIMEOUT_S = 300.0


def lease_timeout() -> float:
    return float(os.environ.get("WCONV_LEASE_TIMEOUT_S", DEFAULT_LEASE_TIMEOUT_S))


class LeaseHeld(Exception):
    """Another live runner holds the cell; the message is one line naming it and how to take over."""


@dataclass(frozen=True)
class Holder:
    """This process, as a lease records it."""

    owner: str
    host: str
    pid: int
    process_started: float
    slurm_job: Optional[str]

    def row(self) -> dict:
        return asdict(self)


def this_process() -> Holder:
    """The lease holder for this process: a SLURM array task by its job and task id (a requeued task
    is the same holder), anything else by host, pid and start time."""
    host, pid = socket.gethostname(), os.getpid()
    started = psutil.Process(pid).create_time()
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        slurm = f"{job}_{task}" if task is not None and os.environ.get("SLURM_ARRAY_JOB_ID") else job
        return Holder(f"slurm:{slurm}", host, pid, started, slurm)
    return Holder(f"{host}:{pid}:{started:.2f}", host, pid, started, None)


def silent_for(lease: dict) -> float:
    """Seconds since the lease's last heartbeat, counted from when this process last reached the store again after
    an outage (``analysis.store.engine.back_since``) if that is later: no runner could beat while it was down."""
    beat = lease.get("heartbeat_at")
    if beat is None:
        return float("inf")
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=timezone.utc)
    silence = (datetime.now(timezone.utc) - beat).total_seconds()
    return min(silence, time.time() - back_since())


def gone(lease: dict) -> bool:
    """Whether the lease's owner can no longer be running (see the module docstring)."""
    if silent_for(lease) > lease_timeout():
        return True
    if lease.get("host") != socket.gethostname() or lease.get("pid") is None:
        return False
    try:
        started = psutil.Process(int(lease["pid"])).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return True
    recorded = lease.get("process_started")
    return recorded is not None and abs(started - float(recorded)) > 1.0


def stopped(lease: dict) -> bool:
    """Whether the lease's owner is a stopped process of this host (SIGSTOP, Ctrl-Z, a suspended job)."""
    if lease.get("host") != socket.gethostname() or lease.get("pid") is None:
        return False
    try:
        return psutil.Process(int(lease["pid"])).status() == psutil.STATUS_STOPPED
    except (psutil.Error, ValueError):
        return False


def describe(lease: dict, sweep: str, cell: str) -> str:
    """One line: who holds the cell, and how to take it over."""
    where = f"pid {lease.get('pid')} on {lease.get('host')}"
    if lease.get("slurm_job"):
        where = f"SLURM job {lease['slurm_job']} ({where})"
    if stopped(lease):
        where += f", which is stopped (resume it with kill -CONT {lease['pid']})"
    return (f"sweep {sweep!r} cell {cell} is being run by {where}, heartbeat {silent_for(lease):.0f} s ago; "
            f"wait for it to finish, end it (the lease of a run that ended is taken over at once on the same host), "
            f"or run again once its heartbeat has been silent for {lease_timeout():.0f} s")


# -- the leases table --------------------------------------------------------------------------------


def take_lease(store: Store, sweep: str, cell: str, worker: int, holder: dict, *,
               gone: Callable[[dict], bool]) -> dict | None:
    """Take the lease on ``(sweep, cell, worker)`` for ``holder`` (owner, host, pid, process_started,
    slurm_job). Returns None when taken (free, already ours, or its owner is ``gone``), else the
    lease row of the live owner. A lease taken over hands its owner's unfinished trials of the cell
    to the new owner, in the same transaction.
    """

    def take(tx) -> dict | None:
        current = next((row for row in tx.leases(cell) if row["worker"] == worker), None)
        if current is not None and current["owner"] != holder["owner"] and not gone(current):
            return current
        stamp = now()
        values = dict(holder, sweep=sweep, cell=cell, worker=worker, taken_at=stamp, heartbeat_at=stamp)
        store.upsert_in(tx.conn, leases_table, values, ["sweep", "cell", "worker"],
                        [k for k in values if k not in ("sweep", "cell", "worker")])
        if current is not None and current["owner"] != holder["owner"]:
            tx.hand_over(cell, current["owner"], holder["owner"])
        return None

    return claim(store, sweep, take)


def heartbeat(db: Database, sweep: str, owner: str) -> int:
    """Refresh every lease ``owner`` holds in ``sweep``; returns how many it still holds."""
    c = leases_table.c
    return db.write(lambda conn: conn.execute(update(leases_table).where(c.sweep == sweep, c.owner == owner)
                                              .values(heartbeat_at=now())).rowcount)


def release_lease(db: Database, sweep: str, cell: str, owner: str) -> None:
    """Give up ``owner``'s leases on ``cell`` (done, or interrupted): the next runner takes over at once."""
    c = leases_table.c
    db.write(lambda conn: conn.execute(delete(leases_table).where(c.sweep == sweep, c.cell == cell,
                                                                  c.owner == owner)))


def interrupt(db: Database, sweep: str, owners: Iterable[str]) -> int:
    """Mark the running trials of ``owners`` interrupted and drop their leases (their jobs were cancelled):
    the next runner of the sweep continues those trials at once. Returns how many were running."""
    owners = list(owners)
    t, lease = trials_table.c, leases_table.c

    def drop(conn) -> int:
        n = conn.execute(update(trials_table)
                         .where(t.sweep == sweep, t.owner.in_(owners), t.status == TrialStatus.RUNNING.value)
                         .values(status=TrialStatus.INTERRUPTED.value, updated_at=now())).rowcount
        conn.execute(delete(leases_table).where(lease.sweep == sweep, lease.owner.in_(owners)))
        return n

    return db.write(drop)


def leases(db: Database, sweep: str | None = None) -> pd.DataFrame:
    """The leases of ``sweep`` (or of every sweep), by cell and worker."""
    c = leases_table.c
    stmt = select(*db.present(leases_table)).order_by(c.sweep, c.cell, c.worker)
    if sweep is not None:
        stmt = stmt.where(c.sweep == sweep)
    return db.read(stmt)


def exit_unavailable(exc: BaseException) -> NoReturn:
    """End this process for a store outage: one line, exit 75 (``EXIT_UNAVAILABLE``); run the command again."""
    from analysis.store import EXIT_UNAVAILABLE

    print(f"wconv: {exc}", file=sys.stderr, flush=True)
    os._exit(EXIT_UNAVAILABLE)


when_unavailable: Callable[[BaseException], NoReturn] = exit_unavailable
"""What the heartbeat thread does when the store stayed away for ``WCONV_STORE_RETRY_S``: ``exit_unavailable``,
or in a SLURM array task ``launch.slurm.requeue_self``."""


class LeaseKeeper:
    """The leases this process holds in one sweep, and the heartbeat that keeps them.

    If the store says a lease was taken over (another runner judged this one gone), the process stops
    at once rather than write on: no trial may run twice.
    """

    def __init__(self, store_url: str, sweep: str, holder: Optional[Holder] = None):
        self.store_url, self.sweep = store_url, sweep
        self.holder = holder or this_process()
        self.store = Store(store_url)
        self.held: set[tuple[str, int]] = set()
        self.interval = max(0.5, min(30.0, lease_timeout() / 4))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def take(self, cell: str, worker: int = 0) -> None:
        """Hold ``(cell, worker)`` or raise ``LeaseHeld`` naming its live owner.

        A lease held by a live owner is refused from a read first, without the write lock: a runner
        stopped inside a write transaction keeps that lock, and the refusal must not wait for it."""
        held = leases(self.store, self.sweep)
        for current in held[(held["cell"] == cell) & (held["worker"] == worker)].to_dict("records"):
            if current["owner"] != self.holder.owner and not gone(current):
                raise LeaseHeld(describe(current, self.sweep, cell))
        with self._lock:
            current = take_lease(self.store, self.sweep, cell, worker, self.holder.row(), gone=gone)
            if current is not None:
                raise LeaseHeld(describe(current, self.sweep, cell))
            self.held.add((cell, worker))
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="wconv-lease-heartbeat", daemon=True)
            self._thread.start()

    def release(self, cell: str) -> None:
        with self._lock:
            self.held = {h for h in self.held if h[0] != cell}
            release_lease(self.store, self.sweep, cell, self.holder.owner)

    def release_all(self) -> None:
        for cell in {c for c, _ in self.held}:
            self.release(cell)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.store.close()

    def __enter__(self) -> "LeaseKeeper":
        return self

    def __exit__(self, *exc) -> None:
        self.release_all()
        self.close()

    def _beat(self) -> None:
        from analysis.store import StoreError, StoreUnavailable

        while not self._stop.wait(self.interval):
            with self._lock:
                expected = len(self.held)
                try:
                    held = heartbeat(self.store, self.sweep, self.holder.owner)
                except StoreUnavailable as e:  # waited out for WCONV_STORE_RETRY_S: end the run, resumable
                    when_unavailable(e)
                except StoreError as e:  # a database hiccup: try again at the next beat
                    print(f"wconv: lease heartbeat failed ({e}); retrying", file=sys.stderr, flush=True)
                    continue
            if held < expected and not self._stop.is_set():
                print(f"wconv: a lease of this runner on sweep {self.sweep!r} was taken over by another runner; "
                      "stopping so that no trial runs twice", file=sys.stderr, flush=True)
                os._exit(3)

"""The results store: one schema for sweeps, trials and per-epoch metrics, behind any SQLAlchemy URL.

Many processes write at once (Ray trial workers on one node, SLURM array tasks across nodes), so
every write is one idempotent upsert: recording the same sweep, trial or epoch again updates the
row and never duplicates it.

Storage:
- ``sqlite:///results/wconv.db`` (the default) is right for one machine; it runs in WAL mode with a
  busy timeout so concurrent writers wait instead of failing.
  A plain path (``results.db``) names a SQLite file too; ``storage_url`` turns what a user wrote into the
  one URL every command uses, with a SQLite file's path made absolute.
- SQLite's locking is unsafe on network filesystems (NFS, Lustre, GPFS): WAL needs shared memory
  that only works when all processes are on one host. On a cluster use PostgreSQL, e.g.
  ``postgresql+psycopg://user:password@dbhost/wconv``.

Leases: the process that runs a cell holds a lease on it (``take_lease``), refreshed by a heartbeat;
a second runner of the same cell is refused, and a lease whose owner is gone is taken over together
with the trials it left running (see ``launch/lease.py`` for who counts as gone).

Schema versions: a database records the version that wrote it. An older one is upgraded in place
(columns and tables added); one written by a newer wconv is refused.

Create one ``Store`` per process (an engine must not cross a fork).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import pandas as pd
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    and_,
    delete,
    event,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

DEFAULT_URL = "sqlite:///results/wconv.db"

STATUSES = ("running", "interrupted", "completed", "stopped", "failed")
TERMINAL = ("completed", "stopped", "failed")
STAGES = ("search", "confirm")
SCHEMA_VERSION = 2
"""1: sweeps, trials, epochs. 2: meta, leases, jobs; trials.stage/arm/checkpoint/owner; sweeps.spec_hash."""

metadata = MetaData()

meta_table = Table(
    "meta",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text),
)

sweeps_table = Table(
    "sweeps",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("task", String(100)),
    Column("metric", String(100)),
    Column("mode", String(3)),
    Column("spec", Text),  # JSON
    Column("spec_hash", String(64)),
    Column("created_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True)),
)

trials_table = Table(
    "trials",
    metadata,
    Column("sweep", String(200), primary_key=True),
    Column("trial_id", String(200), primary_key=True),
    Column("cell", String(200)),
    Column("model", String(100)),
    Column("kernel_size", Integer),
    Column("alpha", Text),  # JSON list of the free coefficients
    Column("alpha_1", Float),
    Column("alpha_2", Float),
    Column("seed", Integer),
    Column("baseline", Boolean, default=False),
    Column("status", String(16), default="running"),
    Column("reason", Text),
    Column("epochs_run", Integer),
    Column("metrics", Text),  # JSON
    Column("metric_settings", Text),  # JSON
    Column("wall_time_s", Float),
    Column("host", String(200)),
    Column("device", String(200)),
    Column("stage", String(16), default="search"),
    Column("arm", String(32)),  # confirmation: alpha | baseline | init-scale
    Column("checkpoint", Text),  # the trial's checkpoint folder
    Column("owner", String(300)),  # the lease owner running it (see leases)
    Column("started_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True)),
)

epochs_table = Table(
    "epochs",
    metadata,
    Column("sweep", String(200), primary_key=True),
    Column("trial_id", String(200), primary_key=True),
    Column("epoch", Integer, primary_key=True),
    Column("metrics", Text),  # JSON
)

leases_table = Table(
    "leases",
    metadata,
    Column("sweep", String(200), primary_key=True),
    Column("cell", String(200), primary_key=True),
    Column("worker", Integer, primary_key=True),
    Column("owner", String(300)),
    Column("host", String(200)),
    Column("pid", Integer),
    Column("process_started", Float),  # the owner process's start time: a reused pid is not the owner
    Column("slurm_job", String(100)),
    Column("taken_at", DateTime(timezone=True)),
    Column("heartbeat_at", DateTime(timezone=True)),
)

jobs_table = Table(
    "jobs",
    metadata,
    Column("sweep", String(200), primary_key=True),
    Column("job_id", String(100), primary_key=True),
    Column("kind", String(32)),  # sweep | confirm
    Column("cluster", Text),  # the profile, JSON
    Column("tasks", Text),  # JSON: array task index -> {cell, worker}
    Column("state", String(32)),  # submitted | cancelled
    Column("submitted_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True)),
)

_JSON_COLUMNS = {"spec", "alpha", "metrics", "metric_settings", "cluster", "tasks"}
_TRIAL_FIELDS = tuple(c.name for c in trials_table.columns if c.name not in ("sweep", "trial_id"))
_BUSY_TIMEOUT_MS = 60_000


class StoreError(RuntimeError):
    """The store cannot be opened or written; the message is one line naming the URL (absolute, password masked)."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _json_default(obj: Any) -> Any:
    # numpy arrays/scalars and torch tensors arrive in metrics dicts; keep the store free of their types.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, default=_json_default)


def _loads(text: str | None) -> Any:
    return json.loads(text) if isinstance(text, str) else None  # NULL may arrive as None or NaN


def _mask(url: str | URL) -> str:
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


_URL_EXAMPLES = "use a file path, sqlite:///path/to/results.db or postgresql+psycopg://user:password@host/db"


def storage_url(url: str | Path) -> str:
    """The results store's SQLAlchemy URL from what a user wrote (``--storage``, a sweep's ``storage``): a URL,
    or a plain path naming a SQLite file (``results.db``, ``./runs/wconv.db``, ``~/wconv.db``).

    A SQLite file's path is made absolute here, once: every message then names the file that was meant, and
    trials running in other working directories write to the same one. A malformed URL — ``sqlite://rel.db``,
    whose two slashes make ``rel.db`` a host name — is a ``StoreError`` in one line saying what to write.
    """
    text = str(url).strip()
    if not text:
        raise StoreError(f"results store {text!r} is empty; {_URL_EXAMPLES}")
    if "://" not in text:
        return URL.create("sqlite", database=str(Path(text).expanduser().resolve())).render_as_string(
            hide_password=False)
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        reason = f" ({exc})" if isinstance(exc, ValueError) else ""
        raise StoreError(f"results store {_mask(text)!r} is not a database URL{reason}; {_URL_EXAMPLES}") from None
    if parsed.get_backend_name() != "sqlite":
        return text
    if parsed.host or parsed.port or parsed.username:
        scheme, rest = text.split("://", 1)
        raise StoreError(f"results store {_mask(text)!r} is not a SQLite URL: its two slashes make "
                         f"{parsed.host or rest!r} a host name; a file takes three ({scheme}:///{rest}) or "
                         "give the path alone")
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return text
    return parsed.set(database=str(Path(database).expanduser().resolve())).render_as_string(hide_password=False)


def masked_url(url: str | Path) -> str:
    """``storage_url(url)`` with the password masked: how messages name a store (the URL as given if malformed)."""
    try:
        return _mask(storage_url(url))
    except StoreError:
        return _mask(str(url))


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


class NoResults(StoreError):
    """A read-only look at a database that does not exist yet."""


class StoreLocked(StoreError):
    """SQLite's write lock stayed taken for the whole busy timeout. A process stopped inside a write transaction
    (SIGSTOP, Ctrl-Z, a suspended job) keeps the lock until it resumes or ends, so the message names the lease
    holders, read without writing, and says which of them is stopped."""


class Store:
    """Sweeps, trials and epochs in one database; see the module docstring for which URL to use.

    ``create=False`` opens an existing database for reading only: it creates no file, table or
    column, and refuses a missing database (``NoResults``), an empty file or one that wconv did not write.
    """

    def __init__(self, url: str | Path = DEFAULT_URL, *, create: bool = True):
        self.url = storage_url(url)
        self.create = create
        parsed = make_url(self.url)
        self._masked = _mask(self.url)
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise StoreError(
                f"results store {self._masked!r}: backend {backend!r} is not supported; "
                "use sqlite:///path/to/results.db or postgresql+psycopg://user:password@host/db"
            )
        connect_args: dict[str, Any] = {}
        if backend == "sqlite":
            self._check_sqlite_file(parsed.database or "")
        elif "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = 10  # an unreachable host should fail in seconds, not minutes
        try:
            self.engine: Engine = create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)
        except (NoSuchModuleError, ImportError) as exc:
            raise StoreError(
                f"results store {self._masked!r}: database driver not available ({_first_line(exc)}); "
                "install it, or for PostgreSQL use postgresql+psycopg:// (psycopg 3)"
            ) from None
        if backend == "sqlite":
            _configure_sqlite(self.engine, wal=create)
        self._open()

    def _check_sqlite_file(self, database: str) -> None:
        if database in ("", ":memory:") or database.startswith("file:"):
            return
        path = Path(database).expanduser()
        if not self.create:
            if not path.exists():
                raise NoResults(f"no results yet at {self._masked!r} (no such file); run a sweep first, "
                                "or point --storage at the database it wrote")
            if path.is_dir():
                raise StoreError(f"results store {self._masked!r} is a directory; point --storage at a database file")
            if path.stat().st_size == 0:
                raise StoreError(f"results store {self._masked!r} is an empty file, not a wconv results database; "
                                 "point --storage at the database a sweep wrote")
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"results store {self._masked!r}: cannot create its directory ({exc.strerror}); "
                "choose a writable path"
            ) from None

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self._masked!r})"

    def _open(self) -> None:
        """Connect, check the schema version, and (when writing) create or upgrade the tables."""
        tables = set(self._retry_locked(lambda conn: inspect(conn).get_table_names()))
        if tables and not {"sweeps", "trials", "epochs"} <= tables:
            raise StoreError(f"results store {self._masked!r} is not a wconv results database (it has tables "
                             f"{sorted(tables)[:5]}); point --storage at a database wconv wrote")
        if not tables and not self.create:
            raise NoResults(f"no results yet at {self._masked!r} (no wconv tables); run a sweep first")
        version = self._version() if tables else SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise StoreError(f"results store {self._masked!r} was written by a newer wconv (schema {version}, this "
                             f"wconv reads ≤ {SCHEMA_VERSION}); upgrade wconv to read it")
        self._columns = self._read_columns()
        if self.create:
            if self.engine.dialect.name == "sqlite":
                # On the driver's connection: SQLAlchemy would wrap it in a transaction, where SQLite refuses it.
                self._retry_locked(_set_wal)
            # An up-to-date store opens without taking the write lock, so that a writer stopped mid-transaction
            # (a suspended SLURM job, a frozen node) cannot block `wconv cancel` or `status` before they act.
            behind = version < SCHEMA_VERSION or any(
                {c.name for c in table.columns} - self._columns.get(name, set())
                for name, table in metadata.tables.items())
            if behind:
                self._create_tables()
                self._columns = self._read_columns()

    def _read_columns(self) -> dict[str, set[str]]:
        with self.engine.connect() as conn:
            insp = inspect(conn)
            return {name: {c["name"] for c in insp.get_columns(name)}
                    for name in insp.get_table_names() if name in metadata.tables}

    def _retry_locked(self, action):
        """Run ``action(conn)``; switching a SQLite file to WAL takes an exclusive lock that does not wait on
        the busy timeout, so processes opening a new file together retry instead of failing."""
        for attempt in range(40):
            try:
                with self.engine.connect() as conn:
                    return action(conn)
            except DBAPIError as exc:
                if "locked" in str(exc.orig) and attempt < 39:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                raise StoreError(
                    f"cannot open results store {self._masked!r}: {_first_line(exc)}; check the path, or that the "
                    "server is running and the host, port, user and password are right"
                ) from None

    def _version(self) -> int:
        with self.engine.connect() as conn:
            if "meta" not in inspect(conn).get_table_names():
                return 1
            value = conn.execute(select(meta_table.c.value).where(meta_table.c.key == "schema_version")).scalar()
        return int(value) if value is not None else 1

    def _create_tables(self) -> None:
        # Workers that start together race to create the tables: on PostgreSQL the loser of a
        # concurrent CREATE TABLE fails (duplicate pg_type row), so try again; by then they exist.
        for attempt in range(5):
            try:
                with self._write() as conn:
                    metadata.create_all(conn)
                    _add_missing_columns(conn)
                    self._upsert_in(conn, meta_table, {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                                    ["key"], ["value"])
                return
            except DBAPIError as exc:
                if attempt == 4:
                    raise StoreError(
                        f"cannot create tables in results store {self._masked!r}: {_first_line(exc)}; "
                        "check that the user may create tables"
                    ) from None
                time.sleep(0.1 * (attempt + 1))

    # -- writes --------------------------------------------------------------------------------

    def _write(self):
        """A transaction that takes SQLite's write lock up front (``BEGIN IMMEDIATE``); see ``_configure_sqlite``."""
        return _WriteTransaction(self)

    def _locked(self) -> StoreLocked:
        """The write lock was not free for ``_BUSY_TIMEOUT_MS``: most likely a writer stopped or hung inside a
        transaction (a stopped process keeps its lock until it resumes or ends). Names the processes holding
        leases, read without writing (in WAL mode readers never wait for the writer), stopped ones first."""
        try:
            leases = self.leases()
        except StoreError:
            leases = pd.DataFrame()
        holders = {}
        for _, row in leases.iterrows():
            holders.setdefault(row["owner"], (row, []))[1].append(f"{row['sweep']!r} cell {row['cell']}")
        shown = sorted((_lease_holder(row, cells) for row, cells in holders.values()), key=lambda h: not h[1])
        stopped = [pid for _, is_stopped, pid in shown if is_stopped]
        what = (f"resume it (kill -CONT {stopped[0]}) or end it (kill {stopped[0]}), then run again" if stopped else
                "a process writing to it is stopped or hung (another wconv, a sqlite3 shell): resume or end it, "
                "then run again")
        who = ("; ".join(text for text, _, _ in shown[:3]) + ("; …" if len(shown) > 3 else "") if shown
               else "no runner holds a lease in it")
        return StoreLocked(f"results store {self._masked!r} stayed locked by another process for "
                           f"{_BUSY_TIMEOUT_MS / 1000:.0f} s, so nothing was written; {who}; {what}")

    def _upsert_in(self, conn, table: Table, values: dict, keys: Iterable[str], update: Iterable[str],
                   where=None) -> bool:
        """Insert or update one row inside ``conn``'s transaction; False when ``where`` kept the old row."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(table).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: stmt.excluded[c] for c in update}, where=where
        )
        return conn.execute(stmt).rowcount > 0

    def _upsert(self, table: Table, values: dict, keys: Iterable[str], update: Iterable[str], where=None) -> bool:
        self._require_write()
        try:
            with self._write() as conn:
                return self._upsert_in(conn, table, values, keys, update, where)
        except DBAPIError as exc:
            raise StoreError(f"cannot write to results store {self._masked!r}: {_first_line(exc)}") from exc

    def _require_write(self) -> None:
        if not self.create:
            raise RuntimeError("this Store was opened read-only (create=False)")

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
        recorded = self._read(select(c.task, c.metric, c.mode, c.spec_hash).where(c.name == name))
        if spec_hash is not None and recorded.to_dict("records") == [dict(task=task, metric=metric, mode=mode,
                                                                          spec_hash=spec_hash)]:
            return  # already recorded: no write, so a run that is then refused never waits for the write lock
        now = _now()
        values = dict(name=name, task=task, metric=metric, mode=mode, spec=_dumps(spec), spec_hash=spec_hash,
                      created_at=now, updated_at=now)
        self._upsert(sweeps_table, values, ["name"], ["task", "metric", "mode", "spec", "spec_hash", "updated_at"])

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
        self._require_write()
        try:
            with self._write() as conn:
                return self._record_trial_in(conn, sweep, trial_id, reopen=reopen, owner=owner, **fields)
        except DBAPIError as exc:
            raise StoreError(f"cannot write to results store {self._masked!r}: {_first_line(exc)}") from exc

    def _record_trial_in(self, conn, sweep: str, trial_id: str, *, reopen: bool = False, owner: str | None = None,
                         **fields: Any) -> bool:
        unknown = sorted(set(fields) - set(_TRIAL_FIELDS))
        if unknown:
            raise TypeError(f"unknown trial field(s) {unknown}; known: {', '.join(_TRIAL_FIELDS)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"trial {sweep}/{trial_id}: status must be one of {STATUSES}, got {fields['status']!r}")
        if "stage" in fields and fields["stage"] not in STAGES:
            raise ValueError(f"trial {sweep}/{trial_id}: stage must be one of {STAGES}, got {fields['stage']!r}")
        values = {name: _coerce(trials_table.c[name], value) for name, value in fields.items()}
        if "alpha" in fields:
            alpha = _alpha_list(fields["alpha"])
            values["alpha"] = _dumps(alpha)
            if alpha is not None:
                values.setdefault("alpha_1", alpha[0] if len(alpha) > 0 else None)
                values.setdefault("alpha_2", alpha[1] if len(alpha) > 1 else None)
        update = [*values, "updated_at"]
        values.update(sweep=sweep, trial_id=trial_id, updated_at=_now())
        values.setdefault("started_at", values["updated_at"])  # on insert only: not in `update`
        values.setdefault("stage", "search")
        c = trials_table.c
        conditions = []
        if values.get("status") == "running" and not reopen:
            conditions.append(c.status.is_(None) | c.status.not_in(TERMINAL))
        if owner is not None:
            values.setdefault("owner", owner)
            conditions.append(c.owner.is_(None) | (c.owner == owner))
        where = and_(*conditions) if conditions else None
        return self._upsert_in(conn, trials_table, values, ["sweep", "trial_id"], update, where=where)

    def record_epoch(self, sweep: str, trial_id: str, epoch: int, metrics: dict) -> None:
        """Create or replace the metrics of one epoch of one trial."""
        values = dict(sweep=sweep, trial_id=trial_id, epoch=int(epoch), metrics=_dumps(metrics))
        self._upsert(epochs_table, values, ["sweep", "trial_id", "epoch"], ["metrics"])

    def record_epochs(self, sweep: str, trial_id: str, epochs: dict[int, dict], *, owner: str | None = None) -> bool:
        """Several epochs of one trial in one transaction (a replay after a restart); with ``owner``,
        only while ``owner`` holds the trial (see ``record_trial``). Returns False when ignored."""
        self._require_write()
        try:
            with self._write() as conn:
                if owner is not None:
                    c = trials_table.c
                    holder = conn.execute(select(c.owner).where(c.sweep == sweep, c.trial_id == trial_id)).scalar()
                    if holder not in (None, owner):
                        return False
                for epoch, metrics in epochs.items():
                    values = dict(sweep=sweep, trial_id=trial_id, epoch=int(epoch), metrics=_dumps(metrics))
                    self._upsert_in(conn, epochs_table, values, ["sweep", "trial_id", "epoch"], ["metrics"])
                return True
        except DBAPIError as exc:
            raise StoreError(f"cannot write to results store {self._masked!r}: {_first_line(exc)}") from exc

    # -- cells: one transaction for "what is there, and what do I take" -------------------------

    @contextmanager
    def locked(self, sweep: str) -> Iterator["LockedSweep"]:
        """One write transaction during which no other process claims trials of ``sweep``.

        SQLite: ``BEGIN IMMEDIATE`` holds the database's write lock. PostgreSQL: the sweep's row is
        locked ``FOR UPDATE`` (the sweep is recorded before any trial is claimed).
        """
        self._require_write()
        try:
            with self._write() as conn:
                if self.engine.dialect.name == "postgresql":
                    conn.execute(select(sweeps_table.c.name).where(sweeps_table.c.name == sweep).with_for_update())
                yield LockedSweep(self, conn, sweep)
        except DBAPIError as exc:
            raise StoreError(f"cannot write to results store {self._masked!r}: {_first_line(exc)}") from exc

    # -- leases --------------------------------------------------------------------------------

    def take_lease(self, sweep: str, cell: str, worker: int, holder: dict, *, gone: Callable[[dict], bool]) -> dict | None:
        """Take the lease on ``(sweep, cell, worker)`` for ``holder`` (owner, host, pid, process_started,
        slurm_job). Returns None when taken (free, already ours, or its owner is ``gone``), else the
        lease row of the live owner. A lease taken over hands its owner's unfinished trials of the cell
        to the new owner, in the same transaction.
        """
        with self.locked(sweep) as tx:
            return tx.take_lease(cell, worker, holder, gone=gone)

    def heartbeat(self, sweep: str, owner: str) -> int:
        """Refresh every lease ``owner`` holds in ``sweep``; returns how many it still holds."""
        self._require_write()
        with self._write() as conn:
            c = leases_table.c
            return conn.execute(update(leases_table).where(c.sweep == sweep, c.owner == owner)
                                .values(heartbeat_at=_now())).rowcount

    def release_lease(self, sweep: str, cell: str, owner: str) -> None:
        """Give up ``owner``'s leases on ``cell`` (done, or interrupted): the next runner takes over at once."""
        self._require_write()
        with self._write() as conn:
            c = leases_table.c
            conn.execute(delete(leases_table).where(c.sweep == sweep, c.cell == cell, c.owner == owner))

    def interrupt(self, sweep: str, owners: Iterable[str]) -> int:
        """Mark the running trials of ``owners`` interrupted and drop their leases (their jobs were cancelled):
        the next runner of the sweep continues those trials at once. Returns how many were running."""
        self._require_write()
        owners = list(owners)
        with self._write() as conn:
            t, lease = trials_table.c, leases_table.c
            n = conn.execute(update(trials_table).where(t.sweep == sweep, t.owner.in_(owners), t.status == "running")
                             .values(status="interrupted", updated_at=_now())).rowcount
            conn.execute(delete(leases_table).where(lease.sweep == sweep, lease.owner.in_(owners)))
        return n

    def leases(self, sweep: str | None = None) -> pd.DataFrame:
        stmt = select(*self._present(leases_table)).order_by(leases_table.c.sweep, leases_table.c.cell,
                                                              leases_table.c.worker)
        if sweep is not None:
            stmt = stmt.where(leases_table.c.sweep == sweep)
        return _parse(self._read(stmt))

    # -- SLURM jobs ----------------------------------------------------------------------------

    def record_job(self, sweep: str, job_id: str, *, kind: str, cluster: dict, tasks: list, state: str = "submitted") -> None:
        now = _now()
        values = dict(sweep=sweep, job_id=str(job_id), kind=kind, cluster=_dumps(cluster), tasks=_dumps(tasks),
                      state=state, submitted_at=now, updated_at=now)
        self._upsert(jobs_table, values, ["sweep", "job_id"], ["kind", "cluster", "tasks", "state", "updated_at"])

    def set_job_state(self, sweep: str, job_id: str, state: str) -> None:
        self._require_write()
        with self._write() as conn:
            c = jobs_table.c
            conn.execute(update(jobs_table).where(c.sweep == sweep, c.job_id == str(job_id))
                         .values(state=state, updated_at=_now()))

    def jobs(self, sweep: str | None = None) -> pd.DataFrame:
        if "jobs" not in self._columns:
            return pd.DataFrame(columns=[c.name for c in jobs_table.columns])
        stmt = select(jobs_table).order_by(jobs_table.c.submitted_at)
        if sweep is not None:
            stmt = stmt.where(jobs_table.c.sweep == sweep)
        return _parse(self._read(stmt))

    # -- reads ---------------------------------------------------------------------------------

    def _present(self, table: Table) -> list:
        """The table's columns that this database has (an older schema opened read-only lacks some)."""
        have = self._columns.get(table.name)
        if have is None:
            return list(table.columns)
        return [c if c.name in have else _null(c) for c in table.columns]

    def _read(self, stmt) -> pd.DataFrame:
        try:
            with self.engine.connect() as conn:
                result = conn.execute(stmt)
                return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        except DBAPIError as exc:
            raise StoreError(f"cannot read results store {self._masked!r}: {_first_line(exc)}") from exc

    def sweep(self, name: str) -> dict | None:
        """The sweep ``name`` as a dict (``spec`` parsed), or None if it was never recorded."""
        df = self.sweeps(name=name)
        return None if df.empty else df.iloc[0].to_dict()

    def sweeps(self, *, name: str | None = None) -> pd.DataFrame:
        """All sweeps (or one), ``spec`` parsed back into a dict."""
        stmt = select(*self._present(sweeps_table)).order_by(sweeps_table.c.name)
        if name is not None:
            stmt = stmt.where(sweeps_table.c.name == name)
        return _parse(self._read(stmt))

    def trial(self, sweep: str, trial_id: str) -> dict | None:
        """One trial as a dict, or None if it was never recorded."""
        c = trials_table.c
        df = _parse(self._read(select(*self._present(trials_table)).where(c.sweep == sweep, c.trial_id == trial_id)))
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
        stmt = select(*self._present(trials_table)).order_by(c.sweep, c.model, c.kernel_size, c.seed, c.cell,
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
        if stage is not None and "stage" in self._columns.get("trials", ()):
            stmt = stmt.where(c.stage == stage)
        elif stage not in (None, "search"):
            return _parse(self._read(stmt.where(False)))  # a schema-1 database has search trials only
        return _parse(self._read(stmt))

    def terminal_counts(self, sweep: str, *, stage: str = "search") -> dict[str, int]:
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

    def epochs(self, sweep: str, trial_id: str | None = None) -> pd.DataFrame:
        """Per-epoch metrics (``metrics`` as a dict) of one sweep, optionally of one trial, in epoch order."""
        c = epochs_table.c
        stmt = select(epochs_table).where(c.sweep == sweep).order_by(c.trial_id, c.epoch)
        if trial_id is not None:
            stmt = stmt.where(c.trial_id == trial_id)
        return _parse(self._read(stmt))


class LockedSweep:
    """What a runner sees and changes of one sweep inside ``Store.locked``: trials and leases."""

    def __init__(self, store: Store, conn, sweep: str):
        self.store, self.conn, self.sweep = store, conn, sweep

    def trials(self, cell: str) -> list[dict]:
        c = trials_table.c
        result = self.conn.execute(select(trials_table).where(c.sweep == self.sweep, c.cell == cell))
        return _parse(pd.DataFrame(result.fetchall(), columns=list(result.keys()))).to_dict("records")

    def record_trial(self, trial_id: str, **fields: Any) -> bool:
        return self.store._record_trial_in(self.conn, self.sweep, trial_id, **fields)

    def leases(self, cell: str) -> list[dict]:
        c = leases_table.c
        result = self.conn.execute(select(leases_table).where(c.sweep == self.sweep, c.cell == cell))
        return _parse(pd.DataFrame(result.fetchall(), columns=list(result.keys()))).to_dict("records")

    def take_lease(self, cell: str, worker: int, holder: dict, *, gone: Callable[[dict], bool]) -> dict | None:
        current = next((row for row in self.leases(cell) if row["worker"] == worker), None)
        if current is not None and current["owner"] != holder["owner"] and not gone(current):
            return current
        now = _now()
        values = dict(holder, sweep=self.sweep, cell=cell, worker=worker, taken_at=now, heartbeat_at=now)
        self.store._upsert_in(self.conn, leases_table, values, ["sweep", "cell", "worker"],
                              [k for k in values if k not in ("sweep", "cell", "worker")])
        if current is not None and current["owner"] != holder["owner"]:
            self.hand_over(cell, current["owner"], holder["owner"])
        return None

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



def _null(column: Column):
    from sqlalchemy import cast, null

    return cast(null(), column.type).label(column.name)


def _set_wal(conn) -> None:
    """WAL, unless the file is already in it (asking takes no lock; switching takes an exclusive one)."""
    dbapi = conn.connection.dbapi_connection
    if dbapi.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        dbapi.execute("PRAGMA journal_mode=WAL")


def _add_missing_columns(conn) -> None:
    """Upgrade an older schema in place: add the columns this version's tables have and the database lacks."""
    insp = inspect(conn)
    preparer = conn.dialect.identifier_preparer
    for table in metadata.sorted_tables:
        have = {c["name"] for c in insp.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                kind = column.type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {preparer.quote(table.name)} ADD COLUMN "
                                     f"{preparer.quote(column.name)} {kind}")
        if table.name == "trials" and "stage" not in have:
            conn.execute(update(trials_table).values(stage="search"))


def _lease_holder(lease, cells: list[str]) -> tuple[str, bool, Any]:
    """One lease holder for ``StoreLocked``: its text, whether it is a stopped process of this host, its pid."""
    import socket

    import psutil

    where, stopped, details = f"pid {lease['pid']} on {lease['host']}", False, []
    if lease.get("slurm_job"):
        where = f"SLURM job {lease['slurm_job']} ({where})"
    if lease["host"] == socket.gethostname() and not pd.isna(lease["pid"]):
        try:
            process = psutil.Process(int(lease["pid"]))
            alive = abs(process.create_time() - float(lease["process_started"])) <= 1.0
            stopped = alive and process.status() == psutil.STATUS_STOPPED
            details.append("stopped" if stopped else "running" if alive else "no longer running")
        except (psutil.Error, TypeError, ValueError):
            details.append("no longer running")
    if not pd.isna(lease["heartbeat_at"]):
        details.append(f"heartbeat {(_now() - lease['heartbeat_at']).total_seconds():.0f} s ago")
    shown = ", ".join(cells[:2]) + (", …" if len(cells) > 2 else "")
    return f"sweep {shown} is leased to {where} ({', '.join(details)})", stopped, lease["pid"]


class _WriteTransaction:
    def __init__(self, store: Store):
        self._store = store
        self._conn = store.engine.connect().execution_options(wconv_write=True)
        self._tx = None

    def __enter__(self):
        try:
            self._tx = self._conn.begin()  # SQLite: BEGIN IMMEDIATE, which waits up to the busy timeout
        except DBAPIError as exc:
            self._conn.close()
            if self._store.engine.dialect.name == "sqlite" and "locked" in str(exc.orig):
                raise self._store._locked() from None
            raise
        return self._conn

    def __exit__(self, exc_type, *_):
        try:
            if exc_type is None:
                self._tx.commit()
            else:
                self._tx.rollback()
        finally:
            self._conn.close()


def _configure_sqlite(engine: Engine, wal: bool = True) -> None:
    """Busy timeout, and BEGIN IMMEDIATE for writes (WAL is set once, in ``Store._open``, after the file was
    found to be wconv's or new: it is a property of the file, and a foreign file must not be changed).

    pysqlite starts a *deferred* transaction; when such a transaction upgrades to a write while
    another process writes, SQLite may answer "database is locked" at once, without waiting for
    the busy timeout. Taking the write lock at BEGIN makes writers queue on the busy timeout instead.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (see "begin" below)
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")  # before journal_mode, which may wait
        if wal:
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        immediate = conn.get_execution_options().get("wconv_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


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


def _coerce(column: Column, value: Any) -> Any:
    """Plain Python values for the driver (psycopg does not adapt numpy scalars)."""
    if value is None:
        return None
    if column.name in _JSON_COLUMNS:
        return _dumps(value)
    if isinstance(column.type, Boolean):
        return bool(value)
    if isinstance(column.type, Integer):
        return int(value)
    if isinstance(column.type, Float):
        return float(value)
    return value


def _parse(df: pd.DataFrame) -> pd.DataFrame:
    """JSON text back to lists/dicts, timestamps to UTC, integer columns to nullable integers."""
    for name in _JSON_COLUMNS & set(df.columns):
        df[name] = df[name].map(_loads).astype(object)
    for name in ("created_at", "updated_at", "started_at", "taken_at", "heartbeat_at", "submitted_at"):
        if name in df.columns:
            # SQLite hands back naive datetimes; they were written in UTC.
            df[name] = pd.to_datetime(df[name], utc=True)
    for name in ("kernel_size", "seed", "epochs_run", "epoch", "worker", "pid"):
        if name in df.columns:
            df[name] = df[name].astype("Int64")
    for name in ("alpha_1", "alpha_2", "wall_time_s"):
        if name in df.columns:
            df[name] = df[name].astype(float)
    if "baseline" in df.columns:
        df["baseline"] = df["baseline"].astype("boolean")
    return df

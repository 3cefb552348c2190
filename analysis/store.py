"""The results store: one schema for sweeps, trials and per-epoch metrics, behind any SQLAlchemy URL.

Many processes write at once (Ray trial workers on one node, SLURM array tasks across nodes), so
every write is one idempotent upsert: recording the same sweep, trial or epoch again updates the
row and never duplicates it.

Storage:
- ``sqlite:///results/wconv.db`` (the default) is right for one machine; it runs in WAL mode with a
  busy timeout so concurrent writers wait instead of failing.
- SQLite's locking is unsafe on network filesystems (NFS, Lustre, GPFS): WAL needs shared memory
  that only works when all processes are on one host. On a cluster use PostgreSQL, e.g.
  ``postgresql+psycopg://user:password@dbhost/wconv``.

Create one ``Store`` per process (an engine must not cross a fork).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

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
    event,
    select,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

DEFAULT_URL = "sqlite:///results/wconv.db"

STATUSES = ("running", "completed", "stopped", "failed")
TERMINAL = ("completed", "stopped", "failed")

metadata = MetaData()

sweeps_table = Table(
    "sweeps",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("task", String(100)),
    Column("metric", String(100)),
    Column("mode", String(3)),
    Column("spec", Text),  # JSON
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

_JSON_COLUMNS = {"spec", "alpha", "metrics", "metric_settings"}
_TRIAL_FIELDS = tuple(c.name for c in trials_table.columns if c.name not in ("sweep", "trial_id"))
_BUSY_TIMEOUT_MS = 60_000


class StoreError(RuntimeError):
    """The store cannot be opened or written; the message is one line naming the URL (password masked)."""


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


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


class Store:
    """Sweeps, trials and epochs in one database; see the module docstring for which URL to use."""

    def __init__(self, url: str = DEFAULT_URL):
        self.url = url
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise StoreError(
                f"results store {_mask(url)!r} is not a database URL; "
                "use sqlite:///path/to/results.db or postgresql+psycopg://user:password@host/db"
            ) from None
        self._masked = _mask(parsed)
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise StoreError(
                f"results store {self._masked!r}: backend {backend!r} is not supported; "
                "use sqlite:///path/to/results.db or postgresql+psycopg://user:password@host/db"
            )
        connect_args: dict[str, Any] = {}
        if backend == "sqlite":
            database = parsed.database or ""
            if database not in ("", ":memory:") and not database.startswith("file:"):
                try:
                    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(
                        f"results store {self._masked!r}: cannot create its directory ({exc.strerror}); "
                        "choose a writable path"
                    ) from None
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
            _configure_sqlite(self.engine)
        self._create_tables()

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self._masked!r})"

    def _create_tables(self) -> None:
        try:
            with self.engine.connect():
                pass
        except DBAPIError as exc:
            raise StoreError(
                f"cannot open results store {self._masked!r}: {_first_line(exc)}; "
                "check the path or that the server is running and the host, port, user and password are right"
            ) from None
        # Workers that start together race to create the tables: on PostgreSQL the loser of a
        # concurrent CREATE TABLE fails (duplicate pg_type row), so try again; by then they exist.
        for attempt in range(5):
            try:
                with self._write() as conn:
                    metadata.create_all(conn)
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
        return _WriteTransaction(self.engine)

    def _upsert(self, table: Table, values: dict, keys: Iterable[str], update: Iterable[str], where=None) -> None:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(table).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: stmt.excluded[c] for c in update}, where=where
        )
        try:
            with self._write() as conn:
                conn.execute(stmt)
        except DBAPIError as exc:
            raise StoreError(f"cannot write to results store {self._masked!r}: {_first_line(exc)}") from exc

    def record_sweep(self, name: str, *, task: str, metric: str, mode: str, spec: dict) -> None:
        """Create or update the sweep ``name``; ``created_at`` keeps its first value."""
        if mode not in ("min", "max"):
            raise ValueError(f"sweep {name!r}: mode must be 'min' or 'max', got {mode!r}")
        now = _now()
        values = dict(name=name, task=task, metric=metric, mode=mode, spec=_dumps(spec), created_at=now, updated_at=now)
        self._upsert(sweeps_table, values, ["name"], ["task", "metric", "mode", "spec", "updated_at"])

    def record_trial(self, sweep: str, trial_id: str, *, reopen: bool = False, **fields: Any) -> None:
        """Create or update one trial with the given fields only (partial updates are fine).

        ``alpha`` (a number or a sequence) also fills ``alpha_1``/``alpha_2``; dict and list fields
        are stored as JSON. A ``status="running"`` write for a trial that already reached a terminal
        status (completed, stopped, failed) is ignored as a whole: it is a late or retried message.
        Pass ``reopen=True`` when a finished trial really runs again (e.g. resumed after a failure).
        """
        unknown = sorted(set(fields) - set(_TRIAL_FIELDS))
        if unknown:
            raise TypeError(f"unknown trial field(s) {unknown}; known: {', '.join(_TRIAL_FIELDS)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"trial {sweep}/{trial_id}: status must be one of {STATUSES}, got {fields['status']!r}")
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
        where = None
        if values.get("status") == "running" and not reopen:
            c = trials_table.c
            where = c.status.is_(None) | c.status.not_in(TERMINAL)
        self._upsert(trials_table, values, ["sweep", "trial_id"], update, where=where)

    def record_epoch(self, sweep: str, trial_id: str, epoch: int, metrics: dict) -> None:
        """Create or replace the metrics of one epoch of one trial."""
        values = dict(sweep=sweep, trial_id=trial_id, epoch=int(epoch), metrics=_dumps(metrics))
        self._upsert(epochs_table, values, ["sweep", "trial_id", "epoch"], ["metrics"])

    # -- reads ---------------------------------------------------------------------------------

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
        stmt = select(sweeps_table).order_by(sweeps_table.c.name)
        if name is not None:
            stmt = stmt.where(sweeps_table.c.name == name)
        return _parse(self._read(stmt))

    def trial(self, sweep: str, trial_id: str) -> dict | None:
        """One trial as a dict, or None if it was never recorded."""
        c = trials_table.c
        df = _parse(self._read(select(trials_table).where(c.sweep == sweep, c.trial_id == trial_id)))
        return None if df.empty else df.iloc[0].to_dict()

    def trials(
        self,
        sweep: str | None = None,
        model: str | None = None,
        kernel: int | None = None,
        status: str | Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Trials matching every given filter, ``alpha`` as a list and the JSON fields as dicts."""
        c = trials_table.c
        stmt = select(trials_table).order_by(c.sweep, c.model, c.kernel_size, c.seed, c.cell, c.trial_id)
        if sweep is not None:
            stmt = stmt.where(c.sweep == sweep)
        if model is not None:
            stmt = stmt.where(c.model == model)
        if kernel is not None:
            stmt = stmt.where(c.kernel_size == int(kernel))
        if status is not None:
            stmt = stmt.where(c.status.in_([status] if isinstance(status, str) else list(status)))
        return _parse(self._read(stmt))

    def epochs(self, sweep: str, trial_id: str | None = None) -> pd.DataFrame:
        """Per-epoch metrics (``metrics`` as a dict) of one sweep, optionally of one trial, in epoch order."""
        c = epochs_table.c
        stmt = select(epochs_table).where(c.sweep == sweep).order_by(c.trial_id, c.epoch)
        if trial_id is not None:
            stmt = stmt.where(c.trial_id == trial_id)
        return _parse(self._read(stmt))


class _WriteTransaction:
    def __init__(self, engine: Engine):
        self._conn = engine.connect().execution_options(wconv_write=True)
        self._tx = None

    def __enter__(self):
        self._tx = self._conn.begin()
        return self._conn

    def __exit__(self, exc_type, *_):
        try:
            if exc_type is None:
                self._tx.commit()
            else:
                self._tx.rollback()
        finally:
            self._conn.close()


def _configure_sqlite(engine: Engine) -> None:
    """WAL + busy timeout, and BEGIN IMMEDIATE for writes.

    pysqlite starts a *deferred* transaction; when such a transaction upgrades to a write while
    another process writes, SQLite may answer "database is locked" at once, without waiting for
    the busy timeout. Taking the write lock at BEGIN makes writers queue on the busy timeout instead.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (see "begin" below)
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")  # before journal_mode, which may wait
        cursor.execute("PRAGMA journal_mode=WAL")
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
    for name in ("created_at", "updated_at", "started_at"):
        if name in df.columns:
            # SQLite hands back naive datetimes; they were written in UTC.
            df[name] = pd.to_datetime(df[name], utc=True)
    for name in ("kernel_size", "seed", "epochs_run", "epoch"):
        if name in df.columns:
            df[name] = df[name].astype("Int64")
    for name in ("alpha_1", "alpha_2", "wall_time_s"):
        if name in df.columns:
            df[name] = df[name].astype(float)
    if "baseline" in df.columns:
        df["baseline"] = df["baseline"].astype("boolean")
    return df

"""The engine under the results store and the orchestration state beside it: one database, named by one URL,
opened the same way by every process, and one way to write to it.

- **URL.** ``storage_url`` turns what a user wrote (``--storage``, a sweep's ``storage``) into the one URL every
  command uses: a plain path (``results.db``) names a SQLite file, whose path is made absolute so that every
  message names the file that was meant and trials in other working directories write to the same one.
  ``masked_url`` is how a message names a store: the password masked.
- **SQLite** (the default, ``sqlite:///results/wconv.db``) is right for one machine. It runs in WAL mode with a
  busy timeout, and every write transaction takes the write lock at ``BEGIN IMMEDIATE``, so concurrent writers
  queue instead of failing. A write lock that stays taken for the whole busy timeout is most likely held by a
  stopped process: ``StoreLocked`` names the lease holders, read without writing. SQLite's locking is unsafe on
  network filesystems (NFS, Lustre, GPFS): on a cluster use PostgreSQL (``postgresql+psycopg://user@dbhost/wconv``).
- **Writes.** ``Database.write(action)`` runs ``action(conn)`` in one write transaction: every write of the
  results (``results.Store``) and of the orchestration state (``launch/lease.py``, ``launch/claims.py``,
  ``launch/jobs.py``) goes through it, so a database error is always a ``StoreError`` in one line naming the
  store, and reads go through ``Database.read``.
- **Outages.** A store this process has reached once (``_REACHED``) is waited for when it drops away: an error that
  ``transient`` recognises (connection refused, reset or closed; the server shutting down, crashed or starting up;
  SQLSTATE class 08, 57P01–57P03; serialization failure 40001 and deadlock 40P01, after which PostgreSQL asks for
  the transaction to be run again) is retried with backoff (0.5 s doubling to 10 s) for up to
  ``WCONV_STORE_RETRY_S`` seconds (default 300), the whole transaction each time. The console says once that it is
  waiting and why, and once that the store is back. Longer, and ``StoreUnavailable`` ends the command in one line
  with exit code 75 (``EX_TEMPFAIL``): run the same command again once the store is back (a SLURM array task
  requeues itself instead, ``launch/slurm.py``). The Optuna studies a PostgreSQL store holds are written through
  the same wait (``wait_out``, in ``launch/search.py``). A store never reached (a wrong host, port or password)
  is refused at once: that is a mistake to fix, not an outage; a process started by one that reached it (an
  array task) counts it as reached (``count_as_reached``).
  Leases count their silence from when this process last reached the store again (``back_since``), so an outage
  does not make a live runner look gone. A transaction whose commit was lost with the connection is run again:
  the writes are upserts keyed by trial, epoch and lease, so running one twice writes the same rows (a claim may
  leave one extra Optuna trial RUNNING in the study, never a second trial in the store).

Create one ``Database`` per process (an engine must not cross a fork).
"""

from __future__ import annotations

import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import pandas as pd
from sqlalchemy import create_engine, event, inspect, select
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.sql.schema import Table

from analysis.store import schema
from analysis.store.schema import SCHEMA_VERSION, leases_table, meta_table, metadata

DEFAULT_URL = "sqlite:///results/wconv.db"
"""The results store of a sweep that names none, and of every command's ``--storage``."""

BUSY_TIMEOUT_MS = 60_000
"""How long a SQLite writer waits for the write lock before ``StoreLocked``."""

T = TypeVar("T")


class StoreError(RuntimeError):
    """The store cannot be opened or written; the message is one line naming the URL (absolute, password masked)."""


class NoResults(StoreError):
    """A read-only look at a database that does not exist yet."""


class StoreUnavailable(StoreError):
    """The store stayed unreachable for ``WCONV_STORE_RETRY_S`` seconds after this process had reached it: an outage
    to wait out (exit ``EXIT_UNAVAILABLE``), not a mistake to fix."""


EXIT_UNAVAILABLE = 75
"""The exit code of a command the store's outage ended (``EX_TEMPFAIL``, sysexits.h): run it again later."""

RETRY_ENV = "WCONV_STORE_RETRY_S"
_TRANSIENT_STATES = ("08", "57P01", "57P02", "57P03", "40001", "40P01")
_TRANSIENT_WORDS = ("connection refused", "server closed the connection", "terminating connection", "connection reset",
                    "the database system is shutting down", "the database system is starting up",
                    "the database system is in recovery mode", "connection is closed", "consuming input failed",
                    "no connection to the server", "connection timeout expired", "broken pipe")
_REACHED: set[str] = set()
"""The URLs this process has reached: only their errors are waited out."""
_back_since = 0.0


def retry_seconds() -> float:
    """How long a store this process has reached is waited for when it drops away (``WCONV_STORE_RETRY_S``)."""
    return float(os.environ.get(RETRY_ENV, "300"))


def back_since() -> float:
    """When (``time.time()``) the store last came back after an outage in this process; 0 if it never dropped."""
    return _back_since


def count_as_reached(url: str | Path) -> None:
    """Wait for ``url`` when it drops away, as if this process had reached it: for a process started by one that
    has (a SLURM array task that ``wconv submit`` recorded), to which a store down at its start is an outage."""
    _REACHED.add(storage_url(url))


def wait_out(url: str, attempt: Callable[[], T], doing: str) -> T:
    """``attempt()``; a transient error (``transient``: also one Optuna wraps) of a store this process has reached
    is retried with backoff for ``WCONV_STORE_RETRY_S`` seconds, said once, then ``StoreUnavailable``."""
    global _back_since
    waited_since, delay = None, 0.5
    while True:
        try:
            result = attempt()
        except Exception as exc:
            if url not in _REACHED or not transient(exc):
                raise
            now_ = time.monotonic()
            if waited_since is None:
                waited_since = now_
                print(f"wconv: waiting for results store {mask(url)!r} ({first_line(_dbapi(exc))}); retrying for "
                      f"up to {retry_seconds():.0f} s ({RETRY_ENV})", file=sys.stderr, flush=True)
            if now_ - waited_since >= retry_seconds():
                raise StoreUnavailable(
                    f"cannot {doing} results store {mask(url)!r}: unreachable for {now_ - waited_since:.0f} s "
                    f"({first_line(_dbapi(exc))}); nothing was lost: run the same command again once it is back, "
                    f"or raise {RETRY_ENV}") from None
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        if waited_since is not None:
            _back_since = time.time()
            print(f"wconv: results store {mask(url)!r} is back after {time.monotonic() - waited_since:.0f} s",
                  file=sys.stderr, flush=True)
        _REACHED.add(url)
        return result


def _dbapi(exc: BaseException) -> BaseException:
    """The database error in ``exc``'s cause chain (Optuna wraps SQLAlchemy's in its own), else ``exc``."""
    seen, cur = set(), exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, DBAPIError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return exc


def transient(exc: BaseException) -> bool:
    """Whether a database error is an outage to wait out rather than a mistake: see the module docstring."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        orig = getattr(exc, "orig", None) or exc
        state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if state and str(state).startswith(_TRANSIENT_STATES):
            return True
        text = str(orig).lower()
        if isinstance(exc, DBAPIError) and any(word in text for word in _TRANSIENT_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class StoreLocked(StoreError):
    """SQLite's write lock stayed taken for the whole busy timeout. A process stopped inside a write transaction
    (SIGSTOP, Ctrl-Z, a suspended job) keeps the lock until it resumes or ends, so the message names the lease
    holders, read without writing, and says which of them is stopped."""


# -- URLs ---------------------------------------------------------------------------------------------


def mask(url: str | URL) -> str:
    """The URL with its password masked."""
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
        raise StoreError(f"results store {mask(text)!r} is not a database URL{reason}; {_URL_EXAMPLES}") from None
    if parsed.get_backend_name() != "sqlite":
        return text
    if parsed.host or parsed.port or parsed.username:
        scheme, rest = text.split("://", 1)
        raise StoreError(f"results store {mask(text)!r} is not a SQLite URL: its two slashes make "
                         f"{parsed.host or rest!r} a host name; a file takes three ({scheme}:///{rest}) or "
                         "give the path alone")
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return text
    return parsed.set(database=str(Path(database).expanduser().resolve())).render_as_string(hide_password=False)


def masked_url(url: str | Path) -> str:
    """``storage_url(url)`` with the password masked: how messages name a store (the URL as given if malformed)."""
    try:
        return mask(storage_url(url))
    except StoreError:
        return mask(str(url))


def first_line(exc: BaseException) -> str:
    """The first line of a database error's message (the driver's, not SQLAlchemy's wrapper around it)."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


def now() -> datetime:
    """The time rows are stamped with (UTC)."""
    return datetime.now(timezone.utc)


# -- the database -------------------------------------------------------------------------------------


class Database:
    """One wconv database, opened for writing (tables created or upgraded) or, with ``create=False``, for reading
    only: then no file, table or column is created, and a missing database (``NoResults``), an empty file or one
    that wconv did not write is refused."""

    def __init__(self, url: str | Path = DEFAULT_URL, *, create: bool = True):
        self.url = storage_url(url)
        self.create = create
        parsed = make_url(self.url)
        self.masked = mask(self.url)
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise StoreError(
                f"results store {self.masked!r}: backend {backend!r} is not supported; "
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
                f"results store {self.masked!r}: database driver not available ({first_line(exc)}); "
                "install it, or for PostgreSQL use postgresql+psycopg:// (psycopg 3)"
            ) from None
        if backend == "sqlite":
            _configure_sqlite(self.engine, wal=create)
        self._open()

    def _waiting(self, attempt: Callable[[], T], doing: str) -> T:
        return wait_out(self.url, attempt, doing)

    def _check_sqlite_file(self, database: str) -> None:
        if database in ("", ":memory:") or database.startswith("file:"):
            return
        path = Path(database).expanduser()
        if not self.create:
            if not path.exists():
                raise NoResults(f"no results yet at {self.masked!r} (no such file); run a sweep first, "
                                "or point --storage at the database it wrote")
            if path.is_dir():
                raise StoreError(f"results store {self.masked!r} is a directory; point --storage at a database file")
            if path.stat().st_size == 0:
                raise StoreError(f"results store {self.masked!r} is an empty file, not a wconv results database; "
                                 "point --storage at the database a sweep wrote")
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"results store {self.masked!r}: cannot create its directory ({exc.strerror}); "
                "choose a writable path"
            ) from None

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.masked!r})"

    def _open(self) -> None:
        """Connect, check the schema version, and (when writing) create or upgrade the tables."""
        tables = set(self._retry_locked(lambda conn: inspect(conn).get_table_names()))
        if tables and not schema.RESULT_TABLES <= tables:
            raise StoreError(f"results store {self.masked!r} is not a wconv results database (it has tables "
                             f"{sorted(tables)[:5]}); point --storage at a database wconv wrote")
        if not tables and not self.create:
            raise NoResults(f"no results yet at {self.masked!r} (no wconv tables); run a sweep first")
        version = self._retry_locked(schema.recorded_version) if tables else SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise StoreError(f"results store {self.masked!r} was written by a newer wconv (schema {version}, this "
                             f"wconv reads ≤ {SCHEMA_VERSION}); upgrade wconv to read it")
        self.columns = self._read_columns()
        if self.create:
            if self.engine.dialect.name == "sqlite":
                # On the driver's connection: SQLAlchemy would wrap it in a transaction, where SQLite refuses it.
                self._retry_locked(_set_wal)
            # An up-to-date store opens without taking the write lock, so that a writer stopped mid-transaction
            # (a suspended SLURM job, a frozen node) cannot block `wconv cancel` or `status` before they act.
            if schema.is_behind(version, self.columns):
                self._create_tables()
                self.columns = self._read_columns()

    def _read_columns(self) -> dict[str, set[str]]:
        def columns(conn) -> dict[str, set[str]]:
            insp = inspect(conn)
            return {name: {c["name"] for c in insp.get_columns(name)}
                    for name in insp.get_table_names() if name in metadata.tables}

        return self._retry_locked(columns)

    def _retry_locked(self, action):
        """Run ``action(conn)``; switching a SQLite file to WAL takes an exclusive lock that does not wait on
        the busy timeout, so processes opening a new file together retry instead of failing."""
        def connected():
            with self.engine.connect() as conn:
                return action(conn)

        for attempt in range(40):
            try:
                return self._waiting(connected, "open")
            except DBAPIError as exc:
                if "locked" in str(exc.orig) and attempt < 39:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                raise StoreError(
                    f"cannot open results store {self.masked!r}: {first_line(exc)}; check the path, or that the "
                    "server is running and the host, port, user and password are right"
                ) from None

    def _create_tables(self) -> None:
        def upgrade(conn) -> None:
            schema.upgrade(conn)
            self.upsert_in(conn, meta_table, {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                           ["key"], ["value"])

        # Workers that start together race to create the tables: on PostgreSQL the loser of a
        # concurrent CREATE TABLE fails (duplicate pg_type row), so try again; by then they exist.
        for attempt in range(5):
            try:
                return self.write(upgrade, doing="create tables in", hint="check that the user may create tables")
            except StoreError as exc:
                if attempt == 4 or not isinstance(exc.__cause__, DBAPIError):
                    raise
                time.sleep(0.1 * (attempt + 1))

    # -- writes and reads ----------------------------------------------------------------------

    def write(self, action: Callable[[Connection], T], *, doing: str = "write to", hint: str = "") -> T:
        """``action(conn)`` in one write transaction, committed when it returns and rolled back when it raises:
        the one way anything is written. A database error is a ``StoreError`` naming the store."""
        self.require_write()
        def transaction():
            with _WriteTransaction(self) as conn:
                return action(conn)

        try:
            return self._waiting(transaction, doing)
        except DBAPIError as exc:
            raise StoreError(f"cannot {doing} results store {self.masked!r}: {first_line(exc)}"
                             + (f"; {hint}" if hint else "")) from exc

    def read(self, stmt) -> pd.DataFrame:
        """The rows of one query, parsed (``schema.parse``)."""
        def query():
            with self.engine.connect() as conn:
                result = conn.execute(stmt)
                return schema.parse(pd.DataFrame(result.fetchall(), columns=list(result.keys())))

        try:
            return self._waiting(query, "read")
        except DBAPIError as exc:
            raise StoreError(f"cannot read results store {self.masked!r}: {first_line(exc)}") from exc

    def present(self, table: Table) -> list:
        """The table's columns that this database has (an older schema opened read-only lacks some)."""
        return schema.present(table, self.columns)

    def upsert_in(self, conn, table: Table, values: dict, keys: Iterable[str], update: Iterable[str],
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

    def upsert(self, table: Table, values: dict, keys: Iterable[str], update: Iterable[str], where=None) -> bool:
        """``upsert_in`` in a write transaction of its own."""
        return self.write(lambda conn: self.upsert_in(conn, table, values, keys, update, where))

    def require_write(self) -> None:
        if not self.create:
            raise RuntimeError(f"{self!r} was opened read-only (create=False)")

    def locked_error(self) -> StoreLocked:
        """The write lock was not free for ``BUSY_TIMEOUT_MS``: most likely a writer stopped or hung inside a
        transaction (a stopped process keeps its lock until it resumes or ends). Names the processes holding
        leases, read without writing (in WAL mode readers never wait for the writer), stopped ones first."""
        try:
            leases = self.read(select(*self.present(leases_table)))
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
        return StoreLocked(f"results store {self.masked!r} stayed locked by another process for "
                           f"{BUSY_TIMEOUT_MS / 1000:.0f} s, so nothing was written; {who}; {what}")


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
        details.append(f"heartbeat {(now() - lease['heartbeat_at']).total_seconds():.0f} s ago")
    shown = ", ".join(cells[:2]) + (", …" if len(cells) > 2 else "")
    return f"sweep {shown} is leased to {where} ({', '.join(details)})", stopped, lease["pid"]


class _WriteTransaction:
    def __init__(self, db: Database):
        self._db = db
        self._conn = db.engine.connect().execution_options(wconv_write=True)
        self._tx = None

    def __enter__(self):
        try:
            self._tx = self._conn.begin()  # SQLite: BEGIN IMMEDIATE, which waits up to the busy timeout
        except DBAPIError as exc:
            self._conn.close()
            if self._db.engine.dialect.name == "sqlite" and "locked" in str(exc.orig):
                raise self._db.locked_error() from None
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


def _set_wal(conn) -> None:
    """WAL, unless the file is already in it (asking takes no lock; switching takes an exclusive one)."""
    dbapi = conn.connection.dbapi_connection
    if dbapi.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        dbapi.execute("PRAGMA journal_mode=WAL")


def _configure_sqlite(engine: Engine, wal: bool = True) -> None:
    """Busy timeout, and BEGIN IMMEDIATE for writes (WAL is set once, in ``Database._open``, after the file was
    found to be wconv's or new: it is a property of the file, and a foreign file must not be changed).

    pysqlite starts a *deferred* transaction; when such a transaction upgrades to a write while
    another process writes, SQLite may answer "database is locked" at once, without waiting for
    the busy timeout. Taking the write lock at BEGIN makes writers queue on the busy timeout instead.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (see "begin" below)
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")  # before journal_mode, which may wait
        if wal:
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        immediate = conn.get_execution_options().get("wconv_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

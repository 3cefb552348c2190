"""The results database's schema: its tables, its version and how an older one is upgraded, and how values
cross it (JSON text for lists and dicts, plain Python scalars for the driver, typed pandas columns back).

One database holds a sweep's results (``sweeps``, ``trials``, ``epochs``) and the orchestration state that
``launch/`` keeps beside them (``leases``, ``jobs``): one schema, one version, one upgrade, like Optuna's
``storages/_rdb/models.py``. What each table means is the business of the module that writes it:
``analysis/store/results.py`` for results, ``launch/lease.py`` and ``launch/jobs.py`` for the rest.

Versions: a database records the version that wrote it (``meta``). An older one is upgraded in place
(tables and columns added); one written by a newer wconv is refused (see ``engine.Database``).
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from sqlalchemy import (Boolean, Column, DateTime, Float, Integer, MetaData, String, Table, Text, cast, inspect,
                        null, select, update)

from wconv.status import Stage, TrialStatus

SCHEMA_VERSION = 3
"""1: sweeps, trials, epochs. 2: meta, leases, jobs; trials.stage/arm/checkpoint/owner; sweeps.spec_hash.
3: trials.group_id/member (fused groups)."""

RESULT_TABLES = frozenset({"sweeps", "trials", "epochs"})
"""The tables every wconv database has had since version 1: a database without them is not wconv's."""

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
    Column("status", String(16), default=TrialStatus.RUNNING.value),
    Column("reason", Text),
    Column("epochs_run", Integer),
    Column("metrics", Text),  # JSON
    Column("metric_settings", Text),  # JSON
    Column("wall_time_s", Float),
    Column("host", String(200)),
    Column("device", String(200)),
    Column("stage", String(16), default=Stage.SEARCH.value),
    Column("arm", String(32)),  # confirmation: alpha | baseline | init-scale
    Column("checkpoint", Text),  # the trial's checkpoint folder
    Column("owner", String(300)),  # the lease owner running it (see leases)
    Column("group_id", String(200)),  # the fused group it trained in (``wconv.fused``); NULL: it trained alone
    Column("member", Integer),  # its place in that group (the order of the group's stacked tensors)
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

JSON_COLUMNS = frozenset({"spec", "alpha", "metrics", "metric_settings", "cluster", "tasks"})


# -- versions and upgrades ----------------------------------------------------------------------------


def recorded_version(conn) -> int:
    """The schema version that wrote the database (1 before ``meta`` existed)."""
    if "meta" not in inspect(conn).get_table_names():
        return 1
    value = conn.execute(select(meta_table.c.value).where(meta_table.c.key == "schema_version")).scalar()
    return int(value) if value is not None else 1


def is_behind(version: int, columns: dict[str, set[str]]) -> bool:
    """Whether a database at ``version`` with ``columns`` (table -> names) lacks anything of this schema."""
    return version < SCHEMA_VERSION or any(
        {c.name for c in table.columns} - columns.get(name, set()) for name, table in metadata.tables.items())


def upgrade(conn) -> None:
    """Create what is missing, in the caller's write transaction: tables, then the columns an older version's
    tables lack (trials of version 1 are search trials), then the version. The version row is upserted by the
    caller (the upsert is the engine's, per dialect)."""
    metadata.create_all(conn)
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
            conn.execute(update(trials_table).values(stage=Stage.SEARCH.value))


def present(table: Table, columns: dict[str, set[str]]) -> list:
    """The table's columns that the database has (``columns``: table -> names), a typed NULL for each it lacks
    (an older schema opened read-only)."""
    have = columns.get(table.name)
    if have is None:
        return list(table.columns)
    return [c if c.name in have else cast(null(), c.type).label(c.name) for c in table.columns]


# -- values in and out --------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    # numpy arrays/scalars and torch tensors arrive in metrics dicts; keep the store free of their types.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(value: Any) -> str | None:
    """A JSON column's text (text passes as it is)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, default=_json_default)


def _loads(text: str | None) -> Any:
    return json.loads(text) if isinstance(text, str) else None  # NULL may arrive as None or NaN


def coerce(column: Column, value: Any) -> Any:
    """Plain Python values for the driver (psycopg does not adapt numpy scalars)."""
    if value is None:
        return None
    if isinstance(value, str):
        return str(value)  # a StrEnum member (``TrialStatus``) as its plain word: psycopg writes an Enum's name
    if column.name in JSON_COLUMNS:
        return dumps(value)
    if isinstance(column.type, Boolean):
        return bool(value)
    if isinstance(column.type, Integer):
        return int(value)
    if isinstance(column.type, Float):
        return float(value)
    return value


def parse(df: pd.DataFrame) -> pd.DataFrame:
    """JSON text back to lists/dicts, timestamps to UTC, integer columns to nullable integers."""
    for name in JSON_COLUMNS & set(df.columns):
        df[name] = df[name].map(_loads).astype(object)
    for name in ("created_at", "updated_at", "started_at", "taken_at", "heartbeat_at", "submitted_at"):
        if name in df.columns:
            # SQLite hands back naive datetimes; they were written in UTC.
            df[name] = pd.to_datetime(df[name], utc=True)
    for name in ("kernel_size", "seed", "epochs_run", "epoch", "worker", "pid", "member"):
        if name in df.columns:
            df[name] = df[name].astype("Int64")
    for name in ("alpha_1", "alpha_2", "wall_time_s"):
        if name in df.columns:
            df[name] = df[name].astype(float)
    if "baseline" in df.columns:
        df["baseline"] = df["baseline"].astype("boolean")
    return df


def records(result) -> list[dict]:
    """A result's rows, parsed as ``parse`` does, as dicts."""
    return parse(pd.DataFrame(result.fetchall(), columns=list(result.keys()))).to_dict("records")

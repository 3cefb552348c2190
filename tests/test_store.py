"""The results store against a real SQLite file and a real PostgreSQL server."""

import math
import multiprocessing
import traceback

import numpy as np
import pytest
from pg import postgres_server, postgres_url  # noqa: F401  (fixtures)
from sqlalchemy import text

from analysis.store import Store, StoreError
from analysis.store.schema import SCHEMA_VERSION
from launch.lease import heartbeat, interrupt, leases, release_lease, take_lease


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/results/wconv.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url):
    with Store(store_url) as s:
        yield s


def _count(store, table):
    with store.engine.connect() as conn:
        return conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()


CELL = dict(cell="tiny_cnn-k3-s0", model="tiny_cnn", kernel_size=3, seed=0)


def test_sqlite_store_creates_its_directory_and_runs_in_wal_mode(tmp_path):
    path = tmp_path / "a" / "b" / "results.db"
    with Store(f"sqlite:///{path}") as store:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
    assert path.is_file()


def test_an_up_to_date_sqlite_store_opens_and_reads_while_another_process_holds_its_write_lock(tmp_path,
                                                                                             monkeypatch):
    """A SLURM task suspended mid-transaction keeps SQLite's write lock: `wconv status` and `cancel` must still
    open the store (without writing) and read it, and `cancel` writes only once SLURM has ended the holder."""
    import sqlite3

    import analysis.store.engine as store_module

    path = tmp_path / "wconv.db"
    with Store(f"sqlite:///{path}") as store:
        store.record_trial("s", "t1", **CELL, alpha=[0.8], status="running")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held as by a stopped writer
    holder.execute("UPDATE trials SET epochs_run = 1")
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 200)  # a write would fail at once, not wait a minute
    try:
        with Store(f"sqlite:///{path}") as store:
            assert list(store.trials(sweep="s")["trial_id"]) == ["t1"]
            with pytest.raises(Exception, match="locked"):
                store.record_trial("s", "t2", **CELL, alpha=[0.9], status="running")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with Store(f"sqlite:///{path}") as store:
        store.record_trial("s", "t2", **CELL, alpha=[0.9], status="running")
        assert sorted(store.trials(sweep="s")["trial_id"]) == ["t1", "t2"]


def test_recording_a_trial_twice_keeps_one_row_with_the_new_values(store):
    store.record_trial("s", "t1", **CELL, alpha=[0.8], status="running", epochs_run=1)
    store.record_trial("s", "t1", **CELL, alpha=[0.7], status="completed", epochs_run=5, metrics={"val_loss": 0.3})
    trials = store.trials()
    assert len(trials) == 1 and _count(store, "trials") == 1
    row = trials.iloc[0]
    assert row["alpha"] == [0.7] and row["alpha_1"] == 0.7
    assert row["status"] == "completed" and row["epochs_run"] == 5
    assert row["metrics"] == {"val_loss": 0.3}


def test_partial_update_changes_only_the_given_fields(store):
    store.record_trial("s", "t1", **CELL, alpha=[0.1, 0.9], host="node1", status="running")
    first = store.trial("s", "t1")
    store.record_trial("s", "t1", status="failed", reason="non-finite loss at epoch 3")
    row = store.trial("s", "t1")
    assert row["status"] == "failed" and row["reason"] == "non-finite loss at epoch 3"
    assert row["alpha"] == [0.1, 0.9] and (row["alpha_1"], row["alpha_2"]) == (0.1, 0.9)
    assert row["host"] == "node1" and row["kernel_size"] == 3 and row["cell"] == CELL["cell"]
    assert row["started_at"] == first["started_at"]
    assert row["updated_at"] >= first["updated_at"]


def test_first_partial_write_creates_a_running_non_baseline_trial(store):
    store.record_trial("s", "t1", epochs_run=2)
    row = store.trial("s", "t1")
    assert row["status"] == "running" and bool(row["baseline"]) is False  # bool(pd.NA) would raise
    assert row["epochs_run"] == 2


@pytest.mark.parametrize("terminal", ["completed", "stopped", "failed"])
def test_late_running_write_does_not_reopen_a_finished_trial(store, terminal):
    store.record_trial("s", "t1", **CELL, status="running", epochs_run=3)
    store.record_trial("s", "t1", status=terminal, epochs_run=10, metrics={"val_loss": 0.2})
    store.record_trial("s", "t1", status="running", epochs_run=4, metrics={"val_loss": 0.9})  # retried message
    row = store.trial("s", "t1")
    assert row["status"] == terminal
    assert row["epochs_run"] == 10 and row["metrics"] == {"val_loss": 0.2}


def test_reopen_lets_a_resumed_trial_run_again(store):
    store.record_trial("s", "t1", **CELL, status="failed", reason="node lost")
    store.record_trial("s", "t1", status="running", reopen=True)
    assert store.trial("s", "t1")["status"] == "running"


def test_a_finished_trial_may_change_to_another_terminal_status(store):
    store.record_trial("s", "t1", **CELL, status="completed")
    store.record_trial("s", "t1", status="failed", reason="checkpoint corrupt")
    assert store.trial("s", "t1")["status"] == "failed"


def test_recording_an_epoch_twice_replaces_its_metrics(store):
    store.record_epoch("s", "t1", 0, {"val_loss": 1.0})
    store.record_epoch("s", "t1", 1, {"val_loss": 0.8})
    store.record_epoch("s", "t1", 1, {"val_loss": 0.7})
    store.record_epoch("s", "t2", 0, {"val_loss": 2.0})
    epochs = store.epochs("s", "t1")
    assert list(epochs["epoch"]) == [0, 1]
    assert list(epochs["metrics"]) == [{"val_loss": 1.0}, {"val_loss": 0.7}]
    assert len(store.epochs("s")) == 3 and _count(store, "epochs") == 3


def test_recording_a_sweep_again_updates_it_and_keeps_created_at(store):
    store.record_sweep("smoke", task="classification", metric="val_acc", mode="max", spec={"epochs": 2})
    created = store.sweep("smoke")["created_at"]
    store.record_sweep("smoke", task="classification", metric="val_loss", mode="min", spec={"epochs": 3})
    sweep = store.sweep("smoke")
    assert (sweep["metric"], sweep["mode"], sweep["spec"]) == ("val_loss", "min", {"epochs": 3})
    assert sweep["created_at"] == created and sweep["updated_at"] >= created
    assert len(store.sweeps()) == 1
    assert store.sweep("other") is None


def test_json_fields_round_trip_including_numpy_values_and_non_finite_numbers(store):
    spec = {"cells": {"models": ["tiny_cnn"], "kernels": [3, 5]}, "alpha": {"low": 0.0, "high": 1.0}, "name": "σ-α"}
    store.record_sweep("s", task="denoising", metric="val_psnr", mode="max", spec=spec)
    metrics = {"val_psnr": np.float32(27.5), "val_loss": float("nan"), "epoch": np.int64(7), "per_class": [0.5, 0.25]}
    store.record_trial(
        "s", "t1", **{**CELL, "kernel_size": np.int64(5)}, alpha=np.array([0.25, 0.75]), metrics=metrics,
        metric_settings={"data_range": 1.0}, wall_time_s=np.float64(12.5), baseline=np.bool_(False),
    )  # fmt: skip
    assert store.sweep("s")["spec"] == spec
    row = store.trial("s", "t1")
    assert row["alpha"] == [0.25, 0.75] and (row["alpha_1"], row["alpha_2"]) == (0.25, 0.75)
    assert row["kernel_size"] == 5 and row["wall_time_s"] == 12.5
    assert row["metrics"]["val_psnr"] == 27.5 and row["metrics"]["epoch"] == 7
    assert row["metrics"]["per_class"] == [0.5, 0.25] and math.isnan(row["metrics"]["val_loss"])
    assert row["metric_settings"] == {"data_range": 1.0}


def test_single_coefficient_alpha_leaves_alpha_2_empty(store):
    store.record_trial("s", "t1", **CELL, alpha=0.8)
    row = store.trial("s", "t1")
    assert row["alpha"] == [0.8] and row["alpha_1"] == 0.8 and math.isnan(row["alpha_2"])


def test_trials_are_filtered_by_sweep_model_kernel_and_status(store):
    for sweep in ("a", "b"):
        for model in ("tiny_cnn", "tiny_unet"):
            for k in (3, 5):
                for i, status in enumerate(("completed", "stopped")):
                    store.record_trial(sweep, f"{model}-{k}-{i}", model=model, kernel_size=k, status=status)
    assert len(store.trials()) == 16
    assert len(store.trials(sweep="a")) == 8
    assert set(store.trials(sweep="a", model="tiny_unet")["model"]) == {"tiny_unet"}
    picked = store.trials(sweep="b", model="tiny_cnn", kernel=5, status="stopped")
    assert list(picked["trial_id"]) == ["tiny_cnn-5-1"]
    assert len(store.trials(status=["completed", "stopped"])) == 16


def test_unknown_trial_field_or_status_is_refused(store):
    with pytest.raises(TypeError, match="kernel"):
        store.record_trial("s", "t1", kernel=3)
    with pytest.raises(ValueError, match="status"):
        store.record_trial("s", "t1", status="done")
    with pytest.raises(ValueError, match="mode"):
        store.record_sweep("s", task="t", metric="m", mode="maximize", spec={})
    assert store.trials().empty and store.sweeps().empty


def _write_trials(url, worker, n, barrier, errors):
    """One writer process: opens its own Store when all start together, as Ray workers do."""
    try:
        barrier.wait(timeout=20)
        with Store(url) as store:
            barrier.wait(timeout=20)
            for i in range(10):  # the same rows from every worker at the same moment: contended upserts
                store.record_trial("race", f"shared-{i}", status="running", host=f"w{worker}")
                store.record_epoch("race", f"shared-{i}", 0, {"worker": worker})
            for i in range(n):
                trial = f"w{worker}-{i}"
                store.record_trial("race", trial, **CELL, alpha=[i / n], status="running")
                store.record_epoch("race", trial, 0, {"val_loss": 1.0, "worker": worker})
                store.record_trial("race", trial, status="completed", metrics={"val_loss": 0.5})
        errors.put(None)
    except BaseException:
        errors.put(traceback.format_exc())


def test_concurrent_writers_from_several_processes_lose_and_duplicate_nothing(store_url):
    workers, n = 8, 25
    ctx = multiprocessing.get_context("fork")  # fast to start; each child still opens its own Store and connections
    barrier, errors = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_write_trials, args=(store_url, w, n, barrier, errors)) for w in range(workers)]
    for p in procs:
        p.start()
    failures = [errors.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [f for f in failures if f] == []
    with Store(store_url) as store:
        trials = store.trials(sweep="race")
        assert len(trials) == workers * n + 10 and _count(store, "trials") == workers * n + 10
        assert (trials[~trials["trial_id"].str.startswith("shared")]["status"] == "completed").all()
        assert len(store.epochs("race")) == workers * n + 10


def test_malformed_url_raises_a_one_line_store_error():
    with pytest.raises(StoreError) as err:
        Store("sqlite://results.db")  # two slashes: a host, not a file
    assert "sqlite://results.db" in str(err.value) and "sqlite:///results.db" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_plain_path_is_a_sqlite_file_named_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Store("rel.db") as store:
        store.record_sweep("s", task="classification", metric="val_accuracy", mode="max", spec={})
    assert (tmp_path / "rel.db").is_file() and repr(Store("./rel.db", create=False)) == f"Store('sqlite:///{tmp_path}/rel.db')"


def test_unsupported_backend_raises_a_store_error_with_the_password_masked():
    with pytest.raises(StoreError) as err:
        Store("mysql://user:hunter2@db/wconv")
    message = str(err.value)
    assert "hunter2" not in message and "mysql://user:***@db/wconv" in message and "\n" not in message


def test_unreachable_postgresql_raises_a_one_line_store_error_naming_the_url():
    with pytest.raises(StoreError) as err:
        Store("postgresql+psycopg://wconv:hunter2@127.0.0.1:1/wconv")
    message = str(err.value)
    assert "127.0.0.1:1/wconv" in message and "hunter2" not in message and "\n" not in message


def test_missing_driver_raises_a_store_error_that_says_what_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "psycopg2", None)  # as if psycopg2 were not installed
    with pytest.raises(StoreError, match="postgresql\\+psycopg://") as err:
        Store("postgresql+psycopg2://wconv:hunter2@127.0.0.1:1/wconv")
    assert "hunter2" not in str(err.value) and "\n" not in str(err.value)


def test_sqlite_path_under_a_file_raises_a_store_error(tmp_path):
    (tmp_path / "plain").write_text("")
    with pytest.raises(StoreError, match="plain") as err:
        Store(f"sqlite:///{tmp_path}/plain/results.db")
    assert "\n" not in str(err.value)



# -- schema versions and read-only opening --------------------------------------------------------------


def _schema_1(path):
    """A database as the first wconv wrote it (schema 1: no meta table, fewer columns)."""
    import sqlite3

    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE sweeps (name VARCHAR(200) PRIMARY KEY, task VARCHAR(100), metric VARCHAR(100), mode VARCHAR(3),
                             spec TEXT, created_at DATETIME, updated_at DATETIME);
        CREATE TABLE trials (sweep VARCHAR(200), trial_id VARCHAR(200), cell VARCHAR(200), model VARCHAR(100),
                             kernel_size INTEGER, alpha TEXT, alpha_1 FLOAT, alpha_2 FLOAT, seed INTEGER,
                             baseline BOOLEAN, status VARCHAR(16), reason TEXT, epochs_run INTEGER, metrics TEXT,
                             metric_settings TEXT, wall_time_s FLOAT, host VARCHAR(200), device VARCHAR(200),
                             started_at DATETIME, updated_at DATETIME, PRIMARY KEY (sweep, trial_id));
        CREATE TABLE epochs (sweep VARCHAR(200), trial_id VARCHAR(200), epoch INTEGER, metrics TEXT,
                             PRIMARY KEY (sweep, trial_id, epoch));
        INSERT INTO sweeps VALUES ('old', 'classification', 'val_accuracy', 'max', '{}', NULL, NULL);
        INSERT INTO trials (sweep, trial_id, cell, model, alpha, status, metrics)
            VALUES ('old', 'c/alpha=0.8', 'c', 'tiny_cnn', '[0.8]', 'completed', '{"val_accuracy": 0.9}');
    """)
    conn.commit()
    conn.close()


def test_an_older_schema_is_read_read_only_and_upgraded_in_place_when_written(tmp_path):
    path = tmp_path / "old.db"
    _schema_1(path)
    before = path.read_bytes()
    with Store(f"sqlite:///{path}", create=False) as store:
        row = store.trial("old", "c/alpha=0.8")
        assert row["metrics"] == {"val_accuracy": 0.9} and row["stage"] is None
        assert len(store.trials(sweep="old", stage="search")) == 1
    assert path.read_bytes() == before  # reading changed nothing
    with Store(f"sqlite:///{path}") as store:
        assert store.trial("old", "c/alpha=0.8")["stage"] == "search"
        store.record_trial("old", "c/alpha=0.9", status="running", owner="me", checkpoint="/x")
        assert store.trial("old", "c/alpha=0.9")["owner"] == "me"
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar() == \
                str(SCHEMA_VERSION)
        store.record_trial("old", "c/alpha=0.9", group_id="group-x", member=1)  # version 3's columns, added
        assert (store.trial("old", "c/alpha=0.9")["group_id"], store.trial("old", "c/alpha=0.9")["member"]) == \
            ("group-x", 1)


def test_a_database_written_by_a_newer_wconv_is_refused_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    with Store(url) as store, store.engine.begin() as conn:
        conn.execute(text("UPDATE meta SET value = '99' WHERE key = 'schema_version'"))
    for create in (True, False):
        with pytest.raises(StoreError, match="newer wconv") as err:
            Store(url, create=create)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", [None, b"", b"not a database at all\n" * 10])
def test_reading_a_missing_empty_or_foreign_file_is_refused_and_changes_nothing(tmp_path, content):
    path = tmp_path / "x.db"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(StoreError) as err:
        Store(f"sqlite:///{path}", create=False)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if content is None else ["x.db"])
    if content is not None:
        assert path.read_bytes() == content


def test_reading_a_sqlite_database_of_another_program_is_refused(tmp_path):
    import sqlite3

    path = tmp_path / "other.db"
    sqlite3.connect(path).executescript("CREATE TABLE users (id INTEGER); INSERT INTO users VALUES (1);")
    with pytest.raises(StoreError, match="not a wconv results database"):
        Store(f"sqlite:///{path}", create=False)


# -- leases ---------------------------------------------------------------------------------------------


def _holder(owner, pid=1):
    return dict(owner=owner, host="h", pid=pid, process_started=0.0, slurm_job=None)


def test_a_lease_is_refused_while_its_owner_lives_and_taken_over_with_its_trials_when_gone(store):
    store.record_sweep("s", task="classification", metric="val_accuracy", mode="max", spec={})
    assert take_lease(store, "s", "c", 0, _holder("a"), gone=lambda lease: False) is None
    store.record_trial("s", "c/t1", cell="c", status="running", owner="a")
    store.record_trial("s", "c/t2", cell="c", status="completed", owner="a")
    held = take_lease(store, "s", "c", 0, _holder("b", 2), gone=lambda lease: False)
    assert held["owner"] == "a"
    assert take_lease(store, "s", "c", 0, _holder("a"), gone=lambda lease: False) is None  # its own again
    assert take_lease(store, "s", "c", 0, _holder("b", 2), gone=lambda lease: lease["owner"] == "a") is None
    assert store.trial("s", "c/t1")["owner"] == "b"  # the unfinished trial moved with the lease
    assert store.trial("s", "c/t2")["owner"] == "a"
    assert heartbeat(store, "s", "a") == 0 and heartbeat(store, "s", "b") == 1
    assert store.record_trial("s", "c/t1", status="running", owner="a", epochs_run=3) is False  # fenced
    assert store.trial("s", "c/t1")["epochs_run"] is None
    release_lease(store, "s", "c", "b")
    assert leases(store, "s").empty


def test_cancelling_marks_running_trials_interrupted_and_frees_their_leases(store):
    store.record_sweep("s", task="classification", metric="val_accuracy", mode="max", spec={})
    take_lease(store, "s", "c", 0, _holder("slurm:7_0"), gone=lambda lease: False)
    store.record_trial("s", "c/t1", cell="c", status="running", owner="slurm:7_0")
    store.record_trial("s", "c/t2", cell="c", status="completed", owner="slurm:7_0")
    assert interrupt(store, "s", ["slurm:7_0"]) == 1
    assert store.trial("s", "c/t1")["status"] == "interrupted" and store.trial("s", "c/t2")["status"] == "completed"
    assert leases(store, "s").empty

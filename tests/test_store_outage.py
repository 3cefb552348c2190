"""A results store on PostgreSQL that drops away and comes back (``analysis/store/engine.py``, "Outages"): the
throwaway server is stopped as an outage would stop it, then started again on the same port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import yaml
from pg import postgres_server, postgres_url  # noqa: F401  (fixtures)
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from analysis.store import EXIT_UNAVAILABLE, Database, Store, StoreError, StoreUnavailable
from analysis.store.engine import RETRY_ENV, storage_url, transient, wait_out
from launch.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _dbapi(exc: Exception) -> DBAPIError:
    return DBAPIError.instance("SELECT 1", {}, exc, psycopg.Error)


def test_transient_tells_an_outage_from_a_mistake():
    try:
        psycopg.connect(host="127.0.0.1", port=1, user="x", dbname="x", connect_timeout=5)
    except psycopg.OperationalError as exc:  # a real "connection refused" from libpq
        refused = exc
    assert transient(_dbapi(refused))
    shutdown = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    assert transient(_dbapi(shutdown))
    assert transient(_dbapi(psycopg.errors.SerializationFailure("could not serialize access")))
    assert not transient(_dbapi(psycopg.errors.UndefinedTable('relation "trials" does not exist')))
    assert not transient(_dbapi(psycopg.errors.InsufficientPrivilege("permission denied for table trials")))
    assert not transient(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not transient(ValueError("connection refused"))  # only a database error is an outage
    wrapped = RuntimeError("Optuna's StorageInternalError")
    wrapped.__cause__ = _dbapi(shutdown)
    assert transient(wrapped)  # found down the cause chain, as Optuna wraps it


def test_a_store_never_reached_is_refused_at_once_not_waited_for(monkeypatch):
    monkeypatch.setenv(RETRY_ENV, "600")
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        Database("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert not isinstance(info.value, StoreUnavailable) and time.monotonic() - started < 60


def _ping(db: Database) -> int:
    return db.write(lambda conn: conn.execute(text("SELECT 1")).scalar())


def test_a_store_that_drops_away_is_waited_for_and_written_once_it_is_back(postgres_server, postgres_url, capfd,
                                                                              monkeypatch):
    monkeypatch.setenv(RETRY_ENV, "120")
    db = Database(postgres_url)
    assert _ping(db) == 1
    capfd.readouterr()
    postgres_server.pause()
    back = threading.Timer(4.0, postgres_server.resume)
    back.start()
    try:
        # What a runner does between cells: open the store again (the reproduction died here), then write
        assert Store(postgres_url).trials().empty
        assert _ping(db) == 1
    finally:
        back.join()
    err = capfd.readouterr().err
    assert "waiting for results store" in err and "is back after" in err, err
    assert err.count("waiting for results store") == err.count("is back after"), err  # said once per wait


def test_an_outage_longer_than_the_retry_time_ends_the_command_in_one_line_with_exit_75(postgres_server, postgres_url,
                                                                                          capfd, monkeypatch):
    monkeypatch.setenv(RETRY_ENV, "2")
    Database(postgres_url).close()  # reached once by this process
    capfd.readouterr()
    postgres_server.pause()
    try:
        assert main(["best", "--storage", postgres_url]) == EXIT_UNAVAILABLE
    finally:
        postgres_server.resume()
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert "Traceback" not in "\n".join(lines)
    assert lines[-1].startswith("wconv best: ") and "unreachable for" in lines[-1] and "run the same command again" \
        in lines[-1], lines
    assert main(["best", "--storage", postgres_url]) in (0, 2)  # back: answers as it does for an empty store


def test_the_searchers_optuna_study_in_the_store_is_written_through_an_outage(postgres_server, postgres_url,
                                                                              tmp_path, capfd, monkeypatch):
    """The cell's study lives in the PostgreSQL store (schema ``optuna``); Optuna wraps the driver's error in its own
    (``StorageInternalError``). ``wait_out``, through which ``CellSearch`` asks and tells its study, waits it out
    as the store's own writes do; without it the same call fails."""
    import optuna

    from launch.search import open_study, study_storage
    from launch.spec import load_sweep

    monkeypatch.setenv(RETRY_ENV, "120")
    sweep = load_sweep(_sweep(tmp_path, postgres_url))
    cell = sweep.cells()[0]
    study = open_study(sweep, cell, study_storage(sweep, tmp_path))
    Database(postgres_url).close()  # reached once by this process
    ask = lambda: study.ask({"a1": optuna.distributions.FloatDistribution(0.5, 1.5)})  # noqa: E731
    postgres_server.pause()
    try:
        with pytest.raises(Exception) as raw:
            ask()
        assert transient(raw.value)
    finally:
        postgres_server.resume()
    study.tell(ask(), 0.5)
    capfd.readouterr()
    postgres_server.pause()
    back = threading.Timer(4.0, postgres_server.resume)
    back.start()
    try:
        trial = wait_out(storage_url(postgres_url), ask, "write the study to")
        wait_out(storage_url(postgres_url), lambda: study.tell(trial, 0.25), "write the study to")
    finally:
        back.join()
    assert [t.value for t in study.get_trials() if t.value is not None] == [0.5, 0.25]
    err = capfd.readouterr().err
    assert "waiting for results store" in err and "is back after" in err, err


# -- a real `wconv run` through outages ---------------------------------------------------------------------------


def _sweep(tmp_path: Path, url: str, *, samples=2, seeds=(0, 1)) -> Path:
    spec = {
        "name": "outage", "task": "classification", "dataset": {"name": "digits"},
        "models": [{"name": "tiny_cnn", "options": {"width": 0.5}}], "kernels": {3: [[0.5, 1.5]]},
        "search": {"num_samples": samples, "metric": "val_accuracy", "seed": 0},
        "scheduler": {"type": "fifo"},
        "training": {"epochs": 3, "batch_size": 32, "lr": 0.05, "hflip": False, "max_steps_per_epoch": 6},
        "seeds": list(seeds), "resources": {"cpus_per_trial": 1}, "storage": url,
    }
    path = tmp_path / "outage.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _start(path: Path, tmp_path: Path, gate: Path | None = None, stderr=subprocess.PIPE, **env) -> subprocess.Popen:
    """``wconv run``; with ``gate``, its trials wait before their second epoch until the file exists
    (``tests/gates/sitecustomize.py``); ``stderr``: where its console's errors go (a file can be read while it runs)."""
    paths = [str(ROOT / "tests" / "gates"), str(ROOT)] if gate else [str(ROOT)]
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), **env)
    if gate:
        environ["WCONV_TEST_EPOCH_GATE"] = str(gate)
    return subprocess.Popen([sys.executable, "-m", "launch.cli", "run", str(path), "--runs-dir", str(tmp_path / "runs"),
                             "--num-cpus", "2"], cwd=tmp_path, env=environ, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


def _wait(what: str, probe, seen, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; saw {seen()}")
        time.sleep(0.3)


def _held_at_the_gate(store: Store, proc: subprocess.Popen, seed: int) -> bool:
    """Two trials of the cell of ``seed`` past their first epoch (held there by the gate), or the run ended."""
    if proc.poll() is not None:
        return True
    trials = store.trials(sweep="outage")
    return not trials.empty and (trials["cell"].str.endswith(f"-s{seed}") & (trials["epochs_run"].fillna(0) >= 1)
                                 ).sum() >= 2


def _check(store: Store, cells: int, samples: int) -> None:
    trials = store.trials(sweep="outage")
    assert trials["cell"].nunique() == cells
    for cell, rows in trials.groupby("cell"):
        assert len(rows) == samples + 1 and (rows["status"] == "completed").all(), rows[["trial_id", "status"]]
        assert rows["baseline"].astype(bool).sum() == 1
        assert len({tuple(a) for a in rows["alpha"]}) == len(rows)
        for _, row in rows.iterrows():
            epochs = store.epochs("outage", row["trial_id"])
            assert list(epochs["epoch"]) == list(range(1, int(row["epochs_run"]) + 1)), row["trial_id"]


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _cell_done(store: Store, proc: subprocess.Popen, seed: int, samples: int) -> bool:
    if proc.poll() is not None:
        return True
    trials = store.trials(sweep="outage")
    cell = trials[trials["cell"].str.endswith(f"-s{seed}")] if not trials.empty else trials
    return len(cell) == samples + 1 and (cell["status"] == "completed").all()


@pytest.mark.integration
def test_a_run_rides_out_a_20_second_outage_during_a_trial_and_another_between_cells(postgres_server, postgres_url,
                                                                                    tmp_path):
    """The server stops for 20 s while the first cell's trials are held mid-way (a gate before their second epoch),
    then again the moment the first cell's trials are all in the store, while the runner moves on to the second
    cell (its lease, its first claims; the second cell's trials are held at the gate, so the outage ends before any
    of them can finish). The run finishes with every trial once and nothing lost.

    The second outage starts only once the runner has said that the store is back from the first: a wait's retries
    back off to 10 s apart, so without that the runner's first wait could still be asleep when the second outage
    began, and span both (CI saw one wait "back after 46 s")."""
    store = Store(postgres_url)
    path = _sweep(tmp_path, postgres_url)
    gate = tmp_path / "gate"
    console = tmp_path / "stderr.txt"
    with console.open("w") as errors:
        run = _start(path, tmp_path, gate, stderr=errors, **{RETRY_ENV: "300", "WCONV_LEASE_TIMEOUT_S": "20"})
    said = lambda: console.read_text()  # noqa: E731
    try:
        _wait("two trials of seed 0 held at the gate", lambda: _held_at_the_gate(store, run, 0),
              lambda: store.trials(sweep="outage")[["trial_id", "status", "epochs_run"]])
        assert run.poll() is None, said()[-3000:]
        postgres_server.pause()
        time.sleep(20)
        postgres_server.resume()
        _wait("the runner to say the store is back", lambda: run.poll() is not None or (
            said().count("waiting for results store") == said().count("is back after") >= 1), lambda: said()[-3000:])
        Path(f"{gate}.0").touch()  # the first cell's trials go on
        _wait("the first cell's trials in the store", lambda: _cell_done(store, run, 0, samples=2),
              lambda: store.trials(sweep="outage")[["trial_id", "status", "epochs_run"]])
        assert run.poll() is None, said()[-3000:]
        postgres_server.pause()
        time.sleep(20)
        postgres_server.resume()
        Path(f"{gate}.1").touch()
        run.communicate(timeout=600)
    finally:
        _kill(run)
    err = said()
    assert run.returncode == 0, err[-3000:]
    # One wait per outage at least: the lease heartbeat touches the store every few seconds.
    assert err.count("waiting for results store") >= 2 and "is back after" in err, err[-3000:]
    _check(store, cells=2, samples=2)


@pytest.mark.integration
def test_an_outage_longer_than_the_retry_time_ends_the_run_with_exit_75_and_a_rerun_resumes(postgres_server,
                                                                                          postgres_url, tmp_path):
    store = Store(postgres_url)
    path = _sweep(tmp_path, postgres_url, seeds=(0,))
    gate = tmp_path / "gate"
    run = _start(path, tmp_path, gate, **{RETRY_ENV: "3", "WCONV_LEASE_TIMEOUT_S": "8"})  # beats every 2 s
    try:
        _wait("two trials held at the gate", lambda: _held_at_the_gate(store, run, 0),
              lambda: store.trials(sweep="outage")[["trial_id", "status", "epochs_run"]])
        assert run.poll() is None, run.communicate()[1][-3000:]
        postgres_server.pause()
        try:
            _, err = run.communicate(timeout=300)
        finally:
            postgres_server.resume()
    finally:
        _kill(run)
    assert run.returncode == EXIT_UNAVAILABLE, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "unreachable for" in lines[-1], err[-3000:]
    again = _start(path, tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    _check(store, cells=1, samples=2)

"""Kills, restarts and two runners at once, on a real Ray local cluster and a real SQLite store: every cell ends
with exactly ``num_samples + 1`` terminal trials, one baseline, no α twice and every epoch recorded once."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from analysis.store import TERMINAL, Store
from launch.lease import leases, silent_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def _sweep(tmp_path: Path, name: str, *, seeds=(0,), samples=4, epochs=3, steps=6, scheduler=None,
           group_size=1) -> Path:
    spec = {
        "name": name, "task": "classification", "dataset": {"name": "digits"},
        "models": [{"name": "tiny_cnn", "options": {"width": 0.5}}], "kernels": {3: [[0.5, 1.5]]},
        "search": {"num_samples": samples, "metric": "val_accuracy", "seed": 0},
        "scheduler": scheduler or {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "training": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "hflip": False, "max_steps_per_epoch": steps},
        "seeds": list(seeds), "resources": {"cpus_per_trial": 1, "group_size": group_size},
        "storage": f"sqlite:///{tmp_path / 'wconv.db'}",
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _env(gate: Path | None = None, **extra) -> dict:
    """The environment of a run under test; with ``gate``, its trials wait before their second epoch until the
    test creates that file (``tests/gates/sitecustomize.py``)."""
    if gate is None:
        return dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "gates"), str(ROOT)]),
                WCONV_TEST_EPOCH_GATE=str(gate), **extra)


def _start(path: Path, tmp_path: Path, gate: Path | None = None, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launch.cli", "run", str(path), "--runs-dir", str(tmp_path / "runs"),
                             "--num-cpus", "2"], cwd=tmp_path, env=_env(gate, **env), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def _check_cells(store: Store, sweep: str, cells: int, samples: int) -> None:
    trials = store.trials(sweep=sweep)
    assert trials["trial_id"].is_unique
    assert trials["cell"].nunique() == cells
    for cell, rows in trials.groupby("cell"):
        assert len(rows) == samples + 1, rows[["trial_id", "status"]].to_string()
        assert rows["status"].isin(TERMINAL).all(), rows[["trial_id", "status"]].to_string()
        assert rows["baseline"].astype(bool).sum() == 1
        alphas = [tuple(a) for a in rows["alpha"]]
        assert len(set(alphas)) == len(alphas)
        for _, row in rows.iterrows():
            epochs = store.epochs(sweep, row["trial_id"])
            assert list(epochs["epoch"]) == list(range(1, int(row["epochs_run"]) + 1)), row["trial_id"]


def _count(store: Store, sweep: str, statuses=TERMINAL) -> int:
    trials = store.trials(sweep=sweep)
    return 0 if trials.empty else int(trials["status"].isin(statuses).sum())


def _wait(what: str, probe, seen, timeout: float = 300, every: float = 0.2):
    """``probe()``'s first truthy value; after ``timeout`` s, fails saying what was awaited and what ``seen()`` shows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"waited {timeout:.0f} s for {what}; saw: {seen()}")


def _trials_seen(store: Store, sweep: str):
    def seen() -> str:
        trials = store.trials(sweep=sweep)
        return "no trials" if trials.empty else trials[["trial_id", "status", "epochs_run"]].to_string()

    return seen


def _stop(proc: subprocess.Popen) -> None:
    """SIGSTOP the run's process group and wait until its main process is stopped (or has ended)."""
    os.killpg(proc.pid, signal.SIGSTOP)

    def stopped() -> bool:
        try:
            return proc.poll() is not None or psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED
        except psutil.NoSuchProcess:
            return True

    _wait(f"pid {proc.pid} to stop", stopped, lambda: psutil.Process(proc.pid).status(), timeout=30, every=0.05)


def _write_lock_taken(db: Path) -> bool:
    """Whether some process holds the SQLite write lock of ``db`` now (asked with BEGIN IMMEDIATE, no waiting)."""
    conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        return True
    finally:
        conn.close()


def _stop_outside_a_write(proc: subprocess.Popen, db: Path, timeout: float = 120) -> None:
    """SIGSTOP a run where it holds no write lock: a stopped writer keeps SQLite's lock (see
    ``test_a_run_that_meets_the_store_locked_by_a_stopped_runner_names_it``), so a stop that lands inside a
    transaction is undone (SIGCONT) and tried again a moment later."""
    deadline = time.monotonic() + timeout
    tries = 0
    while True:
        assert proc.poll() is None, "the run ended before it could be stopped; make its trials longer"
        _stop(proc)
        tries += 1
        if not _write_lock_taken(db):
            return
        os.killpg(proc.pid, signal.SIGCONT)
        if time.monotonic() > deadline:
            pytest.fail(f"pid {proc.pid} held the store's write lock at each of {tries} stops in {timeout:.0f} s")
        time.sleep(random.uniform(0.05, 0.3))


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_a_second_run_is_refused_and_a_sweep_killed_before_any_trial_finished_resumes_without_losing_one(tmp_path):
    """The reproduction of issue 7: SIGKILL while the baseline and the first sampled trial run. Before it, a second
    `wconv run` of the running sweep is refused in one line naming the first run's pid.

    The first run is stopped (SIGSTOP) as soon as both trials are claimed and one has an epoch recorded; its trials
    wait at a gate before their second epoch (never opened), so neither can finish however fast the machine; the
    refusal and the kill then act on that frozen state, however long the second run takes to start."""
    epochs = 8
    path = _sweep(tmp_path, "early", samples=3, epochs=epochs, steps=12, scheduler={"type": "fifo"})
    store = Store(f"sqlite:///{tmp_path / 'wconv.db'}")
    proc = _start(path, tmp_path, tmp_path / "gate")
    seen = _trials_seen(store, "early")

    def claimed() -> bool:
        trials = store.trials(sweep="early")
        if trials.empty or proc.poll() is not None:
            return proc.poll() is not None
        baseline, ran = trials["baseline"].astype(bool), trials["epochs_run"].fillna(0)
        return bool(baseline.any() and (~baseline).any() and (ran >= 1).any() and (ran <= epochs - 4).all())

    _wait("the baseline and a sampled trial claimed, one past its first epoch", claimed, seen)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    _stop(proc)
    try:
        assert _count(store, "early") == 0, f"a trial finished before the kill: {seen()}"
        second = _start(path, tmp_path)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2
        line = _one_line(err)
        assert f"pid {proc.pid}" in line and "is being run by" in line and "stopped" in line
    finally:
        _kill(proc)  # SIGKILL ends a stopped process too

    again = _start(path, tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert "trials 4/4 done" in out
    _check_cells(store, "early", cells=1, samples=3)
    finished = _start(path, tmp_path)
    out, _ = finished.communicate(timeout=120)
    assert finished.returncode == 0 and "is finished" in out


@pytest.mark.parametrize("group_size", [1, 3], ids=["alone", "fused"])
def test_repeated_random_kills_of_a_multi_cell_sweep_lose_and_duplicate_nothing(tmp_path, group_size):
    """Six runs (five fused), each SIGKILLed at a random moment 4-12 s after its start, or sooner: a random moment
    under half a second after it recorded something new (an epoch or a trial), so that however fast the machine, no
    run gets far enough to finish the sweep before its kill. Fused (``group_size: 3``), each cell is a group of 3 and a
    group of 1, killed anywhere between their epochs and resumed from their ``group.pt``: every member keeps its
    group, and an epoch the store had before a kill is never trained (hence recorded) again."""
    rng = random.Random(7)
    samples, seeds = 3, (0, 1)
    path = _sweep(tmp_path, "kills", seeds=seeds, samples=samples, epochs=3, steps=12, group_size=group_size)
    store = Store(f"sqlite:///{tmp_path / 'wconv.db'}")

    def progress() -> tuple:
        trials = store.trials(sweep="kills")
        return (0, 0) if trials.empty else (len(store.epochs("kills")), int(trials["status"].isin(TERMINAL).sum()))

    kept = {}  # (trial, epoch) -> the epoch's metrics as recorded before a kill
    kills = 6 if group_size == 1 else 5
    for kill in range(kills):
        epochs = store.epochs("kills")
        kept.update({(e["trial_id"], e["epoch"]): e["metrics"] for e in epochs.to_dict("records")})
        before = progress()
        proc = _start(path, tmp_path)
        try:
            at = time.monotonic() + rng.uniform(4.0, 12.0)
            soon = rng.uniform(0.0, 0.5)
            while time.monotonic() < at and proc.poll() is None:
                if progress() != before:
                    at = min(at, time.monotonic() + soon)
                time.sleep(0.05)
            assert proc.poll() is None, f"run {kill + 1} finished the sweep before its kill; make trials longer"
        finally:
            _kill(proc)
    final = _start(path, tmp_path)
    out, err = final.communicate(timeout=600)
    assert final.returncode == 0, err[-3000:]
    print(f"{kills} SIGKILLs; terminal trials after: {_count(store, 'kills')}")
    _check_cells(store, "kills", cells=len(seeds), samples=samples)
    after = {(e["trial_id"], e["epoch"]): e["metrics"] for e in store.epochs("kills").to_dict("records")}
    assert all(after[key] == metrics for key, metrics in kept.items())  # wall_time_s too: not trained again
    if group_size > 1:
        trials = store.trials(sweep="kills")
        for cell, rows in trials.groupby("cell"):
            sizes = sorted(rows.groupby("group_id").size())
            assert sizes == [1, 3] and rows["member"].notna().all(), rows[["trial_id", "group_id", "member"]]
            baseline = rows[rows["baseline"].astype(bool)].iloc[0]
            assert baseline["member"] == 0 and (rows["group_id"] == baseline["group_id"]).sum() == 3


def test_a_hung_runner_is_taken_over_after_its_heartbeat_falls_silent(tmp_path):
    """SIGSTOP freezes the runner as a hung node would (its pid lives on): a new run is refused while the
    lease's heartbeat is younger than the new run's lease timeout, and takes over once it is older, finishing
    with nothing lost; the frozen runner, woken, stops itself. (Frozen outside a write transaction: one frozen
    inside keeps the store's write lock, and no takeover can write; the next test covers what a run says then.)
    The first runner's trials wait before their second epoch until the test opens a gate, so its cell is still
    unfinished when it is frozen, however fast the machine trains."""
    path = _sweep(tmp_path, "hung", samples=3, epochs=3, steps=10)
    db = tmp_path / "wconv.db"
    store = Store(f"sqlite:///{db}")
    gate = tmp_path / "gate"
    first = _start(path, tmp_path, gate, WCONV_LEASE_TIMEOUT_S="4")  # beats every second
    _wait("a trial past its first epoch, held at the gate", lambda: first.poll() is not None or (
        not (t := store.trials(sweep="hung")).empty and (t["epochs_run"].fillna(0) >= 1).any()),
        _trials_seen(store, "hung"))
    assert first.poll() is None, first.communicate()[1][-3000:]
    _stop_outside_a_write(first, db)
    try:
        # ASHA may stop a trial at its first rung, but the gate holds the baseline (never stopped) before epoch 2
        assert _count(store, "hung") < 3 + 1, _trials_seen(store, "hung")()
        refused = _start(path, tmp_path, WCONV_LEASE_TIMEOUT_S="3600")
        _, err = refused.communicate(timeout=300)
        assert refused.returncode == 2 and "is being run by" in _one_line(err) and f"pid {first.pid}" in err, err
        _wait("the frozen runner's heartbeat silent for more than 1 s",
              lambda: (silent := leases(store, sweep="hung")).empty or all(silent_for(row) > 1.5 for row in
                                                                          silent.to_dict("records")),
              lambda: leases(store, sweep="hung").to_string(), timeout=60)
        second = _start(path, tmp_path, WCONV_LEASE_TIMEOUT_S="1")
        out, err = second.communicate(timeout=600)
        assert second.returncode == 0, err[-3000:]
        _check_cells(store, "hung", cells=1, samples=3)
        before = store.trials(sweep="hung")[["trial_id", "status", "metrics"]].to_dict("records")
    finally:
        gate.touch()
        os.killpg(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode != 0 and "taken over" in err, err[-3000:]
    assert store.trials(sweep="hung")[["trial_id", "status", "metrics"]].to_dict("records") == before


_FROZEN_IN_A_WRITE = """
import os, signal, sqlite3, sys
from pathlib import Path
from launch.cell import prepare_sweep
from launch.lease import LeaseKeeper
from launch.spec import load_sweep

sweep, _ = prepare_sweep(load_sweep(Path(sys.argv[1])), sys.argv[2])
LeaseKeeper(sweep.storage, sweep.name).take(sweep.cells()[0].id)
db = sqlite3.connect(sys.argv[3], isolation_level=None)
db.execute("BEGIN IMMEDIATE")  # the write lock, as a runner holds it during each of its writes
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_a_run_that_meets_the_store_locked_by_a_stopped_runner_names_it(tmp_path):
    """A runner stopped inside a write transaction (here: one that takes a cell's lease, opens a write and stops
    itself) keeps SQLite's write lock until it resumes or ends. A second run is refused in one line at once while
    the lease is live (a read, no lock needed); once the lease has expired it must write to take over, and after
    the busy timeout it says in one line that the store is locked, which process holds the lease, that it is
    stopped and how to resume or end it; exit 2, nothing written."""
    path = _sweep(tmp_path, "locked", samples=1, epochs=1, steps=2)
    db = tmp_path / "wconv.db"
    holder = subprocess.Popen([sys.executable, "-c", _FROZEN_IN_A_WRITE, str(path), str(tmp_path / "runs"), str(db)],
                              cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()[-3000:]
        _wait(f"pid {holder.pid} to stop", lambda: psutil.Process(holder.pid).status() == psutil.STATUS_STOPPED,
              lambda: psutil.Process(holder.pid).status(), timeout=30, every=0.05)
        assert _write_lock_taken(db)
        store = Store(f"sqlite:///{db}", create=False)
        before = store.trials(sweep="locked")

        started = time.monotonic()
        refused = _start(path, tmp_path, WCONV_LEASE_TIMEOUT_S="3600")
        _, err = refused.communicate(timeout=300)
        line = _one_line(err)
        assert refused.returncode == 2 and "is being run by" in line and f"pid {holder.pid}" in line
        assert f"stopped (resume it with kill -CONT {holder.pid})" in line
        assert time.monotonic() - started < 55, "the refusal waited for the write lock"

        _wait("the lease's heartbeat silent for more than 1 s",
              lambda: all(silent_for(row) > 1.5 for row in leases(store, sweep="locked").to_dict("records")),
              lambda: leases(store, sweep="locked").to_string(), timeout=60)
        blocked = _start(path, tmp_path, WCONV_LEASE_TIMEOUT_S="1")
        _, err = blocked.communicate(timeout=300)
        line = _one_line(err)
        assert blocked.returncode == 2, err[-3000:]
        assert "stayed locked by another process" in line and str(db) in line
        assert f"pid {holder.pid}" in line and "stopped" in line and f"kill -CONT {holder.pid}" in line
        assert store.trials(sweep="locked").equals(before)
        assert leases(store, sweep="locked")["pid"].tolist() == [holder.pid]  # not taken over
    finally:
        holder.kill()
        holder.communicate()

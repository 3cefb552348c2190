"""Kills, restarts and two runners at once, on a real Ray local cluster and a real SQLite store: every cell ends
with exactly ``num_samples + 1`` terminal trials, one baseline, no α twice and every epoch recorded once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from analysis.store import TERMINAL, Store

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def _sweep(tmp_path: Path, name: str, *, seeds=(0,), samples=4, epochs=3, steps=6, scheduler=None) -> Path:
    spec = {
        "name": name, "task": "classification", "dataset": {"name": "digits"},
        "models": [{"name": "tiny_cnn", "options": {"width": 0.5}}], "kernels": {3: [[0.5, 1.5]]},
        "search": {"num_samples": samples, "metric": "val_accuracy", "seed": 0},
        "scheduler": scheduler or {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "training": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "hflip": False, "max_steps_per_epoch": steps},
        "seeds": list(seeds), "resources": {"cpus_per_trial": 1},
        "storage": f"sqlite:///{tmp_path / 'wconv.db'}",
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


def _start(path: Path, tmp_path: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launch.cli", "run", str(path), "--runs-dir", str(tmp_path / "runs"),
                             "--num-cpus", "2"], cwd=tmp_path, env=_env(**env), start_new_session=True,
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


def test_a_second_run_is_refused_and_a_sweep_killed_before_any_trial_finished_resumes_without_losing_one(tmp_path):
    """The reproduction of issue 7: SIGKILL while the baseline and the first sampled trial run. Before it, a second
    `wconv run` of the running sweep is refused in one line naming the first run's pid."""
    # FIFO: ASHA could stop a trial at its first rung, before the kill. The kill comes once the baseline and a
    # sampled trial are claimed (running in the store) and one of them has a checkpoint: 5 epochs of margin.
    path = _sweep(tmp_path, "early", samples=3, epochs=6, steps=12, scheduler={"type": "fifo"})
    store = Store(f"sqlite:///{tmp_path / 'wconv.db'}")
    proc = _start(path, tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and store.leases(sweep="early").empty:
        time.sleep(0.2)
    second = _start(path, tmp_path)
    while time.time() < deadline and proc.poll() is None:
        trials = store.trials(sweep="early")
        if (not trials.empty and trials["baseline"].astype(bool).any() and (~trials["baseline"].astype(bool)).any()
                and (trials["epochs_run"].fillna(0) >= 1).any() and second.poll() is not None):
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    assert _count(store, "early") == 0, "a trial finished before the kill; make trials longer"
    _kill(proc)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert f"pid {proc.pid}" in lines[0] and "is being run by" in lines[0]

    again = _start(path, tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert "trials 4/4 done" in out
    _check_cells(store, "early", cells=1, samples=3)
    finished = _start(path, tmp_path)
    out, _ = finished.communicate(timeout=120)
    assert finished.returncode == 0 and "is finished" in out


def test_repeated_random_kills_of_a_multi_cell_sweep_lose_and_duplicate_nothing(tmp_path):
    rng = random.Random(7)
    samples, seeds = 3, (0, 1)
    path = _sweep(tmp_path, "kills", seeds=seeds, samples=samples, epochs=3, steps=6)
    store = Store(f"sqlite:///{tmp_path / 'wconv.db'}")
    kills = 0
    for _ in range(6):
        proc = _start(path, tmp_path)
        time.sleep(rng.uniform(4.0, 12.0))
        if proc.poll() is not None:
            break  # the sweep finished between kills
        _kill(proc)
        kills += 1
    final = _start(path, tmp_path)
    out, err = final.communicate(timeout=600)
    assert final.returncode == 0, err[-3000:]
    print(f"{kills} SIGKILLs; terminal trials after: {_count(store, 'kills')}")
    assert kills >= 5, "the sweep finished too soon to be killed often; make its trials longer"
    _check_cells(store, "kills", cells=len(seeds), samples=samples)


def test_a_hung_runner_is_taken_over_after_its_heartbeat_falls_silent(tmp_path):
    """SIGSTOP freezes the runner as a hung node would (its pid lives on): a new run is refused while the
    lease's heartbeat is younger than the new run's lease timeout, and takes over once it is older, finishing
    with nothing lost; the frozen runner, woken, stops itself."""
    path = _sweep(tmp_path, "hung", samples=3, epochs=3, steps=10)
    store = Store(f"sqlite:///{tmp_path / 'wconv.db'}")
    first = _start(path, tmp_path, WCONV_LEASE_TIMEOUT_S="4")  # beats every second
    deadline = time.time() + 240
    while time.time() < deadline:
        trials = store.trials(sweep="hung")
        if not trials.empty and (trials["epochs_run"].fillna(0) >= 1).any():
            break
        time.sleep(0.3)
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        refused = _start(path, tmp_path, WCONV_LEASE_TIMEOUT_S="3600")
        _, err = refused.communicate(timeout=300)
        assert refused.returncode == 2 and "is being run by" in err
        time.sleep(2)
        second = _start(path, tmp_path, WCONV_LEASE_TIMEOUT_S="1")
        out, err = second.communicate(timeout=600)
        assert second.returncode == 0, err[-3000:]
        _check_cells(store, "hung", cells=1, samples=3)
        before = store.trials(sweep="hung")[["trial_id", "status", "metrics"]].to_dict("records")
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode != 0 and "taken over" in err
    assert store.trials(sweep="hung")[["trial_id", "status", "metrics"]].to_dict("records") == before

"""The whole path on real bundled data: YAML sweep → Ray Tune + Optuna + ASHA on a real local Ray cluster
→ SQLite results → `wconv best`; non-finite trials failing cleanly (kills and resumes: tests/test_resume.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from analysis.store import Store

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def _sweep(tmp_path: Path, name: str, **overrides) -> Path:
    spec = {
        "name": name,
        "task": "classification",
        "dataset": {"name": "digits"},
        "models": [{"name": "tiny_cnn", "options": {"width": 0.5}}],
        "kernels": {3: [[0.5, 1.5]]},
        "search": {"num_samples": 3, "metric": "val_accuracy", "seed": 0},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "training": {"epochs": 3, "batch_size": 64, "lr": 0.05, "hflip": False, "max_steps_per_epoch": 3},
        "resources": {"cpus_per_trial": 1},
        "storage": f"sqlite:///{tmp_path / 'wconv.db'}",
    }
    for key, value in overrides.items():
        spec[key] = dict(spec[key], **value) if isinstance(value, dict) and key in spec else value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _wconv(*args, cwd: Path, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_sweep_runs_end_to_end_and_best_compares_against_baseline(tmp_path):
    path = _sweep(tmp_path, "e2e")
    run = _wconv("run", str(path), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[cell 1/1 tiny_cnn-k3-s0] trials 4/4 done" in run.stdout

    store = Store(f"sqlite:///{tmp_path / 'wconv.db'}")
    trials = store.trials(sweep="e2e")
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"completed", "stopped"}
    baseline = trials[trials["baseline"].astype(bool)]
    assert len(baseline) == 1
    base = baseline.iloc[0]
    assert base["alpha"] == [1.0] and base["status"] == "completed" and base["epochs_run"] == 3
    assert {"val_accuracy", "test_accuracy", "test_f1"} <= set(base["metrics"])
    sampled = trials[~trials["baseline"].astype(bool)]
    assert all(0.5 <= a[0] <= 1.5 for a in sampled["alpha"])
    for _, t in trials.iterrows():  # every epoch a trial ran is in the store, once
        epochs = store.epochs("e2e", t["trial_id"])
        assert sorted(epochs["epoch"]) == list(range(1, t["epochs_run"] + 1))

    best = _wconv("best", "--sweep", "e2e", "--format", "json", "--storage", f"sqlite:///{tmp_path / 'wconv.db'}",
                  cwd=tmp_path)
    assert best.returncode == 0, best.stderr
    (row,) = json.loads(best.stdout)
    completed = sampled[sampled["status"] == "completed"]
    values = [m["val_accuracy"] for m in completed["metrics"]]
    assert row["best_value"] == max(values)
    assert row["baseline_value"] == base["metrics"]["val_accuracy"]
    assert row["n_trials"] == 4

    again = _wconv("run", str(path), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert again.returncode == 0 and "is finished" in again.stdout
    assert len(store.trials(sweep="e2e")) == 4


def test_non_finite_trials_fail_with_reason_and_the_sweep_finishes(tmp_path):
    path = _sweep(tmp_path, "nan", training={"epochs": 2, "batch_size": 64, "lr": 1e30,  # finite, and explodes at once
                                             "max_steps_per_epoch": 3, "hflip": False},
                  search={"num_samples": 2})
    run = _wconv("run", str(path), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    trials = Store(f"sqlite:///{tmp_path / 'wconv.db'}").trials(sweep="nan")
    assert len(trials) == 3
    assert set(trials["status"]) == {"failed"}
    assert all("non-finite" in r for r in trials["reason"])

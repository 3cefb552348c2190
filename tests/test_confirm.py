"""`wconv confirm` for real: a searched cell's α against α = 1 and the three control arms (init-scale, init-shape,
lr-shape) on fresh paired seeds, through the local launcher, killed and run again (by the sweep's name): nothing
lost, nothing run twice; and its statistics against scipy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from analysis.store import TERMINAL, Store

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
SEEDS = 3


def _wconv(*args, cwd: Path, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_confirm_runs_paired_arms_survives_a_kill_and_its_verdict_matches_scipy(tmp_path):
    spec = {
        "name": "conf", "task": "classification", "dataset": {"name": "digits"},
        "models": [{"name": "tiny_cnn", "options": {"width": 0.5}}], "kernels": {3: [[0.5, 1.5]]},
        # One trial at a time: a second trial worker costs its imports (~13 s of CPU) for trials of under a second.
        "search": {"num_samples": 2, "metric": "val_accuracy", "max_concurrent": 1}, "scheduler": {"type": "fifo"},
        "training": {"epochs": 2, "batch_size": 32, "lr": 0.05, "hflip": False, "max_steps_per_epoch": 8},
        "resources": {"cpus_per_trial": 1}, "storage": f"sqlite:///{tmp_path / 'wconv.db'}",
    }
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump(spec))
    runs = ["--runs-dir", str(tmp_path / "runs")]
    # The store as a plain path (a SQLite file, relative to the working directory): the same file as the spec's.
    search = _wconv("run", str(path), *runs, "--storage", "wconv.db", cwd=tmp_path)
    assert search.returncode == 0, search.stderr[-3000:]
    store = Store(spec["storage"])
    unconfirmed = json.loads(_wconv("best", "--sweep", "conf", "--by", "model", "--format", "json", "--storage",
                                    spec["storage"], cwd=tmp_path).stdout)
    assert unconfirmed[0]["verdict"] == "unconfirmed"
    chosen = unconfirmed[0]["best_alpha"]
    # A search whose α did not beat α = 1 has nothing to confirm by default (its best is α = 1): name one then.
    given = [] if unconfirmed[0]["beats_baseline"] else ["--alpha", "0.8"]
    chosen = chosen if not given else [0.8]

    arms = ("alpha", "baseline", "init-scale", "init-shape", "lr-shape")
    args = ["confirm", str(path), "--seeds", str(SEEDS), "--control", "lr-shape,init-scale,init-shape", *given, *runs]
    first = subprocess.Popen([sys.executable, "-m", "launch.cli", *args], cwd=tmp_path, start_new_session=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    def finished() -> int:
        confirm = store.trials(sweep="conf", stage="confirm")
        return 0 if confirm.empty else int(confirm["status"].isin(TERMINAL).sum())

    deadline = time.monotonic() + 400
    while finished() < 2 and first.poll() is None:
        if time.monotonic() > deadline:
            os.killpg(first.pid, signal.SIGKILL)
            pytest.fail(f"waited 400 s for two finished confirmation trials; saw {finished()}")
        time.sleep(0.1)
    # Frozen first, so that what is killed is known: a run mid-way through its SEEDS * 5 trials.
    os.killpg(first.pid, signal.SIGSTOP)
    assert first.poll() is None, "the confirmation ended before it could be killed"
    assert finished() < SEEDS * len(arms), "the confirmation finished before it could be killed; give it more trials"
    before = store.trials(sweep="conf", stage="confirm")
    done_before = {r["trial_id"]: r["updated_at"] for _, r in before.iterrows() if r["status"] in TERMINAL}
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    # Run again by the sweep's name, as best and report take it: the store recorded its validated spec.
    again = _wconv("confirm", "conf", *args[2:], "--storage", "wconv.db", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]

    confirm = store.trials(sweep="conf", stage="confirm")
    assert len(confirm) == SEEDS * len(arms) and confirm["trial_id"].is_unique
    assert (confirm["status"] == "completed").all(), confirm[["trial_id", "status", "reason"]].to_string()
    search_seeds = set(store.trials(sweep="conf", stage="search")["seed"])
    assert not search_seeds & set(confirm["seed"])  # fresh seeds, never the search's
    assert confirm.groupby("seed")["arm"].apply(sorted).map(tuple).unique().tolist() == [arms]
    # what had finished before the kill was not run again: its row is untouched
    after = confirm.set_index("trial_id")["updated_at"]
    assert done_before and all(after[t] == stamp for t, stamp in done_before.items())
    # nothing lost: every trial recorded its every epoch
    for tid in confirm["trial_id"]:
        assert sorted(store.epochs("conf", tid)["epoch"]) == [1, 2], tid
    alpha_arm = confirm[confirm["arm"] == "alpha"]
    assert all(a == chosen for a in alpha_arm["alpha"])

    by_arm = {arm: rows.set_index("seed")["metrics"].map(lambda m: m["test_accuracy"]).sort_index()
              for arm, rows in confirm.groupby("arm")}
    a, b = by_arm["alpha"].to_numpy(), by_arm["baseline"].to_numpy()
    (row,) = json.loads(_wconv("best", "--sweep", "conf", "--by", "model", "--format", "json", "--storage",
                               spec["storage"], cwd=tmp_path).stdout)
    assert len(row["confirm_seeds"]) == SEEDS
    assert row["confirm_difference"] == pytest.approx(float(np.mean(a - b)))
    if np.ptp(a - b) > 0:
        assert row["confirm_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    # Percentile bootstrap of three paired differences: its 95 % interval is exactly [min, max].
    assert row["confirm_ci_low"] == pytest.approx(float(np.min(a - b)))
    assert row["confirm_ci_high"] == pytest.approx(float(np.max(a - b)))
    assert row["verdict"] in ("confirmed", "not confirmed", "worse")
    shown = _wconv("best", "--sweep", "conf", "--by", "model", "--storage", spec["storage"], cwd=tmp_path).stdout
    assert row["verdict"] in shown
    for arm, field in (("init-scale", "init_scale"), ("init-shape", "init_shape"), ("lr-shape", "lr_shape")):
        c = by_arm[arm].to_numpy()
        assert row["controls"][arm]["difference"] == pytest.approx(float(np.mean(c - b)))
        gain = float(np.mean(a - b))
        assert row[f"{field}_explained"] == (pytest.approx(float(np.mean(c - b)) / gain) if gain > 0 else None)
    assert row["decomposition"] and row["decomposition"] in shown

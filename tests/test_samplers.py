"""``search.sampler``: Optuna's TPE (the default), random and grid samplers. A grid sweep runs every point of its
grid exactly once, the point α = 1 as the cell's baseline, through kills and resumes (a real SQLite store, a
real Optuna journal, and for the sweeps a real Ray local cluster)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from analysis.store import TERMINAL, Store
from launch.cell import prepare_sweep, trials_per_cell
from launch.lease import Holder
from launch.search import CellGrid, CellSearch, make_sampler
from launch.spec import grid_axes, parse_sweep

ROOT = Path(__file__).resolve().parents[1]


def _spec(tmp_path: Path, name: str = "grid", *, kernels=None, search=None, scheduler=None, epochs: int = 2,
          steps: int = 3) -> dict:
    return {
        "name": name, "task": "classification", "dataset": {"name": "digits"},
        "models": [{"name": "tiny_cnn", "options": {"width": 0.5}}],
        "kernels": kernels or {5: [[0.5, 1.5], [0.5, 1.5]]},
        "search": search or {"sampler": "grid", "grid_points": 3, "metric": "val_accuracy"},
        "scheduler": scheduler or {"type": "fifo"},
        "training": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "hflip": False, "max_steps_per_epoch": steps},
        "resources": {"cpus_per_trial": 1}, "storage": f"sqlite:///{tmp_path / 'wconv.db'}",
    }


# -- the spec ---------------------------------------------------------------------------------------


def test_grid_points_are_evenly_spaced_with_both_ends_and_decimals_kept():
    assert grid_axes([(0.5, 1.5)], 5) == [[0.5, 0.75, 1.0, 1.25, 1.5]]
    assert grid_axes([(0.1, 1.9)], 4) == [[0.1, 0.7, 1.3, 1.9]]  # not 0.7000000000000001
    low, high = 0.123456789012345, 0.9876543210987
    assert grid_axes([(low, high)], 3)[0][0] == low and grid_axes([(low, high)], 3)[0][-1] == high


@pytest.mark.parametrize("kernels, points, samples", [
    ({3: [[0.5, 1.5]]}, 5, 4),                     # 5 points, α = 1 among them: it is the baseline
    ({3: [[0.5, 1.5]]}, 4, 4),                     # 0.5, 0.833…, 1.166…, 1.5: the baseline runs besides
    ({5: [[0.5, 1.5], [0.5, 1.5]]}, 3, 8),         # 3² = 9 points, (1, 1) among them
    ({5: [[0.05, 1.5], [0.5, 1.5]]}, 5, 25),       # 5² = 25 points; 0.05…1.5 in steps of 0.3625 misses 1
    ({5: [[0.5, 1.5], [0.5, 1.5]], 7: [[0.5, 1.5], [0.5, 1.5], [0.5, 1.5]]}, None, None),
])
def test_a_grid_sets_num_samples_from_its_points_less_the_baseline(tmp_path, kernels, points, samples):
    if samples is None:  # 3² vs 3³ sampled trials: one num_samples cannot hold both
        with pytest.raises(Exception, match=r"search.sampler: grid gives the kernel sizes different numbers"):
            parse_sweep(_spec(tmp_path, kernels=kernels, search={"sampler": "grid", "grid_points": 3}))
        return
    sweep = parse_sweep(_spec(tmp_path, kernels=kernels, search={"sampler": "grid", "grid_points": points}))
    assert sweep.search.num_samples == samples
    given = parse_sweep(_spec(tmp_path, kernels=kernels,
                              search={"sampler": "grid", "grid_points": points, "num_samples": samples}))
    assert given == sweep
    recorded = sweep.model_dump(mode="json")  # read back as `wconv confirm` reads the store's spec
    again = parse_sweep(dict(recorded, kernels={int(k): v for k, v in recorded["kernels"].items()}))
    assert again.search.num_samples == samples


# -- the samplers, in-process -------------------------------------------------------------------------


def test_each_sampler_is_optunas_own(tmp_path):
    for name, kind in (("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
                       ("grid", optuna.samplers.GridSampler)):
        search = {"sampler": name, "num_samples": 4} if name != "grid" else {"sampler": name, "grid_points": 2}
        sweep = parse_sweep(_spec(tmp_path, search=search))
        assert isinstance(make_sampler(sweep, sweep.cells()[0], 0), kind)
    assert parse_sweep(_spec(tmp_path, search={"num_samples": 2})).search.sampler == "tpe"


def _complete(search: CellSearch, tune_id: str, value: float) -> None:
    """What a finished trial does: the store's callback records it, then the searcher tells the study."""
    with Store(search.sweep.storage) as store:
        store.record_trial(search.sweep.name, search.running[tune_id], status="completed", epochs_run=2,
                           metrics={"val_accuracy": value})
    search.on_trial_complete(tune_id, {"epoch": 2, "val_accuracy": value, "finished": True,
                                       "trial_status": "completed", "final/val_accuracy": value})


def test_grid_claims_take_every_point_once_across_a_resume(tmp_path):
    """One searcher claims the baseline and three points and finishes two; a second one (another process after a
    kill: a fresh GridSampler on the same journal) takes over the two unfinished ones, then the rest of the grid,
    and never a point twice; the last point's tell does not call ``study.stop()`` outside ``optimize``."""
    sweep, runs = prepare_sweep(parse_sweep(_spec(tmp_path)), tmp_path / "runs")
    cell = sweep.cells()[0]
    grid = set(itertools.product(*grid_axes(cell.ranges, 3)))
    assert len(grid) == 9 and (1.0, 1.0) in grid and trials_per_cell(sweep) == 9

    first = CellSearch(sweep, cell, runs, Holder("killed", "h", 1, 0.0, None))
    claimed = [first.suggest(f"a{i}") for i in range(4)]
    assert claimed[0] == {"alpha_1": 1.0, "alpha_2": 1.0}  # the baseline first, not asked from the grid
    _complete(first, "a0", 0.5)
    _complete(first, "a1", 0.6)

    second = CellSearch(sweep, cell, runs, Holder("resumed", "h", 2, 0.0, None))
    assert isinstance(second.study.sampler, CellGrid)
    more = []
    while (config := second.suggest(f"b{len(more)}")) != "FINISHED" and len(more) < 20:
        more.append(config)
        _complete(second, f"b{len(more) - 1}", 0.1 * len(more))
    alphas = [tuple(c.values()) for c in claimed + more]
    assert len(more) == 7 and set(tuple(c.values()) for c in more[:2]) == set(alphas[2:4])  # the orphans first
    assert len(set(alphas[:2] + alphas[4:])) == 9 and set(alphas) == grid
    done = [t for t in second.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 9  # every point told, the baseline's included
    duplicates = [t for t in second.study.trials if t.user_attrs.get("duplicate")]
    # Every process's GridSampler names the same point by the same index (its seed shuffles the grid).
    grid_of = second.study.sampler._all_grids
    asked = [t for t in second.study.trials if "grid_id" in t.system_attrs]
    assert len(asked) >= 8 and all(grid_of[t.system_attrs["grid_id"]] == (t.params["alpha_1"], t.params["alpha_2"])
                                   for t in asked)
    # The grid's point α = 1 is the baseline: if the grid proposes it, it is told as a duplicate; nothing else is.
    assert {tuple(t.params.values()) for t in duplicates} <= {(1.0, 1.0)} and len(duplicates) <= 1


# -- sweeps through `wconv run` --------------------------------------------------------------------------


def _start(path: Path, tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launch.cli", "run", str(path), "--runs-dir", str(tmp_path / "runs"),
                             "--num-cpus", "2"], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _wait(what: str, probe, seen, timeout: float = 600, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(every)
    pytest.fail(f"waited {timeout:.0f} s for {what}; saw: {seen()}")


@pytest.mark.integration
def test_a_grid_sweep_runs_its_grid_exactly_once_through_a_kill(tmp_path):
    """3 values per coefficient of a 5×5 kernel: 9 trials, (1, 1) the baseline. SIGKILLed once two trials are
    finished, the sweep is run again: the store holds each grid point once, every epoch once."""
    path = _write(tmp_path, _spec(tmp_path, steps=6))
    store = Store(f"sqlite:///{tmp_path / 'wconv.db'}")

    def seen() -> str:
        trials = store.trials(sweep="grid")
        return "no trials" if trials.empty else trials[["trial_id", "status", "epochs_run"]].to_string()

    def terminal() -> int:
        trials = store.trials(sweep="grid")
        return 0 if trials.empty else int(trials["status"].isin(TERMINAL).sum())

    proc = _start(path, tmp_path)
    try:
        _wait("two finished trials", lambda: terminal() >= 2 or proc.poll() is not None, seen)
        assert proc.poll() is None, f"the sweep ended before its kill; make trials longer: {seen()}"
        assert terminal() < 9
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
    again = _start(path, tmp_path)
    out, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-3000:]
    assert "trials 9/9 done" in out, out[-3000:]

    trials = store.trials(sweep="grid")
    assert trials["trial_id"].is_unique and len(trials) == 9, seen()
    assert trials["status"].isin(TERMINAL).all(), seen()
    grid = set(itertools.product([0.5, 1.0, 1.5], repeat=2))
    assert {tuple(a) for a in trials["alpha"]} == grid
    baseline = trials[trials["baseline"].astype(bool)]
    assert [tuple(a) for a in baseline["alpha"]] == [(1.0, 1.0)]
    for _, row in trials.iterrows():
        epochs = store.epochs("grid", row["trial_id"])
        assert list(epochs["epoch"]) == list(range(1, int(row["epochs_run"]) + 1)), row["trial_id"]
    assert (trials["epochs_run"] == 2).all()  # FIFO: every point to its full budget


@pytest.mark.integration
def test_a_random_sampler_sweep_validates_and_runs(tmp_path):
    spec = _spec(tmp_path, "random", kernels={3: [[0.5, 1.5]]}, epochs=1,
                 search={"sampler": "random", "num_samples": 2, "metric": "val_accuracy", "seed": 3})
    path = _write(tmp_path, spec)
    done = subprocess.run([sys.executable, "-m", "launch.cli", "validate", str(path)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0 and "3 trials" in done.stdout, done.stderr
    proc = _start(path, tmp_path)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    trials = Store(spec["storage"]).trials(sweep="random")
    assert len(trials) == 3 and trials["status"].isin(TERMINAL).all()
    sampled = [a[0] for a, b in zip(trials["alpha"], trials["baseline"]) if not b]
    assert len(set(sampled)) == 2 and all(0.5 <= a <= 1.5 and a != 1.0 for a in sampled)

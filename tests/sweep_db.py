"""A real results database for the analysis tests: the smoke sweeps, shrunk, run once per test session through
the ``wconv`` command in subprocesses (real Ray local clusters, real trials, real SQLite).

Import the fixtures into a test module (``from sweep_db import smoke_db  # noqa: F401``); the database is built
once per session however many modules use it (module-level cache: pytest would run a session fixture once per
module that imports it).

Shrunk so both sweeps, run side by side with one trial slot each (so the two Ray clusters keep one worker
each and never fight over the 2 cores), take 1–2 minutes: classification (digits, tiny_cnn, 3×3) with 4
sampled α, 4 epochs and ASHA rungs at epochs 1 and 3; denoising (natural images, tiny_denoiser) at 5×5 only
with 3 sampled α, 12 test tiles and 64 training patches per epoch. The results hold completed and baseline
trials (and usually some ASHA stopped), a confusion matrix and denoiser checkpoints.

While working on the analysis, ``WCONV_SMOKE_DB=/path/results.db`` reuses a database an earlier ``build`` wrote
(its checkpoints must still be where it recorded them) instead of running the sweeps again.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WCONV = Path(sys.executable).with_name("wconv")
CLASSIFICATION, DENOISING = "smoke", "smoke_denoise"
RUNS = {
    CLASSIFICATION: ["sweeps/smoke.yaml", "--set", "search.num_samples=4", "--set", "training.epochs=4",
                     "--set", "scheduler.grace_period=1"],
    DENOISING: ["sweeps/smoke_denoise.yaml", "--set", "search.num_samples=3", "--set", "training.epochs=4",
                "--set", "kernels={5: [[0.05, 1.5], [0.5, 1.5]]}", "--set", "dataset.options.tiles_per_image=12",
                "--set", "dataset.options.patches_per_epoch=64"],
}
_built: dict[str, Path] = {}


def build(base: Path) -> Path:
    """Run both smoke sweeps into ``base/results.db`` (checkpoints under ``base/runs``); fail with their output."""
    db = base / "results.db"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = {}
    for name, args in RUNS.items():
        cmd = [str(WCONV), "run", *args, "--storage", f"sqlite:///{db}", "--runs-dir", str(base / "runs"),
               "--num-cpus", "1"]
        log = open(base / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    for name, (proc, log) in procs.items():
        rc = proc.wait(timeout=900)
        log.close()
        if rc != 0:
            raise AssertionError(f"`wconv run` of {name} exited {rc}:\n{(base / f'{name}.log').read_text()[-4000:]}")
    return db


@pytest.fixture(scope="session")
def smoke_db(tmp_path_factory) -> Path:
    """Path of the session's results database (read it; copy it before writing to it)."""
    if "db" not in _built:
        reuse = os.environ.get("WCONV_SMOKE_DB")
        _built["db"] = Path(reuse) if reuse else build(tmp_path_factory.mktemp("smoke_sweeps"))
    return _built["db"]


CONFIRMATION = {"alpha": [0.91, 0.93, 0.90], "baseline": [0.88, 0.91, 0.89], "init-scale": [0.90, 0.91, 0.895],
                "init-shape": [0.905, 0.925, 0.90], "lr-shape": [0.885, 0.915, 0.89]}
"""test_accuracy per arm on the confirmation seeds ``CONFIRM_SEEDS`` that ``with_confirmation`` writes."""
CONFIRM_SEEDS = (1000, 1001, 1002)


def with_confirmation(db: Path, copy_to: Path) -> Path:
    """A copy of ``db`` plus a confirmation of the classification sweep's chosen α on three fresh seeds, written
    through the store as `wconv confirm` records it (stage "confirm", one trial per arm and seed; values
    ``CONFIRMATION``): the confirmation views get known numbers to be checked against."""
    from analysis.store import Store

    shutil.copy(db, copy_to)
    with sqlite3.connect(copy_to) as conn:
        rows = conn.execute("SELECT alpha, metrics FROM trials WHERE sweep = ? AND stage = 'search' AND status = "
                            "'completed' AND NOT baseline", (CLASSIFICATION,)).fetchall()
    best = max(rows, key=lambda r: (json.loads(r[1])["val_accuracy"], [-x for x in json.loads(r[0])]))
    chosen = json.loads(best[0])
    with Store(f"sqlite:///{copy_to}") as store:
        for arm, per_seed in CONFIRMATION.items():
            for seed, value in zip(CONFIRM_SEEDS, per_seed):
                store.record_trial(CLASSIFICATION, f"tiny_cnn-k3-s{seed}/{arm}", cell=f"tiny_cnn-k3-s{seed}",
                                   model="tiny_cnn", kernel_size=3, seed=seed, stage="confirm", arm=arm,
                                   alpha=chosen if arm == "alpha" else [1.0], baseline=arm == "baseline",
                                   status="completed", metrics={"val_accuracy": 0.5, "test_accuracy": value})
    return copy_to

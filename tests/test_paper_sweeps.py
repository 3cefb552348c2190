"""The paper's three sweeps validate, plan, and run a few steps on tiny official-format files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.store import Store
from launch.cli import main
from launch.spec import load_sweep
from official_formats import write_cifar100, write_div2k

ROOT = Path(__file__).resolve().parents[1]
PAPER = {"cifar100_3x3.yaml": write_cifar100, "div2k_3x3.yaml": write_div2k, "div2k_5x5.yaml": write_div2k}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_sweep_plans_its_budget(name, capsys):
    sweep = load_sweep(ROOT / "sweeps" / name)
    assert main(["plan", str(ROOT / "sweeps" / name)]) == 0
    out = capsys.readouterr().out
    per_cell = (sweep.search.num_samples + 1) * sweep.training_config().epochs
    for cell in sweep.cells():
        assert cell.id in out
    assert f"{len(sweep.cells()) * per_cell} epochs at most" in out


def test_paper_protocols_are_the_defaults():
    cifar = load_sweep(ROOT / "sweeps" / "cifar100_3x3.yaml")
    tc = cifar.training_config()
    assert (tc.optimizer, tc.lr, tc.momentum, tc.label_smoothing, tc.batch_size, tc.epochs, tc.hflip) == (
        "sgd", 0.1, 0.9, 0.1, 128, 200, True)
    assert [m.name for m in cifar.models] == ["resnet56", "vgg16", "nin", "gmlp", "gac_snn"]
    assert cifar.cells()[0].ranges == ((0.5, 1.5),)
    five = load_sweep(ROOT / "sweeps" / "div2k_5x5.yaml")
    assert five.cells()[0].ranges == ((0.05, 1.5), (0.5, 1.5))
    dn = five.training_config()
    assert (dn.optimizer, dn.betas, dn.noise_sigma, dn.epochs) == ("adam", (0.9, 0.999), 0.01, 100)


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_sweep_runs_a_few_steps_on_tiny_official_files(name, tmp_path):
    root = tmp_path / "data"
    PAPER[name](root)
    db = tmp_path / "wconv.db"
    overrides = [
        "dataset.root=data", "dataset.options.verify=false", "dataset.options.limit=6",
        "models.*.options.width=0.125", "training.epochs=1", "training.max_steps_per_epoch=1",
        "training.batch_size=4", "search.num_samples=1", "scheduler.grace_period=1",
        "resources.cpus_per_trial=1", "resources.gpus_per_trial=0", f"storage=sqlite:///{db}",
    ]
    args = [sys.executable, "-m", "launch.cli", "run", str(ROOT / "sweeps" / name), "--runs-dir", str(tmp_path / "runs")]
    for o in overrides:
        args += ["--set", o]
    run = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode == 0, run.stderr[-3000:]
    sweep = load_sweep(ROOT / "sweeps" / name)
    trials = Store(f"sqlite:///{db}").trials(sweep=sweep.name)
    assert sorted(set(trials["cell"])) == sorted(c.id for c in sweep.cells())
    assert len(trials) == 2 * len(sweep.cells())
    assert set(trials["status"]) == {"completed"}, trials[["cell", "status", "reason"]].to_string()
    metric = "test_accuracy" if sweep.task == "classification" else "test_psnr"
    assert all(metric in m for m in trials["metrics"])

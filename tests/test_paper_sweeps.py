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


@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory) -> dict[str, tuple[subprocess.Popen, Path]]:
    """`wconv run` of each paper sweep on tiny official-format files, all three started at once with one trial
    slot each: every cell starts its own trial worker (imports, data, model) one after another, so three runs side by
    side keep both cores busy where one would leave one idle."""
    runs = {}
    for name, write in PAPER.items():
        base = tmp_path_factory.mktemp(name.removesuffix(".yaml"))
        write(base / "data")
        overrides = [
            "dataset.root=data", "dataset.options.verify=false", "dataset.options.limit=6",
            "models.*.options.width=0.125", "training.epochs=1", "training.max_steps_per_epoch=1",
            "training.batch_size=4", "search.num_samples=1", "scheduler.grace_period=1",
            "resources.cpus_per_trial=1", "resources.gpus_per_trial=0", f"storage=sqlite:///{base / 'wconv.db'}",
        ]
        args = [sys.executable, "-m", "launch.cli", "run", str(ROOT / "sweeps" / name), "--runs-dir",
                str(base / "runs"), "--num-cpus", "1"]
        for o in overrides:
            args += ["--set", o]
        log = base / "run.log"
        with open(log, "w") as out:
            runs[name] = (subprocess.Popen(args, cwd=base, stdout=out, stderr=subprocess.STDOUT,
                                           env=dict(os.environ, PYTHONPATH=str(ROOT))), base)
    yield runs
    for proc, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_sweep_runs_a_few_steps_on_tiny_official_files(name, paper_runs):
    proc, base = paper_runs[name]
    assert proc.wait(timeout=900) == 0, (base / "run.log").read_text()[-3000:]
    sweep = load_sweep(ROOT / "sweeps" / name)
    trials = Store(f"sqlite:///{base / 'wconv.db'}").trials(sweep=sweep.name)
    assert sorted(set(trials["cell"])) == sorted(c.id for c in sweep.cells())
    assert len(trials) == 2 * len(sweep.cells())
    assert set(trials["status"]) == {"completed"}, trials[["cell", "status", "reason"]].to_string()
    metric = "test_accuracy" if sweep.task == "classification" else "test_psnr"
    assert all(metric in m for m in trials["metrics"])

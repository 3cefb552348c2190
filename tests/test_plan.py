"""`wconv plan` budgets from wconv's own measured epoch times and says where each comes from; it ends its explanation
in a whole sentence; and any `wconv` command whose reader goes away (`| head`) stops quietly instead of printing a
BrokenPipeError traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _wconv(*args, stdout=subprocess.PIPE, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=300, cwd=cwd, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_plan_ends_in_a_whole_sentence_saying_where_rough_times_come_from(tmp_path):
    done = _wconv("plan", str(ROOT / "sweeps" / "smoke.yaml"), "--set", f"storage=sqlite:///{tmp_path / 'none.db'}",
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    last = done.stdout.splitlines()[-1]
    assert last.startswith("rough time comes from earlier trials of the same model and dataset in the results "
                           "database, else benchmarks/gpu.py's measurements shipped with wconv")
    assert last.endswith("; run a short sweep first to time this machine"), last


def test_a_reader_that_goes_away_ends_plan_quietly(tmp_path):
    """The pipe's reader closes before `wconv plan` writes (as `head` does once it has its lines)."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = _wconv("plan", str(ROOT / "sweeps" / "cifar100_3x3.yaml"), "--set",
                      f"storage=sqlite:///{tmp_path / 'none.db'}", stdout=write, cwd=tmp_path)
    finally:
        os.close(write)
    assert done.stderr == "" and done.returncode == 1, done.stderr[-3000:]


def test_plan_piped_into_head_prints_its_first_lines_and_no_traceback(tmp_path):
    sweep = ROOT / "sweeps" / "cifar100_3x3.yaml"
    # Many cells (`seeds` repeated), so that the output is far larger than a pipe's buffer and head exits first.
    seeds = "[" + ",".join(map(str, range(3000))) + "]"
    done = subprocess.run(f"{sys.executable} -m launch.cli plan {sweep} --set 'seeds={seeds}' "
                          f"--set storage=sqlite:///{tmp_path / 'none.db'} | head -n 2", shell=True,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert len(done.stdout.splitlines()) == 2 and done.stdout.startswith("sweep 'cifar100_3x3'")
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr[-3000:]


# -- where the seconds per epoch come from -----------------------------------------------------------------


def _rows(out: str) -> dict[str, dict]:
    """The cell rows of `wconv plan`: trials, expected epochs, rough time and where its timing comes from."""
    import re

    rows = {}
    for line in out.splitlines():
        found = re.fullmatch(r"(\S+-k\d+-s\d+)\s+\[.*\]\s+(\d+)\s+(\d+)\s+(\d+)\s+(- |\S+ \S+)\s+(.*)", line)
        if found:
            cell, trials, _, expected, time, source = found.groups()
            rows[cell] = {"trials": int(trials), "expected": int(expected), "time": time.strip(), "source": source}
    return rows


def test_a_paper_sweep_on_gpus_is_budgeted_from_the_benchmarks_measurements_naming_the_card(tmp_path):
    done = _wconv("plan", str(ROOT / "sweeps" / "cifar100_3x3.yaml"), "--set", f"storage=sqlite:///{tmp_path / 'none.db'}",
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    row = _rows(done.stdout)["resnet56-k3-s0"]
    assert row["source"] == "benchmarks/gpu.py, NVIDIA H100 80GB HBM3", row
    assert row["time"] == f"{row['expected'] * 10.54 / 3600:.1f} h"  # the H100's weighted epoch, not the paper's 215 s
    on_cpus = _wconv("plan", str(ROOT / "sweeps" / "cifar100_3x3.yaml"), "--set", "resources.gpus_per_trial=0",
                     "--set", f"storage=sqlite:///{tmp_path / 'none.db'}", cwd=tmp_path)
    assert _rows(on_cpus.stdout)["resnet56-k3-s0"]["source"] == "no timing yet"  # GPU timings say nothing of a CPU


def test_earlier_trials_of_the_same_model_and_dataset_come_first(tmp_path):
    from analysis.store import Store
    from launch.spec import load_sweep

    db = tmp_path / "wconv.db"
    sweep = load_sweep(ROOT / "sweeps" / "cifar100_3x3.yaml", [f"storage=sqlite:///{db}", "name=earlier"])
    other = load_sweep(ROOT / "sweeps" / "cifar100_3x3.yaml", [f"storage=sqlite:///{db}", "name=narrow",
                                                               "models=[{name: vgg16, options: {width: 0.5}}]"])
    with Store(f"sqlite:///{db}") as store:
        for s in (sweep, other):
            store.record_sweep(s.name, task=s.task, metric=s.metric, mode=s.mode, spec=s.model_dump(mode="json"))
        for i, (seconds, epochs) in enumerate([(300.0, 10), (500.0, 10), (100.0, 2)]):  # 30, 50, 50 s per epoch
            store.record_trial("earlier", f"resnet56-k3-s0/t{i}", cell="resnet56-k3-s0", model="resnet56",
                               kernel_size=3, alpha=[0.5 + i / 10], status="completed", epochs_run=epochs,
                               wall_time_s=seconds, device="NVIDIA A100-SXM-64GB")
        store.record_trial("narrow", "vgg16-k3-s0/t0", cell="vgg16-k3-s0", model="vgg16", kernel_size=3,
                           alpha=[0.7], status="completed", epochs_run=4, wall_time_s=4.0, device="cpu")
    done = _wconv("plan", str(ROOT / "sweeps" / "cifar100_3x3.yaml"), "--set", f"storage=sqlite:///{db}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stdout)
    resnet = rows["resnet56-k3-s0"]
    assert resnet["source"] == "earlier trials (3, NVIDIA A100-SXM-64GB)", resnet
    assert resnet["time"] == f"{resnet['expected'] * 50 / 3600:.1f} h"  # the median, 50 s
    # vgg16 at width 0.5 is not the paper's vgg16: its timing does not stand for this sweep's.
    assert rows["vgg16-k3-s0"]["source"] == "benchmarks/gpu.py, NVIDIA H100 80GB HBM3", rows["vgg16-k3-s0"]


def test_the_paper_is_the_fallback_where_nothing_was_measured(tmp_path, monkeypatch):
    from launch import budget
    from launch.spec import load_sweep

    sweep = load_sweep(ROOT / "sweeps" / "div2k_5x5.yaml")
    cell = next(c for c in sweep.cells() if c.model == "dncnn")
    assert budget.seconds_per_epoch(sweep, cell, budget.StoreTiming()) == (2.59, "benchmarks/gpu.py, NVIDIA H100 "
                                                                                 "80GB HBM3")
    monkeypatch.setattr(budget, "measured_table", lambda: [])  # a card-less install: nothing measured
    assert budget.seconds_per_epoch(sweep, cell, budget.StoreTiming()) == (9.76, "paper, A100")


def test_the_shipped_measurements_are_the_benchmark_documentations_numbers():
    """Every number in launch/epoch_seconds.yaml is one docs/benchmarks.md reports as measured on that card."""
    import re

    from launch.budget import measured_table

    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    (entry,) = measured_table()
    assert entry["card"] in docs
    documented = {(m, int(k)): (float(a), float(b)) for m, k, a, b in
                  re.findall(r"^\| (\w+) (\d)×\d \| ([\d.]+) / ([\d.]+) \|", docs, flags=re.M)}
    shipped = {(m, k): tuple(v) for m, by_kernel in entry["seconds"].items() for k, v in by_kernel.items()}
    assert shipped and shipped == documented


def test_plan_shows_a_grids_points(tmp_path):
    done = _wconv("plan", str(ROOT / "sweeps" / "smoke.yaml"), "--set", "search.sampler=grid", "--set",
                  "search.grid_points=5", "--set", "search.num_samples=4", "--set", "kernels={5: [[0.5, 1.5], [0.5, 1.5]]}",
                  "--set", f"storage=sqlite:///{tmp_path / 'none.db'}", cwd=tmp_path)
    assert done.returncode != 0 and "set it to 24" in done.stderr  # 5² points, one of them α = 1
    done = _wconv("plan", str(ROOT / "sweeps" / "smoke.yaml"), "--set", "search.sampler=grid", "--set",
                  "search.grid_points=5", "--set", "search.num_samples=24", "--set",
                  "kernels={5: [[0.5, 1.5], [0.5, 1.5]]}", "--set", f"storage=sqlite:///{tmp_path / 'none.db'}",
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "grid search: 5 values per free coefficient, 25 grid points per cell, α = 1 among them (the baseline)" \
        in done.stdout
    assert _rows(done.stdout)["tiny_cnn-k5-s0"]["trials"] == 25  # the grid; the baseline is its point (1, 1)

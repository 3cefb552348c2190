"""`wconv plan` budgets from wconv's own measured epoch times and says where each comes from; it ends its explanation
in a whole sentence; and any `wconv` command whose reader goes away (`| head`) stops quietly instead of printing a
BrokenPipeError traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
                  "--set", "resources.group_size=1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "grid search: 5 values per free coefficient, 25 grid points per cell, α = 1 among them (the baseline)" \
        in done.stdout
    assert _rows(done.stdout)["tiny_cnn-k5-s0"]["trials"] == 25  # the grid; the baseline is its point (1, 1)


# -- fused groups (resources.group_size > 1): groups per cell, a group's epoch and where it comes from ----------------


def _group_rows(out: str) -> dict[str, dict]:
    """The cell rows of `wconv plan` with fused groups: trials, groups, group-epochs, rough time, timing source."""
    import re

    rows = {}
    for line in out.splitlines():
        found = re.fullmatch(r"(\S+-k\d+-s\d+)\s+\[.*\]\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(- |\S+ \S+)\s+(.*)", line)
        if found:
            cell, trials, groups, worst, expected, time, source = found.groups()
            rows[cell] = {"trials": int(trials), "groups": int(groups), "worst": int(worst), "expected": int(expected),
                          "time": time.strip(), "source": source}
    return rows


def _plan(tmp_path, sweep: str, *sets: str, db: str = "none.db") -> str:
    """``wconv plan`` in this process (the command's own ``main``; the subprocess tests above cover the installed
    command)."""
    import contextlib
    import io

    from launch.cli import main

    args = [a for s in (*sets, f"storage=sqlite:///{tmp_path / db}") for a in ("--set", s)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["plan", str(ROOT / "sweeps" / sweep), *args]) in (0, None)
    return out.getvalue()


def test_plan_with_fused_groups_shows_the_groups_per_cell_and_their_members(tmp_path):
    from launch.budget import cell_groups
    from launch.cell import cell_epochs
    from launch.spec import load_sweep

    out = _plan(tmp_path, "smoke.yaml", "resources.group_size=4")
    assert "fused groups: up to 4 trials per group, 3 groups per cell (4+4+1)" in out  # 8 samples + the baseline
    row = _group_rows(out)["tiny_cnn-k3-s0"]
    # The baseline's group runs all 8 epochs; the others as long as their longest member (rungs 2, 6; 1 in 3 go on).
    longest = lambda members: 2 + (1 - (2 / 3) ** members) * 4 + (1 - (8 / 9) ** members) * 2  # noqa: E731
    assert row == {"trials": 9, "groups": 3, "worst": 24, "expected": round(8 + longest(4) + longest(1)),
                   "time": "-", "source": "no timing yet"}, row
    assert "3 groups, 24 group-epochs (72 trial epochs) at most" in out
    even = _plan(tmp_path, "smoke.yaml", "resources.group_size=3")
    assert "up to 3 trials per group, 3 groups per cell (3+3+3)" in even and "smaller group" not in even
    alone = _plan(tmp_path, "smoke.yaml", "resources.group_size=1")
    assert "fused groups" not in alone and "groups" not in alone  # group_size 1: the plan of one trial per slot
    sweep = load_sweep(ROOT / "sweeps" / "smoke.yaml", ["resources.group_size=1"])
    groups, (worst, expected) = cell_groups(sweep), cell_epochs(sweep)  # K = 1: today's numbers
    assert groups.sizes == (1,) * 9 and groups.worst == worst and groups.expected == pytest.approx(expected)


def _hours(row: dict) -> float:
    """A row's rough time back in hours (the plan prints "X.Y h")."""
    number, unit = row["time"].split()
    assert unit == "h", row
    return float(number)


def _expected(k: int) -> float:
    """Expected group-epochs of a cell of sweeps/cifar100_3x3.yaml in groups of ``k`` (the plan shows them rounded)."""
    from launch.budget import cell_groups
    from launch.spec import load_sweep

    return cell_groups(load_sweep(ROOT / "sweeps" / "cifar100_3x3.yaml", [f"resources.group_size={k}"])).expected


def test_the_shipped_fused_speedup_is_used_for_a_measured_model_on_gpus_naming_the_card(tmp_path):
    card = "benchmarks/gpu.py, NVIDIA H100 80GB HBM3"
    rows = _group_rows(_plan(tmp_path, "cifar100_3x3.yaml", "resources.group_size=4"))
    resnet = rows["resnet56-k3-s0"]  # 17 trials: 4+4+4+4+1
    assert resnet["groups"] == 5 and resnet["worst"] == 1000
    assert resnet["source"] == f"{card}; × 4 ÷ fused 1.18× ({card})", resnet
    assert resnet["expected"] == round(_expected(4))
    assert _hours(resnet) == round(_expected(4) * 10.54 * 4 / 1.18 / 3600, 1)
    vgg = rows["vgg16-k3-s0"]  # fusion was not measured for vgg16: K × its epoch, said so
    assert vgg["source"] == f"{card}; no fused timing: 4 × one trial's epoch", vgg
    assert _hours(vgg) == round(_expected(4) * 6.58 * 4 / 3600, 1)
    # Only the group sizes that were measured: 3 was not.
    three = _group_rows(_plan(tmp_path, "cifar100_3x3.yaml", "resources.group_size=3"))["resnet56-k3-s0"]
    assert three["source"] == f"{card}; no fused timing: 3 × one trial's epoch", three
    on_cpus = _plan(tmp_path, "cifar100_3x3.yaml", "resources.group_size=4", "resources.gpus_per_trial=0")
    assert _group_rows(on_cpus)["resnet56-k3-s0"]["source"] == "no timing yet"  # a GPU's speedup says nothing of a CPU


def test_earlier_groups_of_the_same_size_come_first_then_a_speedup_the_store_measured(tmp_path):
    from analysis.store import Store
    from launch.spec import load_sweep

    db = tmp_path / "wconv.db"
    h100 = "NVIDIA H100 80GB HBM3"
    grouped = load_sweep(ROOT / "sweeps" / "cifar100_3x3.yaml", [f"storage=sqlite:///{db}", "name=grouped",
                                                                 "resources.group_size=4"])
    narrow = load_sweep(ROOT / "sweeps" / "cifar100_3x3.yaml", [f"storage=sqlite:///{db}", "name=narrow",
                                                                "resources.group_size=4",
                                                                "models=[{name: vgg16, options: {width: 0.5}}]"])
    with Store(f"sqlite:///{db}") as store:
        for s in (grouped, narrow):
            store.record_sweep(s.name, task=s.task, metric=s.metric, mode=s.mode, spec=s.model_dump(mode="json"))

        def trial(sweep, tid, model, seconds, epochs, group=None, member=None, device=h100):
            store.record_trial(sweep, tid, cell=f"{model}-k3-s0", model=model, kernel_size=3, alpha=[0.5],
                               status="completed", epochs_run=epochs, wall_time_s=seconds, device=device,
                               group_id=group, member=member)

        # resnet56: two groups of 4 (40 and 44 s per group epoch), a group of 2 (not this size), one lone trial.
        for g, seconds in (("g0", 400.0), ("g1", 440.0)):
            for m in range(4):
                epochs = (2, 5, 8, 10)[m]  # members stopped along the way: their wall time is the group's meanwhile
                trial("grouped", f"resnet56-k3-s0/{g}-{m}", "resnet56", seconds * epochs / 10, epochs, g, m)
        for m in range(2):
            trial("grouped", f"resnet56-k3-s0/g2-{m}", "resnet56", 1000.0, 10, "g2", m)
        trial("grouped", "resnet56-k3-s0/lone", "resnet56", 120.0, 10)
        # vgg16 at width 0.5: lone 2 s per epoch, a group of 4 at 5 s per group epoch on the same card: 1.6×.
        for m in range(4):
            trial("narrow", f"vgg16-k3-s0/g0-{m}", "vgg16", 50.0, 10, "g0", m)
        trial("narrow", "vgg16-k3-s0/lone", "vgg16", 20.0, 10)
        # On a CPU, 0.8×: a CPU's speedup says nothing of a GPU's.
        for m in range(4):
            trial("narrow", f"vgg16-k3-s0/g1-{m}", "vgg16", 1000.0, 10, "g1", m, device="cpu")
        trial("narrow", "vgg16-k3-s0/lone-cpu", "vgg16", 200.0, 10, device="cpu")
    rows = _group_rows(_plan(tmp_path, "cifar100_3x3.yaml", "resources.group_size=4", db="wconv.db"))
    resnet = rows["resnet56-k3-s0"]
    assert resnet["source"] == f"earlier groups of 4 (8 members, {h100})", resnet
    assert _hours(resnet) == round(_expected(4) * 42 / 3600, 1)  # the median group epoch, 42 s
    # vgg16 (default width) was never timed in groups: the benchmark's epoch × 4 ÷ the store's speedup at width 0.5.
    vgg = rows["vgg16-k3-s0"]
    assert vgg["source"] == (f"benchmarks/gpu.py, {h100}; × 4 ÷ fused 1.60× (earlier groups of 4 and lone trials, "
                             f"{h100})"), vgg
    assert _hours(vgg) == round(_expected(4) * 6.58 * 4 / 1.6 / 3600, 1)
    # Without groups, a member's epoch is no trial's: the lone trial alone times resnet56.
    alone = _rows(_plan(tmp_path, "cifar100_3x3.yaml", db="wconv.db"))["resnet56-k3-s0"]
    assert alone["source"] == f"earlier trials (1, {h100})", alone
    assert alone["time"] == f"{alone['expected'] * 12 / 3600:.1f} h"


def test_submit_dry_run_budgets_groups_in_gpu_hours():
    from launch.budget import StoreTiming
    from launch.launcher import Task
    from launch.slurm import budget_lines
    from launch.spec import load_sweep

    sweep = load_sweep(ROOT / "sweeps" / "cifar100_3x3.yaml", ["models=[resnet56, vgg16]", "resources.group_size=4"])
    lines = budget_lines(sweep, [Task(sweep, c, 0, "/shared/runs") for c in sweep.cells()], StoreTiming())
    assert lines[0] == ("fused groups: up to 4 trials per group, 5 groups per cell (4+4+4+4+1), each on one trial's "
                        "resources for as long as its longest member")
    assert lines[1].startswith("budget per cell: 1000 group-epochs worst case, ")
    worst = 1000 * (10.54 * 4 / 1.18 + 6.58 * 4) / 3600
    assert lines[2].startswith(f"GPU-hours: {worst:.1f} worst case, "), lines[2]
    assert ("(seconds per group epoch from one trial's epoch × 4 ÷ a measured fused speedup, 4 × one trial's epoch "
            "(no fused timing); the last, smaller group counted as a full one)") in lines[2]
    assert "resnet56-k3-s0 35.7 s (benchmarks/gpu.py, NVIDIA H100 80GB HBM3; × 4 ÷ fused 1.18×" in lines[3]
    alone = budget_lines(sweep.model_copy(update={"resources": sweep.resources.model_copy(update={"group_size": 1})}),
                         [Task(sweep, c, 0, "/shared/runs") for c in sweep.cells()], StoreTiming())
    assert alone[0].startswith("budget per cell: 3400 epochs worst case") and "group" not in " ".join(alone)


def test_the_shipped_fused_speedups_are_the_benchmark_documentations_numbers():
    """Every fused speedup in launch/epoch_seconds.yaml is one docs/benchmarks.md reports as measured on that card."""
    import re

    from launch.budget import measured_table

    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    (entry,) = measured_table()
    documented = {int(k): float(x) for k, x in
                  re.findall(r"^\| \(c\) fused K = (\d+)[^|]*\|[^|]*\|[^|]*\|[^|]*\| ([\d.]+)× \|", docs, flags=re.M)}
    assert documented and entry["fused"] == {"resnet56": {3: documented}}


def test_with_learnable_alpha_the_baseline_is_budgeted_alone_as_it_trains():
    """The α = 1 baseline cannot share a learnable-α group (launch/search.py): 1 + 4+4+4+3 for 16 trials."""
    from launch.budget import cell_groups
    from launch.spec import load_sweep

    sweep = load_sweep(ROOT / "sweeps" / "smoke.yaml", ["search.num_samples=15", "resources.group_size=4",
                                                        "training.learnable_alpha=true", "scheduler.type=fifo"])
    groups = cell_groups(sweep)
    assert groups.sizes == (1, 4, 4, 4, 3) and groups.worst == 5 * 8 and groups.expected == 5 * 8

"""What SLURM costs a sweep, on the local test cluster (slurm/testcluster.sh, the bundled profile `local`).

1. The smoke sweep through `wconv submit` against `wconv run`: wall time ratio (target ≤ 1.15: SLURM adds
   queueing, not idle slots) and the time from submission to the first trial's first epoch.
2. Two workers on one cell against one (trials per hour; target ≥ 1.8× on 2 slots): each array task gets one
   CPU, so one worker has one slot and two workers have two.

Timed from outside, as a user would: `wconv` subprocesses, wall clocks, the store's timestamps. Needs root and
the test cluster's packages (`make test` installs them); brings the cluster up if it is down.

    python benchmarks/slurm.py                          # the smoke sweep as shipped: ~3 min on 2 free cores
    python benchmarks/slurm.py --epochs 40 --fifo       # longer trials, every one to its full budget: ~10 min

The smoke sweep's trials last ~5 s, against ~40 s of start-up per array task; ``--epochs`` lengthens every trial
(and ``--fifo`` runs each to the end, no ASHA and no patience, so that one and two workers do the same work) to see
what SLURM costs once trials last longer than the task's start-up, as they do in a real sweep.

The smoke sweep has 9 trials: on 2 slots one worker runs 5 of them, so two workers can be at most 9 ÷ 5 = 1.8×
one, exactly the target. ``--samples 15`` (16 trials, 8 per worker) lets the ratio reach 2×:

    python benchmarks/slurm.py --epochs 40 --fifo --samples 15   # ~10 min

Last, one trial of the same settings in a bare Python process (no SLURM, no Ray), alone and then two side by side,
each pinned to a core: what the machine itself allows two workers (the cores share caches and memory bandwidth).

Two workers on one cell run beside each other, one worker alone does not: the ratio mixes what sharing a cell costs
with what the machine loses when both cores compute. The control separates them: the same array shape, two tasks of
one slot, but on two cells (``seeds: [0, 1]``), one worker each, so nothing is shared. Two workers on one cell
against that control (per task) is what sharing a cell costs: 2× when it costs nothing.

    python benchmarks/slurm.py --epochs 40 --fifo --samples 15 --repeat 2   # ~25 min: the 3 runs, twice, interleaved

Trials per hour are counted three ways: from submission to the array's end; while trials run (the store's first
trial start to its last trial end); and once warm (per worker, from its first trial's end to its last's). A task's
start-up (its trial worker's Python start and imports, ~15 s on this machine) lands in its first trial, since the
store stamps a trial's start at its claim: the span while trials run still counts it once per task, which caps two
workers ÷ one below 2× on a short sweep however well they share; once warm leaves it out and measures the rate at
which a cell's workers run trials, which is what decides a sweep of hours. The start-up itself is the row submit →
first epoch.

    python benchmarks/slurm.py --epochs 40 --fifo --samples 31 --repeat 3   # ~55 min: 32 trials, 16 per worker
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WCONV = [sys.executable, "-m", "launch.cli"]


def _env() -> dict:
    facts = subprocess.run([str(ROOT / "slurm" / "testcluster.sh"), "env"], capture_output=True, text=True).stdout
    conf = next(line.split("=", 1)[1] for line in facts.splitlines() if line.startswith("export SLURM_CONF="))
    return dict(os.environ, SLURM_CONF=conf.strip("'\""), PYTHONPATH=str(ROOT))


def _first_epoch_at(db: str, sweep: str) -> float:
    from analysis.store import NoResults, Store

    while True:
        try:
            with Store(db, create=False) as store:
                trials = store.trials(sweep=sweep)
            if not trials.empty and (trials["epochs_run"].fillna(0) >= 1).any():
                return time.time()
        except NoResults:
            pass  # the first task has not written yet
        time.sleep(0.2)


def _wait_done(env: dict, job: str) -> None:
    while True:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "State", "-j", job], capture_output=True, text=True,
                             env=env).stdout.split()
        if out and all(s.split()[0] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for s in out):
            return
        time.sleep(0.5)


def _db(work: Path, sweep: str) -> str:
    return f"sqlite:///{work / (sweep + '.db')}"


def _trials(db: str, sweep: str):
    """The sweep's trials in the store, and those of them that finished: read once, for the measures below."""
    from analysis.store import TERMINAL, Store

    with Store(db, create=False) as store:
        trials = store.trials(sweep=sweep)
    return trials, trials[trials["status"].isin(TERMINAL)]


def trials_per_hour(trials, done) -> float:
    """Trials finished per hour while the workers ran: from the first trial's start to the last trial's end in the
    store. What a task does before its first claim (srun, Python, its Ray cluster) is left out; its trial worker's
    start-up is not, as it lands in the first trial (see ``warm_per_hour``)."""
    return len(done) * 3600 / (done["updated_at"].max() - trials["started_at"].min()).total_seconds()


BARE_TRIAL = """
import sys, tempfile, time, torch
from launch.cell import trial_config
from launch.spec import load_sweep
from wconv.train import run_trial
torch.set_num_threads(1)
sweep = load_sweep(sys.argv[1], sys.argv[2:])
for alpha in (0.9, 1.1):  # the first pays the imports (torchmetrics on the first evaluation), as a worker's first trial
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        run_trial(trial_config(sweep, sweep.cells()[0], (alpha,)), lambda metrics, directory: None, folder)
print(time.perf_counter() - start)
"""


def bare_trials(overrides: list[str], cores: list[int], env: dict) -> list[float]:
    """Seconds of one smoke trial (α = 1.1, after a first one) in a bare Python process per core, all at once, each
    pinned to its core as SLURM's task/affinity pins a task: what the machine allows two trials side by side, without
    SLURM or Ray."""
    procs = [subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c", BARE_TRIAL,
                               str(ROOT / "sweeps" / "smoke.yaml"), *overrides], stdout=subprocess.PIPE, text=True,
                              env=env) for core in cores]
    return [float(p.communicate()[0].split()[-1]) for p in procs]


def warm_per_hour(done) -> float:
    """Trials finished per hour by warm workers: per worker (the store's owner of each finished trial), the trials
    after its first ÷ the time from its first trial's end to its last's, summed over the workers. Each
    worker's first trial holds its task's start-up (the trial worker's Python start and imports, ~15 s here, paid
    once per task and reported as submit → first epoch), which the span "while trials run" still counts."""
    rate = 0.0
    for _, rows in done.groupby("owner"):
        ends = rows["updated_at"].sort_values()
        if len(ends) > 1:
            rate += (len(ends) - 1) * 3600 / (ends.iloc[-1] - ends.iloc[0]).total_seconds()
    return rate


def rates(trials, done) -> dict[str, tuple[float, float]]:
    """``trials_per_hour`` and ``warm_per_hour`` of each cell."""
    return {cell: (trials_per_hour(trials[trials["cell"] == cell], rows), warm_per_hour(rows))
            for cell, rows in done.groupby("cell")}


def workers(trials, done) -> list[str]:
    """Per worker (the store's owner of each finished trial): trials, when its first began and its last ended (seconds
    from the sweep's first trial start), and its trial time from claim to record — its first trial apart, since that
    one also holds the task's trial worker start-up (a Python start and the imports), paid once per task."""
    t0 = trials["started_at"].min()
    lines = []
    for owner, rows in done.groupby("owner"):
        rows = rows.sort_values("started_at")
        took = (rows["updated_at"] - rows["started_at"]).dt.total_seconds()
        rest = f", then {took.iloc[1:].mean():.2f} s per trial" if len(rows) > 1 else ""
        lines.append(f"{owner}: {len(rows)} trials, +{(rows['started_at'].min() - t0).total_seconds():.1f} s → "
                     f"+{(rows['updated_at'].max() - t0).total_seconds():.1f} s, {took.mean():.1f} s per trial; "
                     f"first trial {took.iloc[0]:.1f} s{rest}")
    return lines


def submit_and_wait(work: Path, sweep: str, env: dict, *sets: str) -> tuple[float, float]:
    """Wall seconds from `wconv submit` to the array's end, and to the first epoch of the first trial."""
    db = _db(work, sweep)
    start = time.time()
    done = subprocess.run([*WCONV, "submit", str(ROOT / "sweeps" / "smoke.yaml"), "--cluster",
                           "local", "--storage", db, "--runs-dir", str(work / "runs"),
                           "--set", f"name={sweep}", *sets], capture_output=True, text=True, env=env, cwd=work)
    if done.returncode:
        sys.exit(done.stderr)
    job = done.stdout.split("submitted array job ")[1].split(":")[0]
    first = _first_epoch_at(db, sweep)
    _wait_done(env, job)
    return time.time() - start, first - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, help="training.epochs of every trial (smoke.yaml: 8)")
    p.add_argument("--fifo", action="store_true", help="no early stopping: every trial runs all its epochs")
    p.add_argument("--samples", type=int, help="search.num_samples (smoke.yaml: 8, so 9 trials; an odd number "
                   "so that the trials split evenly over 2 workers)")
    p.add_argument("--repeat", type=int, default=1, help="run 1 worker, 2 workers and the two-cell control this "
                   "many times, interleaved, and print each ratio's median (the machine's speed drifts by ~10%% "
                   "from minute to minute)")
    args = p.parse_args()
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    subprocess.run([str(ROOT / "slurm" / "testcluster.sh"), "up"], check=True, capture_output=True)
    env = _env()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(prefix="wconv-bench-slurm-") as tmp:
        work = Path(tmp)
        one_slot = ["--set", "resources.cpus_per_trial=1"]
        if args.epochs:
            one_slot += ["--set", f"training.epochs={args.epochs}"]
        if args.samples:
            one_slot += ["--set", f"search.num_samples={args.samples}"]
        if args.fifo:
            one_slot += ["--set", "scheduler.type=fifo", "--set", "training.patience=null"]
        print(f"smoke sweep with {' '.join(one_slot[1::2])}")
        start = time.time()
        run = subprocess.run([*WCONV, "run", str(ROOT / "sweeps" / "smoke.yaml"), "--num-cpus", "1", "--storage",
                              _db(work, "local"), "--runs-dir", str(work / "runs-local"),
                              "--set", "name=bench-local", *one_slot], capture_output=True, text=True, env=env)
        local = time.time() - start
        if run.returncode:
            sys.exit(run.stderr)
        rounds, spans = [], []
        for r in range(args.repeat):
            one, two, cells = f"bench-one-{r}", f"bench-two-{r}", f"bench-cells-{r}"
            slurm, to_first = submit_and_wait(work, one, env, *one_slot)
            both, _ = submit_and_wait(work, two, env, "--set", "workers=2", *one_slot)
            submit_and_wait(work, cells, env, "--set", "seeds=[0, 1]", *one_slot)
            stores = {name: _trials(_db(work, name), name) for name in (one, two, cells)}
            control = rates(*stores[cells]).values()
            rounds.append(dict(slurm=slurm, to_first=to_first, both=both, one=trials_per_hour(*stores[one]),
                               two=trials_per_hour(*stores[two]), cell=statistics.mean(c[0] for c in control),
                               warm_one=warm_per_hour(stores[one][1]), warm_two=warm_per_hour(stores[two][1]),
                               warm_cell=statistics.mean(c[1] for c in control)))
            spans += [f"round {r + 1}:", *(line for store in stores.values() for line in workers(*store))]
        alone = bare_trials(one_slot[1::2], [0], env)[0]
        side_by_side = bare_trials(one_slot[1::2], [0, 1], env)

    def value(values: list[float], fmt: str) -> str:
        """The median of the rounds, then each round's value (``fmt`` may end in a unit: ".2f×")."""
        spec, unit = fmt.rstrip("×"), "×" if fmt.endswith("×") else ""
        text = format(statistics.median(values), spec) + unit
        return text + (" (" + ", ".join(format(v, spec) + unit for v in values) + ")" if len(values) > 1 else "")

    rows = [
        ("`wconv submit` (1 task, 1 slot) wall s, submit → array done", [x["slurm"] for x in rounds], ".1f", ""),
        ("submit ÷ run", [x["slurm"] / local for x in rounds], ".3f", "≤ 1.15"),
        ("submit → first trial's first epoch, s", [x["to_first"] for x in rounds], ".1f", ""),
        ("2 workers (2 tasks × 1 slot) wall s", [x["both"] for x in rounds], ".1f", ""),
        ("trials per hour, 2 workers ÷ 1, submit → array done", [x["slurm"] / x["both"] for x in rounds], ".2f×",
         "≥ 1.8×"),
        ("trials per hour while trials run: 1 worker", [x["one"] for x in rounds], ".0f", ""),
        ("trials per hour while trials run: 2 workers on one cell", [x["two"] for x in rounds], ".0f", ""),
        ("trials per hour while trials run: control, 2 cells × 1 worker side by side, per cell",
         [x["cell"] for x in rounds], ".0f", ""),
        ("trials per hour while trials run, 2 workers ÷ 1", [x["two"] / x["one"] for x in rounds], ".2f×", "≥ 1.8×"),
        ("2 workers on one cell ÷ control per cell (what sharing a cell costs; 2× when nothing)",
         [x["two"] / x["cell"] for x in rounds], ".2f×", ""),
        ("2 × control per cell ÷ 1 worker alone (what the machine takes when both slots compute)",
         [2 * x["cell"] / x["one"] for x in rounds], ".2f×", ""),
        ("trials per hour once warm (each worker's first trial, which holds its task's start-up, left out): 1 worker",
         [x["warm_one"] for x in rounds], ".0f", ""),
        ("trials per hour once warm: 2 workers on one cell", [x["warm_two"] for x in rounds], ".0f", ""),
        ("trials per hour once warm: control, per cell", [x["warm_cell"] for x in rounds], ".0f", ""),
        ("trials per hour once warm, 2 workers ÷ 1", [x["warm_two"] / x["warm_one"] for x in rounds], ".2f×",
         "≥ 1.8×"),
        ("once warm, 2 workers on one cell ÷ control per cell (2× when sharing costs nothing)",
         [x["warm_two"] / x["warm_cell"] for x in rounds], ".2f×", ""),
    ]
    print(f"\n| measure{' (median of the rounds; each round)' if args.repeat > 1 else ''} | value | target |")
    print("|---|--:|--:|")
    print(f"| `wconv run` (1 slot) wall s | {local:.1f} | |")
    for label, values, fmt, target in rows:
        print(f"| {label} | {value(values, fmt)} | {target} |")
    print(f"| bare trial (no SLURM, no Ray) alone, s; two side by side on 2 cores, s | {alone:.1f}; "
          f"{', '.join(f'{t:.1f}' for t in side_by_side)} | |")
    print(f"| the machine's ceiling for 2 workers ÷ 1: 2 × alone ÷ side by side | "
          f"{2 * alone / max(side_by_side):.2f}× | |")
    print("\nworkers (per round: 1 worker, then 2 workers on one cell, then the control's 2 cells):", *spans,
          sep="\n  ")


if __name__ == "__main__":
    main()

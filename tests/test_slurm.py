"""`wconv submit` against real SLURM daemons (slurm/testcluster.sh: slurmctld, slurmd, slurmdbd with MariaDB, fake
GPUs): arrays land in the store, workers share a cell, requeues and time limits lose nothing, cancel is reported."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from pg import postgres_server, postgres_url  # noqa: F401  (fixtures)
from slurm_cluster import slurm_cluster  # noqa: F401  (fixture)

from analysis.store import TERMINAL, Store

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test(request):
    """A failed test's jobs would hold the cluster's CPUs and starve the next tests: cancel what a test left."""
    def queued() -> set[str]:
        out = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True).stdout
        return set(out.split())

    if "slurm_cluster" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("slurm_cluster")  # up, and SLURM_CONF set, before the first look
    before = queued()
    yield
    left = queued() - before
    if left:
        subprocess.run(["scancel", *sorted(left)], capture_output=True)


def _sweep(tmp_path: Path, name: str, *, samples=3, epochs=2, steps=5, scheduler=None, storage=None,
           group_size=1) -> Path:
    spec = {
        "name": name, "task": "classification", "dataset": {"name": "digits"},
        "models": [{"name": "tiny_cnn", "options": {"width": 0.5}}], "kernels": {3: [[0.5, 1.5]]},
        "search": {"num_samples": samples, "metric": "val_accuracy"},
        "scheduler": scheduler or {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "training": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "hflip": False, "max_steps_per_epoch": steps},
        "resources": {"cpus_per_trial": 1, "group_size": group_size},
        "storage": storage or f"sqlite:///{tmp_path / 'wconv.db'}",
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _wconv(cluster, *args, cwd: Path, timeout=300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **cluster.env, **(env or {})})


def _submit(cluster, path: Path, tmp_path: Path, *extra: str, profile: Path | None = None, env=None) -> str:
    """``wconv submit``; ``env`` is also the tasks' (sbatch exports the submitting environment)."""
    done = _wconv(cluster, "submit", str(path), "--cluster", str(profile or cluster.profile), "--runs-dir",
                  str(tmp_path / "runs"), *extra, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "submitted array job" in done.stdout
    return done.stdout.split("submitted array job ")[1].split(":")[0]


def _sacct(cluster, job: str) -> dict[str, str]:
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", job], capture_output=True, text=True,
                         env=dict(os.environ, **cluster.env)).stdout
    return {line.split("|")[0]: line.split("|")[1].split()[0] for line in out.splitlines() if "|" in line}


def _wait(what, predicate, timeout=600, every=1.0, seen=None):
    """``predicate()``'s first truthy value; after ``timeout`` s, fails saying what was awaited and what ``seen()``
    shows (deadlines are generous: other test sessions may share the cluster's two CPUs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"waited {timeout:.0f} s for {what}" + (f"; saw: {seen()}" if seen else ""))


def _squeue(cluster, job: str) -> dict[str, str]:
    """squeue's state of each task of ``job`` (e.g. {'7_0': 'RUNNING', '7_1': 'SUSPENDED'})."""
    out = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i|%T"], capture_output=True, text=True,
                         env=dict(os.environ, **cluster.env)).stdout
    return dict(line.split("|", 1) for line in out.split() if "|" in line)


def _trials_seen(store: Store, sweep: str):
    def seen() -> str:
        trials = store.trials(sweep=sweep)
        return "no trials" if trials.empty else trials[["trial_id", "owner", "status", "epochs_run"]].to_string()

    return seen


def _scontrol(cluster, action: str, *args: str) -> None:
    done = subprocess.run(["scontrol", action, *args], capture_output=True, text=True, env=dict(os.environ, **cluster.env))
    assert done.returncode == 0, done.stderr


def _finished(cluster, job: str) -> bool:
    states = _sacct(cluster, job)
    return bool(states) and all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")
                                for s in states.values())


def _check_cell(store: Store, sweep: str, samples: int) -> None:
    trials = store.trials(sweep=sweep)
    assert len(trials) == samples + 1 and trials["trial_id"].is_unique, trials[["trial_id", "status"]].to_string()
    assert trials["status"].isin(TERMINAL).all(), trials[["trial_id", "status", "reason"]].to_string()
    assert trials["baseline"].astype(bool).sum() == 1
    assert len({tuple(a) for a in trials["alpha"]}) == samples + 1
    for _, row in trials.iterrows():
        epochs = store.epochs(sweep, row["trial_id"])
        assert list(epochs["epoch"]) == list(range(1, int(row["epochs_run"]) + 1)), row["trial_id"]


def _gated_profile(cluster, tmp_path: Path, gate: Path) -> Path:
    """The test cluster's profile, its tasks waiting (a ``setup`` line) until ``gate`` exists: the test opens it
    once every task runs, so that the workers start their trials together however the CPUs were shared."""
    profile = yaml.safe_load(Path(cluster.profile).read_text())
    profile["setup"] = [*profile.get("setup", []), f"while [ ! -e {gate} ]; do sleep 0.2; done"]
    path = tmp_path / "gated.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def test_two_workers_share_a_cell_and_a_cancelled_array_resumes_when_submitted_again(slurm_cluster, tmp_path):
    """The array is suspended, then cancelled, at a moment when each worker runs a trial of the shared cell: the
    test acts on what it sees in the store (and checks it again once the tasks are frozen), not on timing."""
    samples, epochs = 4, 30
    path = _sweep(tmp_path, "shared", samples=samples, epochs=epochs, steps=20, scheduler={"type": "fifo"})
    store = Store(f"sqlite:///{tmp_path / 'wconv.db'}")
    seen = _trials_seen(store, "shared")
    gate = tmp_path / "gate"
    profile = _gated_profile(slurm_cluster, tmp_path, gate)
    job = _submit(slurm_cluster, path, tmp_path, "--workers", "2", profile=profile)
    # one array job, one task per worker, both running before either starts its trials
    _wait("both array tasks running", lambda: _squeue(slurm_cluster, job) == {f"{job}_0": "RUNNING",
                                                                            f"{job}_1": "RUNNING"},
          seen=lambda: _squeue(slurm_cluster, job))
    gate.touch()

    def both_mid_trial() -> bool:
        """Each worker (lease owner) runs a trial that has an epoch recorded and many still to go."""
        trials = store.trials(sweep="shared")
        if trials.empty:
            return False
        running = trials[(trials["status"] == "running") & trials["epochs_run"].fillna(0).between(1, epochs - 5)]
        return running["owner"].nunique() == 2

    frozen = False
    deadline = time.monotonic() + 600
    while not frozen:
        _wait("a trial of each worker mid-way", lambda: both_mid_trial() or _finished(slurm_cluster, job), seen=seen,
              timeout=max(1.0, deadline - time.monotonic()), every=0.3)
        assert not _finished(slurm_cluster, job), f"the cell finished before both workers ran a trial: {seen()}"
        _scontrol(slurm_cluster, "suspend", job)  # frozen mid-trial, so that the cancel surely finds it running
        _wait("the suspended tasks", lambda: set(_squeue(slurm_cluster, job).values()) == {"SUSPENDED"},
              seen=lambda: _squeue(slurm_cluster, job), timeout=120, every=0.3)
        frozen = both_mid_trial()  # the store as the frozen tasks left it
        if not frozen:  # a trial ended between the look and the suspension: go on, look again
            _scontrol(slurm_cluster, "resume", job)
    cancel = _wconv(slurm_cluster, "cancel", "shared", "--storage", store.url, cwd=tmp_path)
    assert cancel.returncode == 0, cancel.stderr
    _wait("the cancelled tasks", lambda: _finished(slurm_cluster, job), timeout=300)
    status = _wconv(slurm_cluster, "status", "shared", "--storage", store.url, cwd=tmp_path)
    assert status.returncode == 0 and status.stdout.count("CANCELLED") == 2, status.stdout
    trials = store.trials(sweep="shared")
    assert "running" not in set(trials["status"])  # what ran is marked interrupted, for the next submission
    assert (trials["status"] == "interrupted").sum() >= 2, seen()

    again = _submit(slurm_cluster, path, tmp_path, "--workers", "2", profile=profile)
    _wait("the resubmitted array", lambda: _finished(slurm_cluster, again), seen=seen)
    assert set(_sacct(slurm_cluster, again).values()) == {"COMPLETED"}
    _check_cell(store, "shared", samples)
    status = _wconv(slurm_cluster, "status", "shared", "--storage", store.url, cwd=tmp_path)
    assert f"{samples + 1}/{samples + 1}" in status.stdout
    best = _wconv(slurm_cluster, "best", "--sweep", "shared", "--storage", store.url, cwd=tmp_path)
    assert best.returncode == 0 and "tiny_cnn" in best.stdout
    journal = tmp_path / "runs" / "shared" / "optuna.journal"  # Optuna's own API reads the shared study
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="shared/tiny_cnn-k3-s0", storage=storage)
    told = {t.user_attrs["trial_id"] for t in study.trials if not t.user_attrs.get("duplicate")
            and t.state != optuna.trial.TrialState.RUNNING}
    assert told >= set(store.trials(sweep="shared", status="completed")["trial_id"]) - {"tiny_cnn-k3-s0/alpha=1.0"}


def _one_minute_profile(cluster, tmp_path: Path) -> Path:
    """The test cluster's profile with a 1-minute time limit, submitted held (``sbatch --hold``). submitit keeps the
    limit it was given: with ``timeout_min`` < 10 it takes every USR2 for the time limit (its guaranteed wall time is
    min(0.8 T, T − 10 min)), and ``max_num_timeout`` allows the requeues."""
    profile = yaml.safe_load(Path(cluster.profile).read_text())
    profile.update(timeout_min=1, signal_delay_s=20, max_num_timeout=8, sbatch={**profile.get("sbatch", {}), "hold": True})
    path = tmp_path / "one_minute.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def _restarts(cluster, job: str) -> list[str]:
    """Each run of ``job`` as sacct recorded it (``-D``: the runs a requeue ended too)."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-o", "JobID,State", "-j", job], capture_output=True,
                         text=True, env=dict(os.environ, **cluster.env)).stdout
    return [line.split("|")[1].split()[0] for line in out.splitlines() if "|" in line]


def _epochs_recorded(store: Store, sweep: str) -> int:
    trials = store.trials(sweep=sweep)
    return 0 if trials.empty else sum(len(store.epochs(sweep, t)) for t in trials["trial_id"])


def test_a_task_at_its_time_limit_then_killed_outright_resumes_its_group_each_time_with_nothing_lost(slurm_cluster,
                                                                                                    tmp_path):
    """The task's own time limit (USR2 → submitit calls ``CellJob.checkpoint`` → requeue), then ``scontrol
    requeue`` (SIGTERM, SIGKILL: no checkpoint): the same array task comes back each time, continues its unfinished
    fused group (both trials of the cell, ``group_size: 2``) from its last epoch's ``group.pt`` and finishes the cell
    with nothing lost or run twice (no epoch the store had is trained, hence recorded, again). A lone trial resumes
    from its ``trial.pt`` the same way after a kill (tests/test_resume.py) and after a requeue of its own
    (``test_a_task_whose_store_stays_away_past_the_retry_time_requeues_itself_and_resumes``).

    USR2 is sent by the test, to the job's steps as SLURM sends it ``signal_delay_s`` before the limit, once the
    task runs its first trial: SLURM itself sends it at its next time-limit check (every 30 s) after the limit comes
    within reach, and the limit is in whole minutes, so no workload brackets it on every machine; sent 10 s into a
    run, it killed a task still importing (before submitit's handler was set) on a busy machine. That SLURM sends it
    at the limit and submitit requeues on it is tests/test_slurm_cluster.py's (a job that only sleeps). The job is
    submitted held and its limit raised before it starts, so that SLURM's own USR2 cannot come first."""
    samples, group_size = 1, 2
    # One group of both trials, 40 full epochs (digits has ~45 batches of 32 per epoch): ~50 s of training on one
    # CPU; the signal comes after the first epoch, the requeue after an epoch of the second run.
    path = _sweep(tmp_path, "limit", samples=samples, epochs=40, steps=45, scheduler={"type": "fifo"},
                  group_size=group_size)
    store = Store(f"sqlite:///{tmp_path / 'wconv.db'}")
    seen = _trials_seen(store, "limit")
    job = _submit(slurm_cluster, path, tmp_path, profile=_one_minute_profile(slurm_cluster, tmp_path))
    _scontrol(slurm_cluster, "update", f"JobId={job}", "TimeLimit=15")  # held: it has not started
    _scontrol(slurm_cluster, "release", job)

    def logs() -> str:
        return "".join(p.read_text(errors="replace") for p in (tmp_path / "runs" / "limit" / "slurm").rglob("*_log.*"))

    _wait("the task's first epoch", lambda: _epochs_recorded(store, "limit") > 0 or _finished(slurm_cluster, job),
          seen=lambda: f"{_sacct(slurm_cluster, job)} {seen()}", every=0.5)
    assert not _finished(slurm_cluster, job), f"the job ended before its first epoch: {logs()[-3000:]}"
    signal = subprocess.run(["scancel", "--signal=USR2", job], capture_output=True, text=True,
                            env=dict(os.environ, **slurm_cluster.env))
    assert signal.returncode == 0, signal.stderr
    _wait("the checkpoint on USR2", lambda: "Calling checkpoint method" in logs(), every=0.5, timeout=300,
          seen=lambda: logs()[-3000:])
    assert "this job is timed-out" in logs()  # submitit saw USR2 as the time limit, not a preemption
    _wait("the requeued run", lambda: len(_restarts(slurm_cluster, job)) >= 2
          and set(_sacct(slurm_cluster, job).values()) == {"RUNNING"}, every=0.5,
          seen=lambda: _restarts(slurm_cluster, job))
    recorded = _epochs_recorded(store, "limit")
    _wait("an epoch of the second run", lambda: _epochs_recorded(store, "limit") > recorded, every=0.3, seen=seen)
    before = store.trials(sweep="limit")
    kept = store.epochs("limit")
    _scontrol(slurm_cluster, "requeue", job)
    _wait("the job to end", lambda: _finished(slurm_cluster, job), timeout=600, every=2, seen=seen)
    assert set(_sacct(slurm_cluster, job).values()) == {"COMPLETED"}
    assert len(_restarts(slurm_cluster, job)) >= 3  # the time limit, the requeue, the run that finished
    _check_cell(store, "limit", samples)
    after = store.trials(sweep="limit").set_index("trial_id")
    for _, row in before[before["status"].isin(TERMINAL)].iterrows():
        assert after.loc[row["trial_id"], "metrics"] == row["metrics"]
    epochs = store.epochs("limit").set_index(["trial_id", "epoch"])["metrics"]
    assert all(epochs[(e["trial_id"], e["epoch"])] == e["metrics"] for e in kept.to_dict("records"))
    # One group of both trials, the baseline its member 0.
    assert after["group_id"].nunique() == 1 and after["group_id"].notna().all()
    assert sorted(after["member"]) == [0, 1] and after.loc[after["baseline"].astype(bool), "member"].item() == 0


def test_at_its_time_limit_a_task_asks_submitit_to_requeue_the_same_task():
    """What USR2 before the time limit does to a wconv task (submitit's checkpoint-and-requeue itself runs against
    the real daemons in tests/test_slurm_cluster.py; the task then resumes as after any requeue, above)."""
    import pickle

    from launch.launcher import Task
    from launch.slurm import CellJob
    from launch.spec import load_sweep

    sweep = load_sweep(ROOT / "sweeps" / "smoke.yaml")
    job = CellJob(Task(sweep, sweep.cells()[0], 0, "/shared/runs"))
    again = job.checkpoint()
    assert again.function is job and again.args == () and again.kwargs == {}
    assert pickle.loads(pickle.dumps(again.function)).task == job.task  # what the requeued task unpickles


def test_dry_run_for_leonardo_prints_the_script_the_map_and_the_budget_and_writes_nothing(tmp_path):
    before = set(tmp_path.iterdir())
    done = subprocess.run([sys.executable, "-m", "launch.cli", "submit", str(ROOT / "sweeps" / "cifar100_3x3.yaml"),
                           "--cluster", "leonardo", "--account", "IscrC_TEST", "--dry-run",
                           "--storage", f"sqlite:///{tmp_path / 'nowhere.db'}", "--runs-dir", str(tmp_path / "runs")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), PATH="/usr/bin:/bin"))
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for line in ("#SBATCH --partition=boost_usr_prod", "#SBATCH --account=IscrC_TEST", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=32", "#SBATCH --array=0-4", "#SBATCH --requeue", "#SBATCH --signal=USR2@120"):
        assert line in out, line
    assert "resnet56-k3-s0 (worker 1 of 1)" in out and "GPU-hours:" in out
    assert "nothing submitted" in out
    assert set(tmp_path.iterdir()) == before


def test_a_task_whose_store_stays_away_past_the_retry_time_requeues_itself_and_resumes(slurm_cluster, postgres_server,
                                                                                      postgres_url, tmp_path):
    """The PostgreSQL store stops for longer than ``WCONV_STORE_RETRY_S`` while the task's first trial is held
    mid-way (a gate before its second epoch, ``tests/gates``): the task says so in its log, requeues itself
    (``launch.slurm.requeue_self``) and, started again by SLURM, waits for the store, which is back by then, and
    finishes the cell with nothing lost or run twice. A fresh task process counts the store as reached (the submit
    reached it), so a store still down when it starts is waited for, not refused as a wrong URL."""
    samples = 1
    path = _sweep(tmp_path, "outage", samples=samples, epochs=3, steps=5, scheduler={"type": "fifo"},
                  storage=postgres_url)
    gate = tmp_path / "gate"
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "gates"), str(ROOT)]),
           "WCONV_TEST_EPOCH_GATE": str(gate), "WCONV_STORE_RETRY_S": "3", "WCONV_LEASE_TIMEOUT_S": "8"}
    store = Store(postgres_url)
    seen = _trials_seen(store, "outage")
    job = _submit(slurm_cluster, path, tmp_path, env=env)

    def logs() -> str:
        return "".join(p.read_text(errors="replace") for p in (tmp_path / "runs" / "outage" / "slurm").rglob("*_log.*"))

    def held() -> bool:
        trials = store.trials(sweep="outage")
        return _finished(slurm_cluster, job) or (not trials.empty and (trials["epochs_run"].fillna(0) >= 1).any())

    _wait("a trial held at the gate after its first epoch", held, seen=seen, every=0.5)
    assert not _finished(slurm_cluster, job), logs()[-3000:]
    postgres_server.pause()
    try:
        _wait("the task to requeue itself", lambda: "requeued array task" in logs() or _finished(slurm_cluster, job),
              timeout=300, every=0.3, seen=lambda: logs()[-3000:])
    finally:
        postgres_server.resume()
    assert "waiting for results store" in logs() and "unreachable for" in logs(), logs()[-3000:]
    gate.touch()
    _wait("the job to end", lambda: _finished(slurm_cluster, job), timeout=600, every=2, seen=seen)
    assert set(_sacct(slurm_cluster, job).values()) == {"COMPLETED"}, logs()[-3000:]
    assert len(_restarts(slurm_cluster, job)) >= 2  # the run the outage ended, and the one that finished
    _check_cell(store, "outage", samples)

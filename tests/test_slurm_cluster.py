"""The test cluster of ``slurm/testcluster.sh`` does, with real daemons, what wconv relies on in a real
cluster: GPUs as GRES in CUDA_VISIBLE_DEVICES, accounting that reports how jobs ended, requeue, and submitit
(results, and the time-limit checkpoint-and-requeue of ``Checkpointable``) driven by the bundled profile ``launch/profiles/local.yaml``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
from slurm_cluster import slurm_cluster  # noqa: F401 (fixture)

from launch.profile import load_profile

pytestmark = pytest.mark.integration

# Jobs unpickle what this module defines without importing it (tests/ is not on their path).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def _run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout.strip()


def _sbatch(cluster, *options: str, script: str) -> str:
    """Submit ``script`` to the cluster's partition and account; returns the job id."""
    done = subprocess.run(["sbatch", "--parsable", "-p", cluster.partition, "-A", cluster.account, "-o", "/dev/null",
                           *options], input=script, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def _accounted(job: str) -> dict[str, str]:
    """sacct's state of each job (array task) of ``job``, e.g. {'5_0': 'COMPLETED', '5_1': 'CANCELLED by 0'}."""
    lines = _run("sacct", "-n", "-P", "-X", "-j", job, "-o", "JobID,State,ExitCode").splitlines()
    return {jid: f"{state} {code}" for jid, state, code in (line.split("|") for line in lines)}


def _poll(what: str, probe, seconds: float = 60):
    """``probe()``'s first truthy value; fails the test (saying what was awaited) after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"waited {seconds:.0f} s for {what}")


def _ended(job: str, count: int = 1):
    def probe():
        states = _accounted(job)
        return states if len(states) == count and all(s.startswith(TERMINAL) for s in states.values()) else None

    return _poll(f"job {job} to end in sacct", probe)


def test_array_tasks_get_their_gres_gpus_in_cuda_visible_devices(slurm_cluster, tmp_path):
    script = f'#!/bin/bash\necho "$CUDA_VISIBLE_DEVICES" > {tmp_path}/task_$SLURM_ARRAY_TASK_ID\n'
    job = _sbatch(slurm_cluster, "--array=0-1", "--gres=gpu:2", script=script)
    states = _ended(job, count=2)
    assert sorted(states) == [f"{job}_0", f"{job}_1"]
    assert all(s == "COMPLETED 0:0" for s in states.values()), states
    for task in (0, 1):
        gpus = (tmp_path / f"task_{task}").read_text().strip().split(",")
        assert len(set(gpus)) == 2 and set(gpus) <= {str(i) for i in range(slurm_cluster.gpus)}, gpus


def test_accounting_reports_completed_failed_and_cancelled_jobs(slurm_cluster):
    ok = _sbatch(slurm_cluster, script="#!/bin/bash\ntrue\n")
    bad = _sbatch(slurm_cluster, script="#!/bin/bash\nexit 3\n")
    long = _sbatch(slurm_cluster, script="#!/bin/bash\nsleep 300\n")
    _poll(f"job {long} to run", lambda: _accounted(long).get(long, "").startswith("RUNNING"))
    _run("scancel", long)
    assert _ended(ok)[ok] == "COMPLETED 0:0"
    assert _ended(bad)[bad] == "FAILED 3:0"
    assert _ended(long)[long].startswith("CANCELLED")


def test_scontrol_requeue_restarts_a_running_job(slurm_cluster, tmp_path):
    starts = tmp_path / "starts"
    script = f"#!/bin/bash\necho ${{SLURM_RESTART_COUNT:-0}} >> {starts}\nsleep 300\n"
    job = _sbatch(slurm_cluster, "--requeue", script=script)
    try:
        _poll("the first start", lambda: starts.exists() and starts.read_text().split() == ["0"])
        _run("scontrol", "requeue", job)
        _poll("the restart after requeue", lambda: starts.read_text().split() == ["0", "1"])
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=60)


def test_debug_qos_refuses_what_the_local_profile_refuses(slurm_cluster):
    limit = load_profile(slurm_cluster.profile).qos_max_timeout_min[slurm_cluster.debug_qos]
    over = subprocess.run(["sbatch", "-p", slurm_cluster.partition, "-A", slurm_cluster.account, "--qos",
                           slurm_cluster.debug_qos, "--time", str(limit + 1), "-o", "/dev/null", "--wrap", "true"],
                          capture_output=True, text=True, timeout=60)
    assert over.returncode != 0 and "QOSMaxWallDurationPerJobLimit" in over.stderr, over.stderr
    at_limit = _sbatch(slurm_cluster, "--qos", slurm_cluster.debug_qos, "--time", str(limit), script="#!/bin/bash\n")
    assert _ended(at_limit)[at_limit] == "COMPLETED 0:0"


def test_a_job_without_a_known_account_is_refused(slurm_cluster):
    done = subprocess.run(["sbatch", "-p", slurm_cluster.partition, "-A", "no_such_account", "-o", "/dev/null",
                           "--wrap", "true"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Invalid account" in done.stderr, done.stderr


def _allocation() -> dict[str, str]:
    return {name: os.environ.get(name, "") for name in ("CUDA_VISIBLE_DEVICES", "SLURM_CPUS_PER_TASK",
                                                        "SLURM_JOB_PARTITION", "RAY_USAGE_STATS_ENABLED")}


def test_submitit_job_from_the_local_profile_returns_its_result(slurm_cluster, tmp_path):
    profile = load_profile(slurm_cluster.profile)
    job = profile.executor(tmp_path / "%j").submit(_allocation)
    seen = job.result()
    assert len(set(seen["CUDA_VISIBLE_DEVICES"].split(","))) == profile.gpus_per_node
    assert seen["SLURM_CPUS_PER_TASK"] == str(profile.cpus_per_node)
    assert seen["SLURM_JOB_PARTITION"] == profile.partition
    assert seen["RAY_USAGE_STATS_ENABLED"] == profile.env["RAY_USAGE_STATS_ENABLED"]
    assert _ended(job.job_id)[job.job_id] == "COMPLETED 0:0"


class _OutlivesItsTimeLimit(submitit.helpers.Checkpointable):
    """Records each start; the first run sleeps past the time limit, so only a checkpoint-and-requeue on
    SLURM's USR2 lets it finish (``Checkpointable.checkpoint`` resubmits the same call)."""

    def __call__(self, starts: Path) -> list[str]:
        with starts.open("a") as f:
            f.write(os.environ.get("SLURM_RESTART_COUNT", "0") + "\n")
        if len(starts.read_text().split()) == 1:
            time.sleep(600)
        return starts.read_text().split()


@pytest.fixture(scope="module", autouse=True)
def time_limited_job(slurm_cluster, tmp_path_factory):
    """Submitted before this module's other tests, awaited by the last one: SLURM signals a job at its next
    time-limit check (every 30 s) and holds a requeued job ~11 s, and the other tests run meanwhile."""
    # timeout_min < 10: submitit takes every USR2 for a time-out (its guaranteed time is min(0.8 T, T - 10 min)),
    # so max_num_timeout must allow the one requeue.
    profile = load_profile(slurm_cluster.profile, ["timeout_min=1", "signal_delay_s=50", "max_num_timeout=1"])
    folder = tmp_path_factory.mktemp("time_limited")
    return profile.executor(folder / "%j").submit(_OutlivesItsTimeLimit(), folder / "starts")


def test_time_limit_checkpoints_and_requeues_a_checkpointable_job(time_limited_job):
    assert time_limited_job.result() == ["0", "1"]
    assert _ended(time_limited_job.job_id)[time_limited_job.job_id] == "COMPLETED 0:0"

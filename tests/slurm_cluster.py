"""The single-node SLURM cluster of ``slurm/testcluster.sh`` for tests: up once per test session, down after it.

Import the fixture into a test module (``from slurm_cluster import slurm_cluster``). Test sessions may overlap
(two terminals, CI retries): each registers its pid under the cluster's folder, and the last one to finish
stops the daemons, only if a test session started them; a cluster brought up by hand stays up. The fixture
fails (it does not skip) when the cluster cannot start: ``make test`` installs the packages it needs.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "slurm" / "testcluster.sh"
PROFILE = REPO / "launch" / "profiles" / "local.yaml"


@dataclass(frozen=True)
class SlurmCluster:
    """What tests need to know about the running cluster (the script's own facts, see ``testcluster.sh env``)."""

    conf: Path
    dir: Path
    cluster: str
    partition: str
    account: str
    debug_qos: str
    node: str
    gpus: int
    cpus: int
    profile: Path
    """``launch/profiles/local.yaml`` (`--cluster local`): the cluster profile of this cluster."""

    @property
    def env(self) -> dict[str, str]:
        """Variables a subprocess needs to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}


def _script(command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), command], capture_output=True, text=True, timeout=180)


def _facts() -> dict[str, str]:
    done = _script("env")
    facts = {}
    for line in done.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        facts[name] = shlex.split(value)[0] if value else ""
    return facts


@contextmanager
def _sessions(folder: Path):
    """The set of live test sessions using the cluster, under an exclusive lock."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".sessions.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sessions = folder / "sessions"
        sessions.mkdir(exist_ok=True)
        for entry in sessions.iterdir():  # sessions that died without tearing down
            if not Path(f"/proc/{entry.name}").exists():
                entry.unlink(missing_ok=True)
        yield sessions


def _fail(what: str, done: subprocess.CompletedProcess) -> None:
    output = (done.stderr or done.stdout).strip().splitlines()[-3:]
    pytest.fail(f"{what}: {' | '.join(output)}", pytrace=False)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node SLURM (4 fake GPUs, accounting) for the whole session; ``SLURM_CONF`` points at it."""
    facts = _facts()
    folder = Path(facts["WCONV_SLURM_DIR"])
    marker = folder / "started-by-tests"
    with _sessions(folder) as sessions:
        if _script("status").returncode != 0:
            if os.geteuid() != 0:
                pytest.fail(f"the test SLURM cluster is down and starting it needs root: run `sudo {SCRIPT} up`",
                            pytrace=False)
            done = _script("up")
            if done.returncode != 0:
                _fail("slurm/testcluster.sh up failed", done)
            marker.touch()
        (sessions / str(os.getpid())).touch()
    cpus = subprocess.run(["sinfo", "-h", "-N", "-n", facts["WCONV_SLURM_NODE"], "-o", "%c"], capture_output=True,
                          text=True, env={**os.environ, "SLURM_CONF": facts["SLURM_CONF"]}, timeout=30)
    cluster = SlurmCluster(
        conf=Path(facts["SLURM_CONF"]), dir=folder, cluster=facts["WCONV_SLURM_CLUSTER"],
        partition=facts["WCONV_SLURM_PARTITION"], account=facts["WCONV_SLURM_ACCOUNT"],
        debug_qos=facts["WCONV_SLURM_DEBUG_QOS"], node=facts["WCONV_SLURM_NODE"], gpus=int(facts["WCONV_SLURM_GPUS"]),
        cpus=int(cpus.stdout.split()[0]), profile=PROFILE,
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster.conf))
        try:
            yield cluster
        finally:
            with _sessions(folder) as sessions:
                (sessions / str(os.getpid())).unlink(missing_ok=True)
                if not any(sessions.iterdir()) and marker.exists():
                    done = _script("down")
                    marker.unlink(missing_ok=True)
                    if done.returncode != 0:
                        _fail("slurm/testcluster.sh down failed", done)

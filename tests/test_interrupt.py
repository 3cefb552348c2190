"""Ctrl-C of a real `wconv run` (SIGINT to its process group, as a terminal sends it) on a real Ray local cluster
and SQLite store: exit 130 with one line, no Ray restore hint, nothing left running, nothing lost on the next run;
and the private Ray cluster's `wr-*` temp folder is gone when a run ends, however it ends."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from analysis.store import TERMINAL, Store
from launch.lease import leases

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
INTERRUPTED = "interrupted; run the same command again to resume"


@pytest.fixture
def temp_root():
    """A short, private TMPDIR for the runs: Ray's temp folders (``wr-*``) land in it, and nothing else's do
    (the machine's /tmp is shared with other test sessions). Short: Ray's socket paths must stay ≤ 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="wt", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _sweep(tmp_path: Path) -> Path:
    # FIFO and 6 epochs: the test interrupts at the first epoch, 5 epochs before any trial can finish.
    spec = {
        "name": "ctrlc", "task": "classification", "dataset": {"name": "digits"},
        "models": [{"name": "tiny_cnn", "options": {"width": 0.5}}], "kernels": {3: [[0.5, 1.5]]},
        "search": {"num_samples": 3, "metric": "val_accuracy", "seed": 0}, "scheduler": {"type": "fifo"},
        "training": {"epochs": 6, "batch_size": 32, "lr": 0.05, "hflip": False, "max_steps_per_epoch": 12},
        "seeds": [0], "resources": {"cpus_per_trial": 1}, "storage": f"sqlite:///{tmp_path / 'wconv.db'}",
    }
    path = tmp_path / "ctrlc.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _env(temp_root: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(temp_root))


def _terminal_sigint() -> None:
    """SIGINT as a terminal's foreground job has it. A suite started in the background by a shell without job control
    (`make test &`, some CI runners) inherits SIGINT ignored, and so would every run it starts: Python then installs
    no KeyboardInterrupt, and a Ctrl-C is rightly ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(path: Path, tmp_path: Path, temp_root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launch.cli", "run", str(path), "--runs-dir", str(tmp_path / "runs"),
                             "--num-cpus", "2"], cwd=tmp_path, env=_env(temp_root), start_new_session=True,
                            preexec_fn=_terminal_sigint, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ray_folders(temp_root: Path) -> list[str]:
    return sorted(p.name for p in temp_root.glob("wr-*"))


def _processes_of(temp_root: Path, deadline_s: float = 60) -> list[str]:
    """Processes still running with ``temp_root`` as their TMPDIR (Ray's services and its workers, which rename
    themselves ``ray::…``), after waiting up to ``deadline_s`` for them to end."""
    deadline = time.time() + deadline_s
    while True:
        left = []
        for p in psutil.process_iter(["pid", "name"]):
            try:
                if p.environ().get("TMPDIR") == str(temp_root) and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{p.pid} {p.info['name']}")
            except psutil.Error:
                continue
        if not left or time.time() > deadline:
            return left
        time.sleep(0.5)


def _epochs(store: Store) -> dict[tuple[str, int], dict]:
    trials = store.trials(sweep="ctrlc")
    rows = {}
    for trial_id in ([] if trials.empty else trials["trial_id"]):
        for _, row in store.epochs("ctrlc", trial_id).iterrows():
            rows[(trial_id, int(row["epoch"]))] = row["metrics"]
    return rows


def test_ctrl_c_exits_130_in_one_line_and_the_next_run_resumes_with_nothing_lost(tmp_path, temp_root):
    path = _sweep(tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'wconv.db'}")
    assert _ray_folders(temp_root) == []
    proc = _start(path, tmp_path, temp_root)
    deadline, seen_folders = time.time() + 400, []
    while time.time() < deadline and proc.poll() is None:
        seen_folders = seen_folders or _ray_folders(temp_root)
        trials = store.trials(sweep="ctrlc")
        if not trials.empty and (trials["epochs_run"].fillna(0) >= 1).any():
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"the run ended before its first epoch was recorded: {proc.communicate()}"
    assert time.time() < deadline, "no epoch recorded within 400 s"
    trials = store.trials(sweep="ctrlc")
    assert not trials["status"].isin(TERMINAL).any(), trials[["trial_id", "status", "epochs_run"]].to_string()
    assert seen_folders == [f"wr-{proc.pid}"]  # the run's Ray folder, while it runs
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground process group
    out, err = proc.communicate(timeout=300)

    assert proc.returncode == 130, (out[-3000:], err[-3000:])
    assert err.splitlines() == [INTERRUPTED], err[-3000:]
    assert "Tuner.restore" not in out + err and "another runner" not in out, out[-3000:]
    assert _ray_folders(temp_root) == [], "the interrupted run left its Ray temp folder"
    assert _processes_of(temp_root) == [], "Ray processes outlived the interrupted run"
    assert leases(store, sweep="ctrlc").empty, "the interrupted run kept its lease"
    before = _epochs(store)
    assert before, "no epoch recorded before the interrupt"

    again = _start(path, tmp_path, temp_root)
    out, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-3000:]
    assert "resuming: 0 finished earlier" in out and "trials 4/4 done" in out, out[-3000:]
    trials = store.trials(sweep="ctrlc")
    assert len(trials) == 4 and trials["status"].isin(TERMINAL).all(), trials[["trial_id", "status"]].to_string()
    assert trials["baseline"].astype(bool).sum() == 1 and trials["trial_id"].is_unique
    after = _epochs(store)
    for _, row in trials.iterrows():  # every epoch of every trial recorded once, from 1 on
        assert sorted(e for t, e in after if t == row["trial_id"]) == list(range(1, int(row["epochs_run"]) + 1))
    assert {key: after[key] for key in before} == before  # the epochs before the interrupt, wall times included
    assert _ray_folders(temp_root) == [], "a finished run left its Ray temp folder"
    assert _processes_of(temp_root) == []


@pytest.mark.parametrize("ending", ["error", "exit"])
def test_a_process_that_started_ray_removes_its_temp_folder_however_it_ends(tmp_path, temp_root, ending):
    """What a SLURM array task does (start_ray, then run_task) when it fails or exits without a local run's end."""
    script = ("from launch.runner import start_ray\n"
              "import os, sys\n"
              "start_ray(1)\n"
              "assert os.path.isdir(os.path.join(os.environ['TMPDIR'], f'wr-{os.getpid()}'))\n"
              + ("raise RuntimeError('a failure after Ray started')\n" if ending == "error" else "sys.exit(0)\n"))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(temp_root), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == (1 if ending == "error" else 0), done.stderr[-3000:]
    assert ("a failure after Ray started" in done.stderr) == (ending == "error")
    assert _ray_folders(temp_root) == []
    assert _processes_of(temp_root) == []

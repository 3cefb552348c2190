"""`wconv plan` ends its explanation in a whole sentence, and any `wconv` command whose reader goes away (`| head`)
stops quietly instead of printing a BrokenPipeError traceback."""

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
    assert last.startswith("rough time comes from earlier trials of the same model in the results database")
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

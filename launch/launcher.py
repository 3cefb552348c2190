"""The launcher interface that local runs and SLURM share (submitit's ``Executor`` is the model).

A sweep becomes ``Task``s — one per (cell, worker) — each a picklable unit of work that runs from its
arguments alone (``launch.runner.run_task``). A launcher ``submit``s tasks and returns handles; ``status`` and
``cancel`` work on those handles. Everything before the last step (validation, ``prepare_sweep``,
the task plan) is the same for every launcher.

A runs folder usually sits on a filesystem that others can reach (a cluster's project space), and it holds
pickles (a task's arguments, Ray Tune's state) and checkpoints: whoever can replace one runs code as the user
who loads it. So everything a launcher writes there is created under ``owner_only()``: folders 0700, files 0600.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, Sequence

from launch.spec import Cell, Sweep


OWNER_ONLY_UMASK = 0o077


@contextlib.contextmanager
def owner_only():
    """Inside, files and folders this process (and every process it starts) creates are its owner's alone:
    the umask gains ``OWNER_ONLY_UMASK`` (a stricter one stays), and is given back afterwards."""
    before = os.umask(OWNER_ONLY_UMASK)
    os.umask(before | OWNER_ONLY_UMASK)
    try:
        yield
    finally:
        os.umask(before)


class ResourceError(Exception):
    """The sweep asks for more CPUs or GPUs per trial than where it would run has."""


class SubmitError(Exception):
    """A submission (or a question about one) that cannot go ahead; one line naming the thing and what to do."""


@dataclass(frozen=True)
class Task:
    """One worker of one cell."""

    sweep: Sweep
    cell: Cell
    worker: int
    runs_dir: str
    plan: Optional[tuple] = None
    """A confirmation's fixed trials (see ``launch/confirm.py``); None: the cell's search."""

    @property
    def name(self) -> str:
        return f"{self.cell.id}#{self.worker}"


def plan_tasks(sweep: Sweep, runs_dir: Path | str, workers: Optional[int] = None) -> list[Task]:
    """Every cell × worker of ``sweep``, cell-major (the array task order of a SLURM submission)."""
    n = workers or sweep.workers
    return [Task(sweep, cell, w, str(runs_dir)) for cell in sweep.cells() for w in range(n)]


class Handle(Protocol):
    """A submitted task: its job id and task, and its state as the launcher last saw it."""

    job_id: str
    task: Task

    def state(self) -> str: ...


class Launcher(Protocol):
    def submit(self, sweep: Sweep, tasks: Sequence[Task]) -> list[Handle]: ...

    def status(self, handles: Sequence[Handle]) -> list[str]: ...

    def cancel(self, handles: Sequence[Handle]) -> None: ...

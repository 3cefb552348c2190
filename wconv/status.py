"""The words a trial's record is written in: its status and the stage of the sweep it belongs to.

They are the values of the results store's ``trials.status`` and ``trials.stage`` columns and of a trial's
reports, so a ``StrEnum`` member *is* its word (``TrialStatus.COMPLETED == "completed"``): the database
holds the same strings it always has. Defined here, in ``wconv/``, because the trainable reports them and
``wconv`` imports neither ``launch`` nor ``analysis``; those import them from here.
"""

from enum import StrEnum


class TrialStatus(StrEnum):
    RUNNING = "running"
    INTERRUPTED = "interrupted"  # its runner was cancelled; the next runner continues it
    COMPLETED = "completed"  # the full budget, or early stopping
    STOPPED = "stopped"  # the scheduler (ASHA) ended it
    FAILED = "failed"


COMPLETED, STOPPED, FAILED = TrialStatus.COMPLETED, TrialStatus.STOPPED, TrialStatus.FAILED
"""How a trial ends, by name, as the trainable reports it (``wconv/train.py``). A member of a fused group is
stopped by its caller (a scheduler); a single trial stopped by a scheduler is ended from outside and never reports
it."""

TERMINAL = (TrialStatus.COMPLETED, TrialStatus.STOPPED, TrialStatus.FAILED)
"""The statuses a trial ends in; a trial in one is never run again unless reopened."""


class Stage(StrEnum):
    SEARCH = "search"  # the cell's α search
    CONFIRM = "confirm"  # the confirmation runs of the chosen α

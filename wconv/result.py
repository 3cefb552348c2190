"""What a trial reports, defined once, and the bookkeeping that decides it, shared by a lone trial
(``wconv.train.run_trial``) and each member of a fused group (``wconv.fused.run_group``).

The result protocol: ``EpochReport`` after every epoch, ``FinalReport`` at the end, and the key constants;
launchers, stores and reports read it by these names (``wconv.train`` re-exports them). ``Progress`` is where
a trial stands between epochs (best epoch, early stopping, history): its ``outcome`` says when the trial ends
and why, its ``finish`` writes the final report. It is checkpointed as a plain dict (``vars``) inside
``trial.pt`` (``wconv.checkpoint.TrialCheckpoint``), so its fields are part of the checkpoint format.
"""

from __future__ import annotations

import copy
import math
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, NotRequired, Optional, TypedDict

import torch

from wconv.status import COMPLETED, FAILED, STOPPED, TrialStatus  # how a trial ends: wconv/status.py

if TYPE_CHECKING:
    from wconv.train import TrainingConfig


# ---------------------------------------------------------------- the result protocol

EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
LR = "lr"
HOST = "host"
DEVICE = "device"
BASELINE = "baseline"
WALL_TIME_S = "wall_time_s"
REPLAY = "replay"
FINISHED = "finished"
STATUS = "trial_status"
REASON = "reason"
FINAL = "final"
METRIC_SETTINGS = "metric_settings"
BEST_EPOCH = "best_epoch"
CONFUSION_MATRIX = "test_confusion_matrix"
VAL = "val"
TEST = "test"
LOSS = "loss"
VAL_LOSS = "val_loss"
"""What early stopping and the best epoch go by."""

MEMBER = "member"
"""Fused groups (``wconv.fused``): the member's index in its group, in each of its reports."""
ALPHA = "alpha"
"""Fused groups: the member's α (a list; None for the baseline), in each of its reports."""



def metric_key(split: str, metric: str) -> str:
    """The report key of ``metric`` on ``split``: ``metric_key(VAL, "psnr") == "val_psnr"``."""
    return f"{split}_{metric}"


class EpochReport(TypedDict):
    """What a trial reports after every epoch.

    Besides these keys it carries one float ``val_<metric>`` per validated metric (``val_loss`` and the
    task's per-epoch metrics), except on an epoch that failed before validation (non-finite training loss).
    """

    epoch: int
    train_loss: float
    """Mean training loss over the epoch's examples."""
    lr: float
    """Learning rate after the epoch's scheduler step (the next epoch's)."""
    host: str
    device: str
    """``"cpu"`` or the CUDA device's name."""
    baseline: bool
    """The α = 1 reference of its cell."""
    wall_time_s: float
    """Seconds spent inside the trial so far, over all restarts."""
    replay: NotRequired[list[dict[str, Any]]]
    """Only in the first report after a restart: the epoch reports before it, which may never have
    reached the caller (killed between checkpoint and report). Recording them again must be idempotent."""


class FinalMetrics(TypedDict, total=False):
    """``final`` of a completed trial: the lowest-validation-loss epoch's ``val_*`` metrics and the
    ``test_*`` metrics of that epoch's model (every metric of the task, the loss included); empty when
    the trial failed. A stopped member of a fused group has its best epoch's ``val_*`` and no ``test_*``."""

    best_epoch: int
    test_confusion_matrix: list[list[int]]
    """Classification only: entry (i, j) counts test examples of class i predicted as j (Fig. 1)."""


class FinalReport(EpochReport):
    """The last report of a trial: its last epoch's ``EpochReport`` plus the outcome."""

    finished: bool
    """Always True: no report after this one."""
    trial_status: TrialStatus
    reason: str
    """One line: why the trial ended (budget, early stopping, non-finite loss)."""
    final: FinalMetrics
    metric_settings: dict[str, Any]
    """How every metric was computed (``wconv.metrics.metric_settings``)."""


def final_value(report: dict, metric: str) -> Optional[float]:
    """The value a search should be told for a finished trial: ``final[metric]`` (e.g. ``"val_psnr"``, the
    best epoch's — not the last epoch's ``report[metric]``); None for a failed or unfinished trial."""
    if not report.get(FINISHED) or report.get(STATUS) != COMPLETED:
        return None
    return report[FINAL].get(metric)


def constant_keys(device: torch.device, baseline: bool) -> dict:
    """The keys of a trial's reports that never change: where it runs (host, device) and ``baseline``."""
    return {HOST: socket.gethostname(),
            DEVICE: torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            BASELINE: baseline}


# ---------------------------------------------------------------- between epochs


@dataclass
class Progress:
    """Where a trial stands between epochs; checkpointed as a plain dict (``vars``): keep the field names."""

    epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    best_model: Optional[dict] = None
    """State dict of the lowest-validation-loss epoch's model."""
    best_metrics: Optional[dict] = None
    """That epoch's report."""
    bad_epochs: int = 0
    """Epochs since the validation loss last went down (early stopping)."""
    history: list = field(default_factory=list)
    """Every epoch's metrics so far (what ``replay`` resends after a restart)."""
    elapsed: float = 0.0
    result: Optional[dict] = None
    """The ``FinalReport``, once finished."""

    def record(self, metrics: dict, model_state: Callable[[], dict]) -> None:
        """Count the epoch ``metrics`` towards the best epoch and early stopping (``val_loss`` finite)."""
        val_loss = metrics[VAL_LOSS]
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_epoch, self.bad_epochs = val_loss, metrics[EPOCH], 0
            self.best_model, self.best_metrics = copy.deepcopy(model_state()), dict(metrics)
        else:
            self.bad_epochs += 1

    def outcome(self, metrics: dict, training: TrainingConfig,
                baseline: bool) -> tuple[Optional[TrialStatus], Optional[str]]:
        """(status, reason) if the trial ends after this epoch, else (None, None).

        ``metrics`` is the epoch's report so far: without ``val_loss`` when training already failed."""
        epoch = metrics[EPOCH]
        if not math.isfinite(metrics[TRAIN_LOSS]):
            return FAILED, f"non-finite training loss ({metrics[TRAIN_LOSS]}) at epoch {epoch}"
        if not math.isfinite(metrics[VAL_LOSS]):
            return FAILED, f"non-finite validation loss at epoch {epoch}"
        if epoch >= training.epochs:
            return COMPLETED, f"ran the full budget of {training.epochs} epochs"
        if not baseline and training.patience is not None and self.bad_epochs >= training.patience:
            return COMPLETED, f"early stopping: no lower validation loss for {training.patience} epochs"
        return None, None

    def finish(self, report: dict, status: TrialStatus, reason: str, test: dict,
               metric_settings: dict[str, Any]) -> FinalReport:
        """The last report, kept as ``result``: ``report`` plus the outcome and ``final``, which holds the best
        epoch's ``val_*`` metrics, ``test`` (the ``test_*`` metrics of the best epoch's model, empty for a
        stopped member) and ``best_epoch``; ``final`` is empty for a failed trial."""
        final = {}
        if status != FAILED and self.best_metrics is not None:
            final = {k: v for k, v in self.best_metrics.items() if k.startswith(VAL + "_")}
            final.update(test)
            final[BEST_EPOCH] = self.best_epoch
        self.result = FinalReport(**report, finished=True, trial_status=status, reason=reason, final=final,
                                  metric_settings=metric_settings)
        return self.result

"""Checkpoints: the format of a trial's ``trial.pt``, written atomically, read without running anything they hold.

``TrialCheckpoint`` is what ``run_trial`` continues from (``wconv.train``), and what a fused group's member
leaves in its folder when it ends (``wconv.fused``); ``trial_checkpoint`` builds it for both. Its keys, and
the fields of ``wconv.result.Progress`` it holds under ``state``, are the format: checkpoints written by
earlier versions must keep resuming, so keep them. ``save_checkpoint`` writes then renames, so a kill
mid-write never leaves a truncated file.

A checkpoint is a pickle, and unpickling an untrusted pickle runs whatever code it names. Runs folders sit on
shared filesystems, so ``load_checkpoint`` reads with ``torch.load(weights_only=True)``: torch's restricted
unpickler, which builds only tensors, containers and plain values, plus the few types that ``SAFE_GLOBALS``
names — what a trial's checkpoint holds besides tensors: NumPy's RNG state (``np.random.get_state()``, one
``uint32`` array), and the trial status words of ``wconv.status``. Anything else is refused with ``UnsafeCheckpoint``, one line naming the file.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from wconv.status import Stage, TrialStatus

_reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct

SAFE_GLOBALS: list = [
    np.ndarray, np.dtype, type(np.dtype(np.uint32)),
    # NumPy 2 moved numpy.core to numpy._core; a checkpoint written under NumPy 1 names the old module.
    (_reconstruct, "numpy._core.multiarray._reconstruct"), (_reconstruct, "numpy.core.multiarray._reconstruct"),
    # A trial's progress records its outcome in wconv's own words (a StrEnum, rebuilt from its value).
    TrialStatus, Stage,
]
"""What ``torch.load(weights_only=True)`` may build beyond torch's own allowlist."""


class UnsafeCheckpoint(Exception):
    """A checkpoint that holds more than tensors, containers, plain values and ``SAFE_GLOBALS``; one line."""


def load_checkpoint(path: Path | str, map_location: Any = None) -> Any:
    """What ``torch.save`` wrote to ``path``, unpickled by torch's restricted unpickler (see the module docstring).

    ``UnsafeCheckpoint`` if the file holds anything that the allowlist does not name; nothing it names is run."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = found.group(1) if found else "an object that is not a tensor or a plain value"
        raise UnsafeCheckpoint(f"{path}: checkpoint refused: it holds {what}, which a wconv checkpoint never "
                               "holds, and unpickling it could run code; delete the file unless you know who "
                               "wrote it and why") from None


class TrialCheckpoint(TypedDict):
    """``trial.pt``: everything a trial continues from, and the ``TrialConfig`` it re-runs from alone."""

    model: dict
    """The model's ``state_dict`` (a member that ended completed: its best epoch's)."""
    optimizer: dict
    scheduler: dict
    order: torch.Tensor
    """The data-order generator's state (``torch.Generator.get_state``)."""
    rng: dict
    """The global RNG states (``rng_state``)."""
    state: dict
    """``vars`` of the trial's ``wconv.result.Progress``."""
    config: dict
    """``dataclasses.asdict`` of its ``wconv.train.TrialConfig`` (``TrialConfig.from_dict`` reads it back)."""


def trial_checkpoint(model: dict, optimizer: dict, scheduler: dict, order: torch.Generator, progress: Any,
                     config: Any) -> TrialCheckpoint:
    """The ``trial.pt`` of a trial: these state dicts, ``order``'s state, the global RNG states now, ``progress``
    (a ``wconv.result.Progress``) and ``config`` (a ``wconv.train.TrialConfig``)."""
    return TrialCheckpoint(model=model, optimizer=optimizer, scheduler=scheduler, order=order.get_state(),
                           rng=rng_state(), state=vars(progress), config=asdict(config))


def save_checkpoint(obj: dict, path: Path) -> None:
    """Write then rename, so a kill mid-write never leaves a truncated checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict:
    """The global RNG states (torch, NumPy, Python, and CUDA's when there is one), as a checkpoint holds them."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

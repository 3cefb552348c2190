"""Checkpoints, read without running anything they hold.

A checkpoint is a pickle, and unpickling an untrusted pickle runs whatever code it names. Runs folders sit on
shared filesystems, so ``load_checkpoint`` reads with ``torch.load(weights_only=True)``: torch's restricted
unpickler, which builds only tensors, containers and plain values, plus the few types that ``SAFE_GLOBALS``
names — what a trial's checkpoint holds besides tensors: NumPy's RNG state (``np.random.get_state()``, one
``uint32`` array). Anything else is refused with ``UnsafeCheckpoint``, one line naming the file.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

_reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct

SAFE_GLOBALS: list = [
    np.ndarray, np.dtype, type(np.dtype(np.uint32)),
    # NumPy 2 moved numpy.core to numpy._core; a checkpoint written under NumPy 1 names the old module.
    (_reconstruct, "numpy._core.multiarray._reconstruct"), (_reconstruct, "numpy.core.multiarray._reconstruct"),
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

"""What ``load`` returns, and the one error every dataset problem becomes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wconv.data.split import Split


class DatasetError(Exception):
    """A dataset is missing or damaged. The message is one line naming the file or folder and the fix."""


def prepare_hint(name: str, root: Path) -> str:
    return f"run `wconv data prepare {name} --root {root}` (it downloads; without network, add --from ARCHIVE)"


@dataclass
class TaskData:
    """One dataset, split and ready for the trainer."""

    name: str
    task: str
    """"classification" (input: normalised images, target: int64 labels) or
    "denoising" (input: noisy image, target: clean image, both float32 in [0, 1], noise not clamped)."""
    in_channels: int
    num_classes: int | None
    """Classes for classification, None for denoising."""
    image_size: int
    """Side of the square inputs: the image side (classification) or the patch size (denoising)."""
    train: Split
    val: Split
    test: Split

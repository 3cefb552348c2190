"""The arms of a confirmation, named once: what ``wconv confirm`` trains on each fresh seed, and what the
store's ``arm`` column, the verdicts, tables and figures call them.

Every arm is the same trial protocol on the same seed (initial weights, data order); they differ in what
of the weighted convolution they keep. Under SGD a weighted conv *is* a standard conv with two changes
(``wconv.conv.LRShape`` derives it): initial weights Φ ∘ W₀ and a per-position learning rate Φ² on the
loss gradient. The controls take these apart:

- ``alpha``: the chosen α, the weighted conv itself;
- ``baseline``: α = 1, the standard conv;
- ``init-scale``: α = 1, initial weights multiplied by √mean(Φ²) (the density's scale at initialisation);
- ``init-shape``: α = 1, initial weights multiplied by Φ elementwise (its shape at initialisation);
- ``lr-shape``: α = 1, usual initial weights, per-position learning rate Φ² (SGD) or Φ (Adam, up to ε).

init-shape and lr-shape together are the weighted conv exactly under SGD (momentum, Nesterov, weight
decay); under Adam only up to ε (ε/Φ in place of ε). Each control sets one field of
``wconv.train.TrialConfig`` to the chosen α (``FIELDS``). Light on purpose: imported by the CLI.
"""

from __future__ import annotations

from enum import StrEnum


class Arm(StrEnum):
    ALPHA = "alpha"
    BASELINE = "baseline"
    INIT_SCALE = "init-scale"
    INIT_SHAPE = "init-shape"
    LR_SHAPE = "lr-shape"


CONTROLS = (Arm.INIT_SCALE, Arm.INIT_SHAPE, Arm.LR_SHAPE)
"""The control arms, in the order verdicts list them."""

FIELDS = {Arm.INIT_SCALE: "init_scale", Arm.INIT_SHAPE: "init_shape", Arm.LR_SHAPE: "lr_shape"}
"""The ``TrialConfig`` field each control sets to the chosen α (its α itself is α = 1)."""

DESCRIPTIONS = {
    Arm.ALPHA: "the chosen α",
    Arm.BASELINE: "α = 1",
    Arm.INIT_SCALE: "α = 1, initial weights scaled by √mean(Φ²)",
    Arm.INIT_SHAPE: "α = 1, initial weights multiplied by Φ",
    Arm.LR_SHAPE: "α = 1, per-position learning rate Φ² (SGD) / Φ (Adam)",
}


def parse_controls(text: str) -> tuple[Arm, ...]:
    """``"init-scale,lr-shape"`` → the controls in ``CONTROLS`` order; ValueError naming any unknown one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in {c.value for c in CONTROLS}]
    if unknown or not names:
        raise ValueError(f"unknown control(s) {', '.join(map(repr, unknown)) or repr(text)}; choose one or more of "
                         f"{', '.join(CONTROLS)}, comma-separated")
    return tuple(c for c in CONTROLS if c.value in names)

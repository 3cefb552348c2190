"""Questions asked of the results: which α did best, by how much it beat α = 1, and whether that survived fresh seeds.

Two views of the search (``best_alpha(..., by=)``):

- ``"cell"``: per search cell (model × kernel size × seed), the α that did best on that seed. This is
  what one search finds, and it is biased upward: the α is chosen on the very runs it is scored on.
- ``"model"``: per (sweep, model, kernel size), the α whose paired difference against α = 1 on the
  same seed is best on average over the search seeds, with a bootstrap CI. With one seed it is the
  per-cell answer. Its CI still comes from the runs the α was chosen on, so it is optimistic too.

Either way, an α must *beat* α = 1 to be the best: when no α tried did better than α = 1 on the same
seeds (a tie included), the answer is α = 1 itself, with a ``note`` naming the best α tried and its gain.
A cell with no finished trial yet (a sweep still running, or interrupted early) gets no best and the note
"no finished trial yet": one such sweep never stops the others from being answered.

The unbiased answer is the confirmation (``confirmation``): the chosen α and α = 1 retrained on
fresh seeds, compared seed by seed on the *test* counterpart of the sweep's metric (the α was
chosen on validation data). Until that has run on at least two seeds, the verdict is "unconfirmed".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from numbers import Number
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.frames import Frames, load
from analysis.arms import CONTROLS, FIELDS, Arm
from analysis.stats import UNCONFIRMED, ControlShare, PairedComparison, compare_paired, control_share
from analysis.store import Store
from wconv.status import TERMINAL, Stage, TrialStatus

SEARCH, CONFIRM = Stage.SEARCH, Stage.CONFIRM

CELL_COLUMNS = [
    "sweep", "cell", "model", "kernel_size", "seed", "metric", "mode",
    "best_alpha", "best_value", "best_trial", "other_metrics",
    "baseline_value", "difference", "improvement",
    "n_trials", "n_completed", "n_stopped", "n_failed", "n_running", "verdict", "beats_baseline", "note",
]  # fmt: skip
MODEL_COLUMNS = [
    "sweep", "model", "kernel_size", "metric", "mode",
    "best_alpha", "n_seeds", "seeds", "best_value", "baseline_value", "difference", "improvement",
    "ci_low", "ci_high", "best_trials", "baseline_trials",
    "verdict", "confirm_alpha", "confirm_metric", "confirm_seeds", "confirm_alpha_mean", "confirm_alpha_std",
    "confirm_baseline_mean", "confirm_baseline_std", "confirm_difference", "confirm_ci_low", "confirm_ci_high",
    "confirm_p", *(f"{FIELDS[c]}_explained" for c in CONTROLS), "controls", "decomposition", "beats_baseline",
    "note",
]  # fmt: skip
"""``difference``/``ci_*`` are best − baseline in metric units; ``improvement`` is signed so positive is better.
``beats_baseline`` is False when no α beat α = 1 (``best_alpha`` is then α = 1), None without a finished α = 1;
``note`` says why a row has no best, or that no α beat α = 1. ``<control>_explained`` (``init_scale``, ``init_shape``,
``lr_shape``): the share of the confirmed gain that control reproduces; ``controls`` holds each control's paired
comparison with α = 1 (``difference``, ``ci_low``, ``ci_high``, ``p``, ``verdict``, ``explained``, and
``beyond_verdict``: α against the control); ``decomposition`` is the one-line reading of both
(``decomposition_line``)."""

# The compact view `format_table(..., "table")` shows; json and csv carry every column.
_TABLE_COLUMNS = {
    "cell": ["sweep", "cell", "metric", "best_alpha", "best_value", "baseline_value", "improvement",
             "n_completed", "n_stopped", "n_failed", "n_trials", "verdict", "note"],
    "model": ["sweep", "model", "kernel_size", "metric", "best_alpha", "n_seeds", "best_value", "baseline_value",
              "improvement", "ci", "verdict", "confirm_difference", "confirm_ci", "confirm_p",
              *(f"{FIELDS[c]}_explained" for c in CONTROLS), "note"],
}  # fmt: skip
_TABLE_HEADERS = {
    "kernel_size": "kernel", "best_alpha": "best α", "n_seeds": "seeds", "best_value": "best",
    "baseline_value": "α = 1", "n_completed": "completed", "n_stopped": "stopped", "n_failed": "failed",
    "n_trials": "trials", "ci": "95% CI (search)", "confirm_difference": "confirmed Δ",
    "confirm_ci": "95% CI (confirm)", "confirm_p": "p (paired t)",
    **{f"{FIELDS[c]}_explained": f"{c} share" for c in CONTROLS},
}  # fmt: skip
_SIGNED = {"difference", "improvement", "confirm_difference", "ci", "confirm_ci"}


def best_alpha(
    source: Store | Frames | str,
    sweep: str | None = None,
    model: str | None = None,
    kernel: int | None = None,
    *,
    by: str = "cell",
) -> pd.DataFrame:
    """The best α of each search cell (``by="cell"``, ``CELL_COLUMNS``) or of each (sweep, model, kernel
    size) across seeds (``by="model"``, ``MODEL_COLUMNS``), with the confirmation verdict beside it.

    ``source`` is a results database URL, an open ``Store`` or loaded ``Frames``. A sweep, model or
    kernel size that is not in the results raises ``ResultsError`` listing what is.

    The value of a trial is its final ``<sweep's metric>``, better by the sweep's mode. Only
    *completed* trials with a finite value take part: trials the scheduler stopped (ASHA) reported
    after fewer epochs, failed ones have none. A cell without such a non-baseline trial gets no best
    (None) rather than a partial-training number; its counts still show what happened.
    """
    if by not in ("cell", "model"):
        raise ValueError(f"by must be 'cell' or 'model', got {by!r}")
    frames = source if isinstance(source, Frames) else load(source)
    frames = frames.select(sweep, model, kernel)
    rows = _by_cell(frames) if by == "cell" else _by_model(frames)
    columns = CELL_COLUMNS if by == "cell" else MODEL_COLUMNS
    df = pd.DataFrame(rows, columns=columns)
    order = ["sweep", "model", "kernel_size", "seed", "cell"] if by == "cell" else ["sweep", "model", "kernel_size"]
    df = df.sort_values(order, na_position="last", kind="stable").reset_index(drop=True)
    return df.astype(object).where(df.notna(), None)


def trial_values(trials: pd.DataFrame, metric: str | None) -> pd.Series:
    """Each trial's ``metric`` as a float, NaN where it is missing or not finite."""
    if metric is None or metric not in trials.columns:
        return pd.Series(np.nan, index=trials.index, dtype=float)
    values = pd.to_numeric(trials[metric], errors="coerce").astype(float)
    return values.where(np.isfinite(values))


def search_trials(frames: Frames) -> pd.DataFrame:
    return frames.trials[frames.trials["stage"] == SEARCH]


def _sweep_settings(frames: Frames, sweep: str) -> tuple[str | None, str | None]:
    rows = frames.sweeps[frames.sweeps["name"] == sweep]
    if rows.empty:  # trials written before their sweep row (a partly written database)
        return None, None
    return rows.iloc[0]["metric"], rows.iloc[0]["mode"]


def _by_cell(frames: Frames) -> list[dict]:
    trials = search_trials(frames)
    rows = []
    for (sweep, cell), group in trials.groupby(["sweep", "cell"], sort=False):
        metric, mode = _sweep_settings(frames, sweep)
        values = trial_values(group, metric)
        finished = (group["status"] == TrialStatus.COMPLETED) & values.notna()
        is_baseline = group["baseline"].fillna(False).astype(bool)

        choice = choose_alpha(group, metric, mode)
        best = None if choice is None else group[group["trial_id"] == choice.trials[0]].iloc[0]
        baselines = group[finished & is_baseline].sort_values("updated_at")
        baseline_value = None if baselines.empty else values[baselines.index[-1]]
        best_value = None if best is None else values[best.name]
        difference = improvement = None
        if best_value is not None and baseline_value is not None:
            difference = best_value - baseline_value
            improvement = difference if mode == "max" else -difference

        first = group.iloc[0]
        status = group["status"]
        confirm = confirmation(frames, sweep, first["model"], int(first["kernel_size"]))
        rows.append(dict(
            sweep=sweep, cell=cell, model=first["model"], kernel_size=_plain(first["kernel_size"]),
            seed=_plain(first["seed"]), metric=metric, mode=mode,
            best_alpha=None if best is None else _plain(best["alpha"]),
            best_value=best_value,
            best_trial=None if best is None else best["trial_id"],
            other_metrics=None if best is None else _scalar_metrics(frames, best, exclude=metric),
            baseline_value=baseline_value, difference=difference, improvement=improvement,
            n_trials=len(group),
            n_completed=int((status == TrialStatus.COMPLETED).sum()), n_stopped=int((status == TrialStatus.STOPPED).sum()),
            n_failed=int((status == TrialStatus.FAILED).sum()), n_running=int((status == TrialStatus.RUNNING).sum()),
            verdict=UNCONFIRMED if confirm is None else confirm.verdict,
            beats_baseline=None if choice is None else choice.beats_baseline, note=_note(group, choice),
        ))  # fmt: skip
    return rows


PROGRESS_COLUMNS = ["cell", "done", "total", "running", "metric", "best_alpha", "best_value", "baseline_value",
                    "note"]


def progress(source: Store | Frames | str, sweep: str) -> pd.DataFrame:
    """Per search cell of ``sweep`` that has trials (``PROGRESS_COLUMNS``): trials finished of the cell's total,
    trials running, and the best α so far by the rule of ``best_alpha`` (α = 1 when nothing beat it yet), with
    α = 1's value. What ``wconv status`` shows, during a run as after it."""
    frames = (source if isinstance(source, Frames) else load(source, sweep=sweep)).select(sweep)
    info = frames.sweep(sweep)
    metric, mode = info.get("metric"), info.get("mode")
    samples = ((info.get("spec") or {}).get("search") or {}).get("num_samples")
    rows = []
    for cell, group in search_trials(frames).groupby("cell", sort=True):
        choice = choose_alpha(group, metric, mode)
        rows.append(dict(
            cell=cell, done=int(group["status"].isin(TERMINAL).sum()),
            total=int(samples) + 1 if samples is not None else None,  # the sampled α and α = 1
            running=int((group["status"] == TrialStatus.RUNNING).sum()), metric=metric,
            best_alpha=None if choice is None else choice.alpha,
            best_value=None if choice is None else float(np.mean(choice.values)),
            baseline_value=None if choice is None or choice.baselines is None else float(np.mean(choice.baselines)),
            note=_note(group, choice),
        ))  # fmt: skip
    return pd.DataFrame(rows, columns=PROGRESS_COLUMNS).astype(object)


def format_progress(df: pd.DataFrame) -> str:
    """``progress`` as a terminal table; one line when no trial has started."""
    if df.empty:
        return "no trial has started yet\n"
    shown = pd.DataFrame({
        "cell": df["cell"],
        "trials done": [f"{d}/{t if t is not None else '?'}" for d, t in zip(df["done"], df["total"])],
        "running": df["running"].astype(str),
        "best α so far": [_cell("best_alpha", a) for a in df["best_alpha"]],
        f"best {df['metric'].iloc[0] or ''}".strip(): [_cell("best_value", v) for v in df["best_value"]],
        "α = 1": [_cell("baseline_value", v) for v in df["baseline_value"]],
        "note": [_cell("note", n) for n in df["note"]],
    })  # fmt: skip
    return shown.to_markdown(index=False, tablefmt="simple", disable_numparse=True) + "\n"


def _note(group: pd.DataFrame, choice: AlphaChoice | None) -> str | None:
    """Why a row of ``best_alpha`` has no best, or that no α beat α = 1."""
    if choice is not None:
        return choice.note
    status = group["status"]
    counts = ", ".join(f"{n} {s}" for s, n in status.value_counts().sort_index().items())
    if not status.isin(TERMINAL).any():
        return f"no finished trial yet ({counts})"
    if not (status == TrialStatus.COMPLETED).any():
        return f"no completed trial yet ({counts})"
    return "no completed trial besides α = 1 yet"


def _scalar_metrics(frames: Frames, trial: pd.Series, exclude: str | None) -> dict:
    """The trial's other numeric metrics (the confusion matrix stays out of a one-line answer)."""
    values = {k: _plain(trial[k]) for k in frames.metrics if k != exclude}
    return {k: v for k, v in values.items() if isinstance(v, Number) and not isinstance(v, bool)}


@dataclass(frozen=True)
class AlphaChoice:
    """The α a multi-seed search points to, and the paired evidence for it on the search seeds."""

    alpha: list[float]
    seeds: list[int]
    values: list[float]
    baselines: list[float] | None
    """α = 1 on the same seeds, or None when no seed has a finished baseline."""
    trials: list[str]
    baseline_trials: list[str]
    beats_baseline: bool | None = None
    """False when no α tried beat α = 1 on the same seeds: ``alpha``, ``values`` and ``trials`` are then α = 1's
    own. None when there is no finished α = 1 to compare with."""
    tried_alpha: list[float] | None = None
    """The best α tried other than α = 1 (``alpha`` itself when it beats α = 1)."""
    tried_gain: float | None = None
    """Its mean improvement over α = 1 on the same seeds, positive is better; None without a baseline."""

    @property
    def note(self) -> str | None:
        if self.beats_baseline is not False:
            return None
        return (f"no α beat α = 1 (best tried {format_alpha(self.tried_alpha)}: "
                f"{self.tried_gain:+.4g} against α = 1)")


def choose_alpha(group: pd.DataFrame, metric: str | None, mode: str | None) -> AlphaChoice | None:
    """Among the α values tried in the search trials ``group`` of one (model, kernel size), the one whose
    improvement over α = 1 *on the same seed* is best on average.

    Only α values run on the most seeds compete (an α seen on one lucky seed does not beat one seen on
    all of them); only seeds where α = 1 finished count, unless none did (then the best mean value wins).
    With one seed this is the per-cell best. A tie goes to the smaller α. An α that does not beat α = 1
    (mean improvement ≤ 0) is not chosen: the choice is then α = 1 itself (``beats_baseline=False``).
    """
    if mode not in ("min", "max"):
        return None
    sign = 1.0 if mode == "max" else -1.0
    values = trial_values(group, metric)
    finished = (group["status"] == TrialStatus.COMPLETED) & values.notna()
    # assign before selecting: assigning a Series to an empty selection would bring back its every row
    done = group.assign(value=values)[finished].sort_values("updated_at")
    is_baseline = done["baseline"].fillna(False).astype(bool)
    baselines = done[is_baseline].groupby("seed").last()
    tried = done[~is_baseline].assign(key=lambda d: d["alpha"].map(_alpha_key))
    if tried.empty:
        return None
    tried = tried.groupby(["key", "seed"], sort=True).last().reset_index()
    if not baselines.empty:
        paired = tried[tried["seed"].isin(baselines.index)]
        tried = paired if not paired.empty else tried
    coverage = tried.groupby("key")["seed"].nunique()
    widest = coverage[coverage == coverage.max()].index
    scores = {}
    for key in widest:
        runs = tried[tried["key"] == key]
        reference = baselines["value"].reindex(runs["seed"]).to_numpy() if not baselines.empty else 0.0
        scores[key] = float(np.nanmean(sign * (runs["value"].to_numpy() - reference)))
    best_key = max(scores, key=lambda k: (scores[k], -widest.get_loc(k)))
    runs = tried[tried["key"] == best_key].sort_values("seed")
    seeds = [int(s) for s in runs["seed"]]
    has_baseline = not baselines.empty and set(seeds) <= set(baselines.index)
    alpha = [float(a) for a in runs.iloc[0]["alpha"]]
    base_values = [float(baselines.loc[s, "value"]) for s in seeds] if has_baseline else None
    base_trials = [baselines.loc[s, "trial_id"] for s in seeds] if has_baseline else []
    if not has_baseline:
        return AlphaChoice(alpha, seeds, [float(v) for v in runs["value"]], None, list(runs["trial_id"]), [],
                           tried_alpha=alpha)
    gain = scores[best_key]
    if gain > 0:
        return AlphaChoice(alpha, seeds, [float(v) for v in runs["value"]], base_values, list(runs["trial_id"]),
                           base_trials, beats_baseline=True, tried_alpha=alpha, tried_gain=gain)
    return AlphaChoice([1.0] * len(alpha), seeds, base_values, base_values, base_trials, base_trials,
                       beats_baseline=False, tried_alpha=alpha, tried_gain=gain)


def _by_model(frames: Frames) -> list[dict]:
    trials = search_trials(frames)
    rows = []
    for (sweep, model, kernel), group in trials.groupby(["sweep", "model", "kernel_size"], sort=False):
        metric, mode = _sweep_settings(frames, sweep)
        choice = choose_alpha(group, metric, mode)
        row: dict[str, Any] = dict(sweep=sweep, model=model, kernel_size=int(kernel), metric=metric, mode=mode,
                                   n_seeds=int(group["seed"].nunique()), note=_note(group, choice),
                                   beats_baseline=None if choice is None else choice.beats_baseline)
        if choice is not None:
            row.update(best_alpha=choice.alpha, seeds=choice.seeds, best_value=float(np.mean(choice.values)),
                       best_trials=choice.trials, baseline_trials=choice.baseline_trials)
            if choice.baselines is not None:
                row["baseline_value"] = float(np.mean(choice.baselines))
                row["difference"] = row["best_value"] - row["baseline_value"]
                row["improvement"] = row["difference"] if mode == "max" else -row["difference"]
                if len(choice.seeds) >= 2 and choice.beats_baseline:
                    search = compare_paired(choice.values, choice.baselines, mode)
                    row.update(ci_low=search.ci_low, ci_high=search.ci_high)
        confirm = confirmation(frames, sweep, model, int(kernel))
        row["verdict"] = UNCONFIRMED if confirm is None else confirm.verdict
        if confirm is not None:
            row.update(confirm_alpha=confirm.alpha, confirm_metric=confirm.metric, confirm_seeds=confirm.seeds)
            if confirm.comparison is not None:
                c = confirm.comparison
                row.update(confirm_alpha_mean=c.mean_a, confirm_alpha_std=c.std_a, confirm_baseline_mean=c.mean_b,
                           confirm_baseline_std=c.std_b, confirm_difference=c.difference, confirm_ci_low=c.ci_low,
                           confirm_ci_high=c.ci_high, confirm_p=c.p_value)
            if confirm.controls:
                row["controls"] = {str(arm): dict(
                    difference=share.versus_baseline.difference, ci_low=share.versus_baseline.ci_low,
                    ci_high=share.versus_baseline.ci_high, p=share.versus_baseline.p_value,
                    verdict=share.versus_baseline.verdict, explained=share.explained,
                    beyond_verdict=share.beyond.verdict) for arm, share in confirm.controls.items()}
                row.update({f"{FIELDS[arm]}_explained": share.explained for arm, share in confirm.controls.items()})
            row["decomposition"] = decomposition_line(confirm)
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Confirmation:
    """The confirmation runs of one (sweep, model, kernel size): per seed, each arm's value of ``metric``."""

    sweep: str
    model: str
    kernel_size: int
    alpha: list[float]
    metric: str
    mode: str
    values: pd.DataFrame
    """Index: seed; columns: the arms (``Arm.ALPHA``, ``Arm.BASELINE``, then each control that ran); NaN where
    that arm has not completed on that seed."""
    planned_seeds: int
    """Seeds with a confirmation trial of this α recorded, finished or not."""
    comparison: PairedComparison | None
    """α against α = 1 on the seeds where both completed; None with fewer than two such seeds."""
    controls: dict[Arm, ControlShare]
    """Each control that ran, in ``CONTROLS`` order: its share of the gain, on the seeds where α, α = 1 and it
    completed (at least two)."""
    optimizer: str | None = None
    """The optimiser the sweep trained with (``identity_holds``); None when not recorded."""

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.values.dropna(subset=[Arm.ALPHA, Arm.BASELINE]).index]

    @property
    def identity_holds(self) -> bool | None:
        """Whether init-shape and lr-shape together are *exactly* the weighted conv under this confirmation's
        optimiser: True under SGD, False under Adam (ε/Φ for ε); None when the optimiser is not recorded."""
        return None if self.optimizer is None else self.optimizer == "sgd"

    @property
    def verdict(self) -> str:
        return UNCONFIRMED if self.comparison is None else self.comparison.verdict


def confirm_metric(metric: str, available: Sequence[str]) -> str:
    """The test counterpart of a validation metric (``val_psnr`` → ``test_psnr``) when trials report it."""
    if metric.startswith("val_") and f"test_{metric[4:]}" in available:
        return f"test_{metric[4:]}"
    return metric


def confirmation(frames: Frames, sweep: str, model: str, kernel: int) -> Confirmation | None:
    """The confirmation of (sweep, model, kernel size), or None if no confirmation trial was recorded."""
    trials = frames.trials
    mine = trials[(trials["stage"] == CONFIRM) & (trials["sweep"] == sweep) & (trials["model"] == model)
                  & (trials["kernel_size"] == kernel)]
    metric, mode = _sweep_settings(frames, sweep)
    if mine.empty or metric is None:
        return None
    alpha_arm = mine[mine["arm"] == Arm.ALPHA].sort_values("updated_at")
    if alpha_arm.empty:
        return None
    alpha = [float(a) for a in alpha_arm.iloc[-1]["alpha"]]  # the latest α confirmed, if ever re-planned
    seeds = set(alpha_arm[alpha_arm["alpha"].map(_alpha_key) == _alpha_key(alpha)]["seed"])
    mine = mine[mine["seed"].isin(seeds)]
    metric = confirm_metric(metric, list(trials.columns))
    values = trial_values(mine, metric)
    done = mine.assign(value=values)[(mine["status"] == TrialStatus.COMPLETED) & values.notna()].sort_values("updated_at")
    arms = [Arm.ALPHA, Arm.BASELINE] + [c for c in CONTROLS if (mine["arm"] == c).any()]
    table = pd.DataFrame(np.nan, index=pd.Index(sorted(int(s) for s in seeds), name="seed"), columns=arms)
    for (seed, arm), value in done.groupby(["seed", "arm"])["value"].last().items():
        if arm in arms:
            table.loc[int(seed), arm] = value
    paired = table.dropna(subset=[Arm.ALPHA, Arm.BASELINE])
    comparison = None
    if len(paired) >= 2:
        comparison = compare_paired(paired[Arm.ALPHA], paired[Arm.BASELINE], mode)
    controls = {}
    for arm in arms[2:]:
        triple = table[[Arm.ALPHA, Arm.BASELINE, arm]].dropna()
        if len(triple) >= 2:
            controls[arm] = control_share(triple[Arm.ALPHA], triple[Arm.BASELINE], triple[arm], mode)
    return Confirmation(sweep=sweep, model=model, kernel_size=int(kernel), alpha=alpha, metric=metric, mode=mode,
                        values=table, planned_seeds=len(seeds), comparison=comparison, controls=controls,
                        optimizer=_optimizer(frames, sweep))


def _optimizer(frames: Frames, sweep: str) -> str | None:
    """The optimiser a sweep's trials ran (its recorded spec's ``training.optimizer``, else the task's default)."""
    rows = frames.sweeps[frames.sweeps["name"] == sweep]
    spec = rows.iloc[0].get("spec") if not rows.empty and "spec" in rows.columns else None
    if not isinstance(spec, dict):
        return None
    training = spec.get("training") or {}
    if training.get("optimizer"):
        return training["optimizer"]
    return {"classification": "sgd", "denoising": "adam"}.get(spec.get("task"))


_UNITS = {"psnr": " dB"}


def _num(x: float) -> str:
    """A signed difference to 3 significant digits; below 1e-6 in size it is 0 (metrics are computed in float32,
    so a mean of equal values can differ from 0 by rounding alone)."""
    return "+0" if abs(x) < 1e-6 else f"{x:+.3g}"


def decomposition_line(confirm: Confirmation | None) -> str | None:
    """One line reading a confirmation and its controls, e.g. "gain +4.5 dB [3.4, 5.8], confirmed; init-shape
    reproduces 0.9 of it, lr-shape 0.2, init-scale 0.7" (a share is the control's gain over α = 1 divided by
    α's, on the seeds all three finished); None before the confirmation has two paired seeds."""
    if confirm is None or confirm.comparison is None:
        return None
    c = confirm.comparison
    unit = _UNITS.get(confirm.metric.split("_", 1)[-1], "")
    low, high = (c.ci_low, c.ci_high) if c.mode == "max" else (-c.ci_high, -c.ci_low)  # as an improvement
    line = f"gain {_num(c.improvement)}{unit} [{_num(low)}, {_num(high)}], {c.verdict}"
    if not confirm.controls:
        return line
    parts = []
    for arm, share in confirm.controls.items():
        vs = share.versus_baseline
        own = f"{_num(vs.improvement)}{unit} against α = 1, {vs.verdict}"
        if share.explained is None:
            parts.append(f"{arm}: {own}")
        else:  # the first share reads in full, the next ones after it
            verb = " reproduces" if not any(" reproduces " in p for p in parts) else ""
            parts.append(f"{arm}{verb} {share.explained:.2f}{' of it' if verb else ''} ({own})")
    if all(share.explained is None for share in confirm.controls.values()):
        return f"{line}; no gain for a control to reproduce: " + ", ".join(parts)
    return f"{line}; " + ", ".join(parts)


def _alpha_key(alpha: Any) -> tuple[float, ...]:
    """α as a hashable key; trials of the same α on different seeds match despite float noise in storage."""
    return tuple(round(float(a), 9) for a in (alpha or ()))


def format_alpha(alpha: Sequence[float] | None) -> str:
    """``0.80`` for one free coefficient, ``(0.10, 0.90)`` for two; "-" for none."""
    if alpha is None or len(alpha) == 0:
        return "-"
    if len(alpha) == 1:
        return f"{alpha[0]:.2f}"
    return "(" + ", ".join(f"{a:.2f}" for a in alpha) + ")"


def format_table(df: pd.DataFrame, fmt: str = "table", *, columns: Sequence[str] | None = None) -> str:
    """Render a ``best_alpha`` frame as a terminal ``table`` (pandas ``to_markdown``, tabulate's "simple"
    layout), ``json`` (a list of records) or ``csv``.

    The table is the compact view (``_TABLE_COLUMNS``) unless ``columns`` is given: α as ``0.80`` or
    ``(0.10, 0.90)``, CIs as ``[low, high]``. json and csv carry every column; in csv, lists and dicts are
    JSON text.
    """
    if fmt not in ("table", "json", "csv"):
        raise ValueError(f"format must be 'table', 'json' or 'csv', got {fmt!r}")
    plain = df.map(_plain) if not df.empty else df
    if fmt == "json":
        # json, not pandas' to_json: that rounds to at most 15 digits, and α names trials by its exact value
        return json.dumps(plain.to_dict("records"), indent=1, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return plain.map(_csv_field).to_csv(index=False, lineterminator="\n") if not df.empty else (
            df.to_csv(index=False, lineterminator="\n"))
    shown = compact_view(df, columns)
    if shown.empty:
        return shown.to_markdown(index=False, tablefmt="simple") + "\n(no results)\n"
    text = shown.to_markdown(index=False, tablefmt="simple", disable_numparse=True) + "\n"
    if "decomposition" in df.columns and columns is None:
        lines = [f"{r['model']} {r['kernel_size']}×{r['kernel_size']}: {r['decomposition']}"
                 for _, r in df.iterrows() if r["decomposition"]]
        text += "".join(f"\n{line}" for line in lines) + ("\n" if lines else "")
    return text


def compact_view(df: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """What ``wconv best`` shows of a ``best_alpha`` frame, as text: α as ``0.80``, CIs as ``[low, high]``."""
    df = df.copy()
    if {"ci_low", "ci_high"} <= set(df.columns):
        df["ci"] = [_interval(lo, hi) for lo, hi in zip(df["ci_low"], df["ci_high"])]
    if {"confirm_ci_low", "confirm_ci_high"} <= set(df.columns):
        df["confirm_ci"] = [_interval(lo, hi) for lo, hi in zip(df["confirm_ci_low"], df["confirm_ci_high"])]
    if columns is None:
        compact = _TABLE_COLUMNS["model" if "n_seeds" in df.columns else "cell"]
        shares = {f"{FIELDS[c]}_explained" for c in CONTROLS}  # shown only where a control ran
        columns = [c for c in compact if c in df.columns and (c not in shares or df[c].notna().any())] or list(
            df.columns)
    shown = pd.DataFrame({c: [_cell(c, v) for v in df[c]] for c in columns}, columns=list(columns))
    return shown.rename(columns=_TABLE_HEADERS)


def _interval(low: Any, high: Any) -> str | None:
    if low is None or high is None:
        return None
    return f"[{low:+.4g}, {high:+.4g}]"


def _csv_field(value: Any) -> Any:
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _cell(column: str, value: Any) -> str:
    value = _plain(value)
    if value is None:
        return "-"
    if column in ("best_alpha", "confirm_alpha") and isinstance(value, list):
        return format_alpha(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(k, v)}" for k, v in value.items())
    if isinstance(value, (bool, int, str)):
        return str(value)
    if isinstance(value, float):
        if column == "confirm_p":
            return f"{value:.3g}"
        if column.endswith("_explained"):
            return f"{value:.2f}"
        return f"{value:+.4g}" if column in _SIGNED else f"{value:.4g}"
    return str(value)


def _plain(value: Any) -> Any:
    """Plain JSON-able Python: numpy/pandas scalars unwrapped, NaN/NA to None, timestamps to ISO text."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

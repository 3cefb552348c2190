"""The report's figures: what the search tried and where ASHA stopped it, learning curves, the paper's
Fig. 1 (confusion matrices) and Figs. 2–3 (denoised examples), and the confirmation's paired differences.

Every kernel size is drawn whole: the search figure shows metric against α1 for 3×3 (one free coefficient),
the (α1, α2) plane for 5×5, and for 7×7 and larger one panel per free coefficient (metric against each αi),
so no coefficient is left out; the density in each title is written out for that size (``density_label``).
A figure that cannot be drawn truthfully raises ``NotDrawn`` and the report says why in its place.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``, Agg canvas): no pyplot, so no
global state and no display is needed. ``plots`` lists what a sweep gets; each ``Plot.draw`` renders one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.transforms import blended_transform_factory

from analysis.frames import Frames
from analysis.arms import CONTROLS, Arm
from analysis.query import decomposition_line, format_alpha, search_trials
from analysis.tables import Pair, format_metric, pairs
from wconv.status import TrialStatus

BASELINE_COLOR = "#222222"
BEST_COLOR = "#e66101"
TRIAL_COLOR = "#3b75af"
STOPPED_COLOR = "#9a9a9a"
FAILED_COLOR = "#c0392b"
CONTROL_COLOR = "#5e3c99"
STATUS_COLORS = {TrialStatus.COMPLETED: TRIAL_COLOR, TrialStatus.STOPPED: STOPPED_COLOR, TrialStatus.FAILED: FAILED_COLOR,
                 TrialStatus.RUNNING: "#f1c40f"}
SEED_COLORS = ("#3b75af", "#519e3e", "#8d69b8", "#c49c94", "#17becf", "#bcbd22")
DPI = 120


class NotDrawn(Exception):
    """This figure cannot be drawn from these results; the message says why (the report shows it instead)."""


class CheckpointMissing(NotDrawn):
    """A trial's checkpoint is not on this machine (e.g. written on a cluster's scratch)."""


def density_label(n: int) -> str:
    """The 1-D density of a kernel with ``n`` free coefficients, outer edge inward: ``(α1, 1, α1)`` for 3×3,
    ``(α1, α2, α3, 1, α3, α2, α1)`` for 7×7."""
    names = [f"α{i}" for i in range(1, n + 1)]
    return "(" + ", ".join([*names, "1", *reversed(names)]) + ")"


@dataclass(frozen=True)
class Plot:
    """One figure of the report, drawn on demand (``draw``) so the report can show progress as it renders."""

    name: str
    """File name, e.g. ``alpha_tiny_cnn_k3.png``."""
    section: str
    title: str
    caption: str
    draw: Callable[[], Figure]


def save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")


def plots(frames: Frames, sweep: dict) -> list[Plot]:
    """Every figure a sweep's results support, in the order the report shows them."""
    out: list[Plot] = []
    trials = search_trials(frames)
    groups = pairs(frames, sweep)
    for pair in groups:
        tag, label = f"{pair.model}_k{pair.kernel_size}", f"{pair.model}, {pair.kernel_size} × {pair.kernel_size}"
        group = trials[(trials["model"] == pair.model) & (trials["kernel_size"] == pair.kernel_size)]
        n_alpha = max((len(a) for a in group["alpha"] if isinstance(a, list)), default=1)
        if n_alpha >= 3:
            names = ", ".join(f"α{i}" for i in range(1, n_alpha + 1))
            out.append(Plot(f"alpha_{tag}.png", "search", f"{label}: {sweep['metric']} against each of {names}",
                            f"Every trial of the search, one panel per free coefficient of the density "
                            f"α = {density_label(n_alpha)} (rows: seeds): filled, completed; hollow, stopped by ASHA "
                            "(its value at the rung where it stopped); dashed line and star: the α = 1 baseline; ring: "
                            "the chosen α. A point's other coefficients are not shown in its panel: the same trial "
                            "appears once in each.",
                            lambda g=group, p=pair, n=n_alpha: draw_alpha_panels(g, p, sweep, n)))
        elif n_alpha == 2:
            out.append(Plot(f"alpha_{tag}.png", "search", f"{label}: {sweep['metric']} over (α1, α2)",
                            "Every trial of the search in the (α1, α2) plane, coloured by its value; filled: completed, "
                            "small and grey-edged: stopped by ASHA (its value at the rung where it stopped), star: the "
                            "α = 1 baseline, ring: the chosen α.",
                            lambda g=group, p=pair: draw_alpha_map(g, p, sweep)))
        else:
            out.append(Plot(f"alpha_{tag}.png", "search", f"{label}: {sweep['metric']} against α",
                            "Every trial of the search: filled, completed; hollow, stopped by ASHA (its value at the rung "
                            "where it stopped); ×, failed. Star and dashed line: the α = 1 baseline of each seed. Ring: "
                            "the chosen α.",
                            lambda g=group, p=pair: draw_alpha_line(g, p, sweep)))
        out.append(Plot(f"curves_{tag}.png", "search", f"{label}: learning curves",
                        "Validation metric and training loss per epoch of every trial; the baseline in black, the chosen "
                        "α in orange, trials stopped by ASHA in grey ending with ×.",
                        lambda g=group, p=pair: draw_curves(g, p, frames, sweep)))
        out.append(Plot(f"asha_{tag}.png", "search", f"{label}: where ASHA stopped each trial",
                        "Epochs each trial ran, by α; dashed lines: the rungs where trials were stopped (ASHA compares "
                        "trials there), solid: the epoch budget. Value at the end of each bar: its last reported metric.",
                        lambda g=group, p=pair: draw_asha(g, p, sweep)))
        if sweep["task"] == "classification" and "test_confusion_matrix" in frames.trials.columns:
            out.append(Plot(f"confusion_{tag}.png", "paper", f"{label}: confusion matrices (Fig. 1)",
                            "Test-set confusion matrices, rows normalised (recall per class): standard (α = 1), weighted "
                            "(the chosen α), and their difference; summed over the chosen α's seeds.",
                            lambda g=group, p=pair: draw_confusion(g, p)))
        if sweep["task"] == "denoising":
            out.append(Plot(f"examples_{tag}.png", "paper", f"{label}: denoised test tiles (Figs. 2–3)",
                            "Test tiles: noisy input, the α = 1 model, the chosen-α model (best epoch's weights, from "
                            "their checkpoints) and the clean image, with each output's PSNR against the clean tile.",
                            lambda g=group, p=pair: draw_examples(g, p, frames)))
        if pair.confirm is not None and pair.confirm.comparison is not None:
            out.append(Plot(f"confirm_{tag}.png", "confirmation", f"{label}: confirmation on fresh seeds",
                            "Per fresh seed, the chosen α minus α = 1 on the test metric; line and band: the mean "
                            "difference and its 95% bootstrap CI.",
                            lambda p=pair: draw_confirmation(p)))
        if pair.confirm is not None and pair.confirm.comparison is not None and pair.confirm.controls:
            out.append(Plot(f"arms_{tag}.png", "confirmation", f"{label}: where the gain comes from",
                            "Each arm minus α = 1 on the same fresh seed (dots), its mean and 95% bootstrap CI (bar): "
                            "the chosen α, then each control — α = 1 with one part of α's density (init-scale: "
                            "initial weights × √mean(Φ²); init-shape: × Φ; lr-shape: per-position learning rate). "
                            "The label under each control: the share of α's gain it reproduces.",
                            lambda p=pair: draw_arms(p)))
    return out


# ---------------------------------------------------------------- the search


def _values(trials: pd.DataFrame, metric: str) -> pd.Series:
    if metric not in trials.columns:
        return pd.Series(np.nan, index=trials.index)
    return pd.to_numeric(trials[metric], errors="coerce").astype(float)


def _seed_colors(trials: pd.DataFrame) -> dict[int, str]:
    seeds = sorted(int(s) for s in trials["seed"].dropna().unique())
    if len(seeds) == 1:
        return {seeds[0]: TRIAL_COLOR}
    return {s: SEED_COLORS[i % len(SEED_COLORS)] for i, s in enumerate(seeds)}


def _search_range(sweep: dict, kernel: int) -> list[tuple[float, float]] | None:
    ranges = ((sweep.get("spec") or {}).get("kernels") or {}).get(str(kernel))
    try:
        return [(float(lo), float(hi)) for lo, hi in ranges]
    except (TypeError, ValueError):
        return None


def draw_alpha_line(trials: pd.DataFrame, pair: Pair, sweep: dict) -> Figure:
    """Metric against α1 (one free coefficient)."""
    metric, mode = sweep["metric"], sweep["mode"]
    values = _values(trials, metric)
    colors = _seed_colors(trials)
    fig = Figure(figsize=(7.5, 4.6))
    ax = fig.add_subplot()
    is_baseline = trials["baseline"].fillna(False).astype(bool)
    for seed, color in colors.items():
        mine = trials["seed"] == seed
        done = mine & ~is_baseline & (trials["status"] == TrialStatus.COMPLETED)
        stopped = mine & ~is_baseline & (trials["status"] == TrialStatus.STOPPED)
        ax.scatter(trials.loc[done, "alpha_1"], values[done], s=46, color=color, zorder=3, edgecolor="white",
                   linewidth=0.6)
        ax.scatter(trials.loc[stopped, "alpha_1"], values[stopped], s=46, facecolor="none", edgecolor=color,
                   linewidth=1.3, zorder=3)
        for _, row in trials[stopped].iterrows():
            if pd.notna(values[row.name]) and pd.notna(row["epochs_run"]):
                ax.annotate(f"epoch {int(row['epochs_run'])}", (row["alpha_1"], values[row.name]), xytext=(6, -3),
                            textcoords="offset points", fontsize=7, color="#666666")
        base = trials[mine & is_baseline & (trials["status"] == TrialStatus.COMPLETED)]
        for _, row in base.iterrows():
            ax.axhline(values[row.name], color=BASELINE_COLOR if len(colors) == 1 else color, linestyle="--",
                       linewidth=1, zorder=1)
            ax.scatter([1.0], [values[row.name]], marker="*", s=220, color=BASELINE_COLOR, zorder=4,
                       edgecolor="white", linewidth=0.6)
    failed = trials[trials["status"] == TrialStatus.FAILED]
    if not failed.empty:
        ax.scatter(failed["alpha_1"], np.full(len(failed), 0.03), marker="x", color=FAILED_COLOR, s=50, zorder=4,
                   transform=blended_transform_factory(ax.transData, ax.transAxes), clip_on=False)
    _mark_best(ax, trials, pair, values, x="alpha_1")
    rng = _search_range(sweep, pair.kernel_size)
    if rng:
        lo, hi = rng[0]
        ax.axvspan(lo, hi, color="#f4f4f4", zorder=0)
        pad = 0.04 * (hi - lo)
        ax.set_xlim(min(lo, 1.0) - pad, max(hi, 1.0) + pad)
    ax.set_xlabel(f"α1 (outer coefficient of the density α = {density_label(1)})")
    ax.set_ylabel(f"{metric} ({'higher' if mode == 'max' else 'lower'} is better)")
    ax.set_title(_title(pair, "search"), fontsize=11)
    ax.grid(alpha=0.3)
    generic = TRIAL_COLOR if len(colors) == 1 else STOPPED_COLOR
    handles = [
        Line2D([], [], marker="o", linestyle="", color=generic, label="completed"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color=generic, label="stopped by ASHA"),
        Line2D([], [], marker="*", linestyle="--", color=BASELINE_COLOR, markersize=12, label="α = 1 baseline"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor=BEST_COLOR,
               markersize=14, markeredgewidth=2, label="chosen α"),
    ]
    if not failed.empty:
        handles.append(Line2D([], [], marker="x", linestyle="", color=FAILED_COLOR, label="failed"))
    if rng:
        handles.append(Patch(facecolor="#f4f4f4", edgecolor="#cccccc", label="search range"))
    if len(colors) > 1:
        handles += [Line2D([], [], marker="o", linestyle="", color=c, label=f"seed {s}") for s, c in colors.items()]
    ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.9)
    return fig


def _mark_best(ax, trials: pd.DataFrame, pair: Pair, values: pd.Series, x: str, y: str | None = None) -> None:
    if pair.choice is None:
        return
    chosen = trials[trials["trial_id"].isin(pair.choice.trials)]
    ys = chosen[y] if y else values[chosen.index]
    ax.scatter(chosen[x], ys, s=260, facecolor="none", edgecolor=BEST_COLOR, linewidth=2.2, zorder=5)


def _title(pair: Pair, what: str) -> str:
    head = f"{pair.model}, {pair.kernel_size} × {pair.kernel_size}"
    if pair.choice is None:
        return f"{head}: no completed trial besides α = 1 yet"
    if pair.choice.beats_baseline is False:
        verdict = "unconfirmed" if pair.confirm is None else pair.confirm.verdict
        return f"{head}: {pair.choice.note}\nconfirmation: {verdict}"
    text = f"{head}: chosen α = {format_alpha(pair.choice.alpha)}"
    if pair.choice.baselines is not None:
        diff = np.mean(np.subtract(pair.choice.values, pair.choice.baselines))
        n = len(pair.choice.seeds)
        text += f" ({diff:+.4g} vs α = 1 on {n} search seed{'s' if n > 1 else ''})"
    verdict = "unconfirmed" if pair.confirm is None else pair.confirm.verdict
    return f"{text}\nconfirmation: {verdict}"


def draw_alpha_map(trials: pd.DataFrame, pair: Pair, sweep: dict) -> Figure:
    """Metric over (α1, α2): one panel per seed, colour = value (brighter = better)."""
    metric, mode = sweep["metric"], sweep["mode"]
    values = _values(trials, metric)
    trials = trials.assign(alpha_2=trials["alpha_2"].fillna(1.0), value=values)
    seeds = sorted(int(s) for s in trials["seed"].dropna().unique())
    ncols = min(len(seeds), 3)
    nrows = -(-len(seeds) // ncols)
    fig = Figure(figsize=(5.2 * ncols + 0.8, 4.6 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    finite = values.dropna()
    vmin, vmax = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    cmap = "viridis" if mode == "max" else "viridis_r"
    rng = _search_range(sweep, pair.kernel_size)
    scatter = None
    for ax, seed in zip(axes, seeds):
        mine = trials[trials["seed"] == seed]
        is_baseline = mine["baseline"].fillna(False).astype(bool)
        if rng and len(rng) >= 2:
            (x0, x1), (y0, y1) = rng[0], rng[1]
            ax.add_patch(_rectangle(x0, y0, x1, y1))
            ax.set_xlim(min(x0, 1) - 0.05 * (x1 - x0), max(x1, 1) + 0.05 * (x1 - x0))
            ax.set_ylim(min(y0, 1) - 0.05 * (y1 - y0), max(y1, 1) + 0.05 * (y1 - y0))
        done = mine[~is_baseline & (mine["status"] == TrialStatus.COMPLETED)]
        stopped = mine[~is_baseline & (mine["status"] == TrialStatus.STOPPED)]
        scatter = ax.scatter(done["alpha_1"], done["alpha_2"], c=done["value"], cmap=cmap, vmin=vmin, vmax=vmax,
                             s=170, marker="s", edgecolor="white", linewidth=0.8, zorder=3)
        ax.scatter(stopped["alpha_1"], stopped["alpha_2"], c=stopped["value"], cmap=cmap, vmin=vmin, vmax=vmax,
                   s=60, edgecolor=STOPPED_COLOR, linewidth=1.2, zorder=3)
        base = mine[is_baseline & (mine["status"] == TrialStatus.COMPLETED)]
        ax.scatter(base["alpha_1"], base["alpha_2"], c=base["value"], cmap=cmap, vmin=vmin, vmax=vmax,
                   marker="*", s=380, edgecolor=BASELINE_COLOR, linewidth=1.0, zorder=4)
        failed = mine[mine["status"] == TrialStatus.FAILED]
        ax.scatter(failed["alpha_1"], failed["alpha_2"], marker="x", color=FAILED_COLOR, s=60, zorder=4)
        for _, row in pd.concat([done, base]).iterrows():
            ax.annotate(f"{row['value']:.4g}", (row["alpha_1"], row["alpha_2"]), xytext=(9, 7),
                        textcoords="offset points", ha="left", fontsize=7, color="#333333")
        if pair.choice is not None:
            chosen = mine[mine["trial_id"].isin(pair.choice.trials)]
            ax.scatter(chosen["alpha_1"], chosen["alpha_2"], s=520, facecolor="none", edgecolor=BEST_COLOR,
                       linewidth=2.2, zorder=5)
        ax.set_xlabel("α1 (outermost coefficient)")
        ax.set_ylabel("α2")
        ax.set_title(f"seed {seed}", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[len(seeds):]:
        ax.set_visible(False)
    axes[0].legend(handles=[
        Line2D([], [], marker="s", linestyle="", color="#777777", markersize=9, label="completed"),
        Line2D([], [], marker="o", linestyle="", color="#bbbbbb", markeredgecolor=STOPPED_COLOR, label="stopped by ASHA"),
        Line2D([], [], marker="*", linestyle="", color="#777777", markeredgecolor=BASELINE_COLOR, markersize=13,
               label="α = 1 baseline"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor=BEST_COLOR, markersize=13,
               markeredgewidth=2, label="chosen α"),
    ], fontsize=8, loc="lower right", framealpha=0.9)
    if scatter is not None:
        fig.colorbar(scatter, ax=axes[: len(seeds)].tolist(), label=f"{metric} ({'higher' if mode == 'max' else 'lower'}"
                     " is better)", shrink=0.9)
    fig.suptitle(_title(pair, "search") + f"  ·  density α = {density_label(2)}", fontsize=11)
    return fig


def draw_alpha_panels(trials: pd.DataFrame, pair: Pair, sweep: dict, n: int) -> Figure:
    """Metric against each free coefficient α1 … αn (7×7 and larger): one column per coefficient, one row per
    seed; every trial appears once in each panel, at its value of that coefficient."""
    metric, mode = sweep["metric"], sweep["mode"]
    values = _values(trials, metric)
    alpha = trials["alpha"].map(lambda a: list(a) + [np.nan] * (n - len(a)) if isinstance(a, list) else [np.nan] * n)
    coefficient = pd.DataFrame(alpha.tolist(), index=trials.index, columns=[f"α{i}" for i in range(1, n + 1)])
    seeds = sorted(int(s) for s in trials["seed"].dropna().unique()) or [0]
    fig = Figure(figsize=(3.8 * n + 0.6, 3.4 * len(seeds) + 0.9), layout="constrained")
    axes = fig.subplots(len(seeds), n, squeeze=False, sharey="row")
    rng = _search_range(sweep, pair.kernel_size)
    is_baseline = trials["baseline"].fillna(False).astype(bool)
    chosen = set(pair.choice.trials) if pair.choice else set()
    for row, seed in enumerate(seeds):
        mine = trials["seed"] == seed
        done = mine & ~is_baseline & (trials["status"] == TrialStatus.COMPLETED)
        stopped = mine & ~is_baseline & (trials["status"] == TrialStatus.STOPPED)
        base = mine & is_baseline & (trials["status"] == TrialStatus.COMPLETED)
        best = mine & trials["trial_id"].isin(chosen)
        for j, name in enumerate(coefficient.columns):
            ax = axes[row, j]
            x = coefficient[name]
            if rng and j < len(rng):
                lo, hi = rng[j]
                ax.axvspan(lo, hi, color="#f4f4f4", zorder=0)
                pad = 0.04 * (hi - lo)
                ax.set_xlim(min(lo, 1.0) - pad, max(hi, 1.0) + pad)
            ax.scatter(x[done], values[done], s=40, color=TRIAL_COLOR, edgecolor="white", linewidth=0.6, zorder=3)
            ax.scatter(x[stopped], values[stopped], s=40, facecolor="none", edgecolor=TRIAL_COLOR, linewidth=1.2,
                       zorder=3)
            for value in values[base].dropna():
                ax.axhline(value, color=BASELINE_COLOR, linestyle="--", linewidth=1, zorder=1)
                ax.scatter([1.0], [value], marker="*", s=180, color=BASELINE_COLOR, edgecolor="white", zorder=4)
            ax.scatter(x[best], values[best], s=220, facecolor="none", edgecolor=BEST_COLOR, linewidth=2, zorder=5)
            ax.set_xlabel(f"{name}" + (" (outermost)" if j == 0 else " (innermost)" if j == n - 1 else ""))
            if j == 0:
                ax.set_ylabel(f"{metric}, seed {seed}")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(handles=[
        Line2D([], [], marker="o", linestyle="", color=TRIAL_COLOR, label="completed"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color=TRIAL_COLOR, label="stopped by ASHA"),
        Line2D([], [], marker="*", linestyle="--", color=BASELINE_COLOR, markersize=11, label="α = 1 baseline"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor=BEST_COLOR, markersize=12,
               markeredgewidth=2, label="chosen α"),
    ], fontsize=7, loc="best", framealpha=0.9)
    fig.suptitle(_title(pair, "search") + f"  ·  density α = {density_label(n)} "
                 f"({'higher' if mode == 'max' else 'lower'} is better)", fontsize=11)
    return fig


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> Rectangle:
    return Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor="#f4f4f4", edgecolor="#cccccc", zorder=0)


def draw_curves(trials: pd.DataFrame, pair: Pair, frames: Frames, sweep: dict) -> Figure:
    """Validation metric and training loss per epoch, every trial of the group."""
    metric = sweep["metric"]
    epochs = frames.epochs[frames.epochs["trial_id"].isin(trials["trial_id"])]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    chosen = set(pair.choice.trials) if pair.choice else set()
    order = sorted(trials.itertuples(), key=lambda t: (bool(t.baseline) or t.trial_id in chosen))
    for t in order:
        mine = epochs[epochs["trial_id"] == t.trial_id].sort_values("epoch")
        if mine.empty:
            continue
        if t.baseline:
            style = dict(color=BASELINE_COLOR, linewidth=2.2, zorder=4)
        elif t.trial_id in chosen:
            style = dict(color=BEST_COLOR, linewidth=2.2, zorder=5)
        elif t.status == TrialStatus.COMPLETED:
            style = dict(color=TRIAL_COLOR, linewidth=1.0, alpha=0.7, zorder=3)
        else:
            style = dict(color=STOPPED_COLOR, linewidth=1.0, alpha=0.8, zorder=2)
        for ax, column in ((left, metric), (right, "train_loss")):
            if column not in mine.columns:
                continue
            y = pd.to_numeric(mine[column], errors="coerce")
            ax.plot(mine["epoch"], y, **style)
            if t.status in (TrialStatus.STOPPED, TrialStatus.FAILED) and y.notna().any():
                ax.scatter(mine["epoch"].iloc[-1], y.iloc[-1], marker="x", s=30,
                           color=FAILED_COLOR if t.status == TrialStatus.FAILED else STOPPED_COLOR, zorder=6)
    left.set_ylabel(metric)
    right.set_ylabel("training loss")
    loss = pd.to_numeric(epochs.get("train_loss", pd.Series(dtype=float)), errors="coerce").dropna()
    if len(loss) and (loss > 0).all() and loss.max() / loss.min() > 20:  # spans more than a decade or so
        right.set_yscale("log")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles = [Line2D([], [], color=BASELINE_COLOR, linewidth=2.2, label="α = 1 baseline"),
               Line2D([], [], color=BEST_COLOR, linewidth=2.2, label="chosen α"),
               Line2D([], [], color=TRIAL_COLOR, label="other completed"),
               Line2D([], [], color=STOPPED_COLOR, marker="x", label="stopped by ASHA")]
    left.legend(handles=handles, fontsize=8)
    fig.suptitle(_title(pair, "curves"), fontsize=11)
    return fig


def draw_asha(trials: pd.DataFrame, pair: Pair, sweep: dict) -> Figure:
    """Horizontal bars: epochs run per trial, one panel per seed; the rungs are where stopped trials stopped."""
    metric = sweep["metric"]
    values = _values(trials, metric)
    trials = trials.assign(value=values)
    seeds = sorted(int(s) for s in trials["seed"].dropna().unique())
    budget = ((sweep.get("spec") or {}).get("training") or {}).get("epochs")
    rungs = sorted({int(e) for e in trials.loc[trials["status"] == TrialStatus.STOPPED, "epochs_run"].dropna()})
    n = max(len(trials[trials["seed"] == s]) for s in seeds)
    rows = -(-len(seeds) // 2)
    fig = Figure(figsize=(7.5 * min(len(seeds), 2), max(2.8, 1.4 + 0.34 * n) * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, min(len(seeds), 2), squeeze=False)).ravel()
    for ax, seed in zip(axes, seeds):
        mine = trials[trials["seed"] == seed].copy()
        mine["key"] = mine["alpha"].map(lambda a: tuple(a or ()))
        mine = mine.sort_values("key")
        y = np.arange(len(mine))
        colors = [STATUS_COLORS.get(s, STOPPED_COLOR) for s in mine["status"]]
        bars = ax.barh(y, mine["epochs_run"].fillna(0).astype(float), color=colors, height=0.7, zorder=2)
        chosen = set(pair.choice.trials) if pair.choice else set()
        for bar, row in zip(bars, mine.itertuples()):
            if row.baseline:
                bar.set_color(BASELINE_COLOR)
            if row.trial_id in chosen:
                bar.set_edgecolor(BEST_COLOR)
                bar.set_linewidth(2.5)
            if pd.notna(row.value):
                ax.annotate(f"{row.value:.4g}", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                            xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        labels = [("α = 1  " if b else "") + format_alpha(a) for a, b in zip(mine["alpha"], mine["baseline"])]
        ax.set_yticks(y, labels, fontsize=8)
        for rung in rungs:
            ax.axvline(rung, color="#555555", linestyle="--", linewidth=1, zorder=3)
        if budget:
            ax.axvline(budget, color="#555555", linewidth=1.2, zorder=3)
            ax.set_xlim(0, budget * 1.15)
        ax.set_xlabel("epochs run")
        ax.set_title(f"seed {seed}" + (f" · rungs at epoch {', '.join(map(str, rungs))}" if rungs else ""),
                     fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(seeds):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, linewidth=6, label=s) for s, c in STATUS_COLORS.items()
               if (trials["status"] == s).any()]
    handles += [Line2D([], [], color=BASELINE_COLOR, linewidth=6, label="α = 1 baseline"),
                Line2D([], [], color=BEST_COLOR, linewidth=2.5, label="chosen α (outline)")]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.suptitle(f"{pair.model}, {pair.kernel_size} × {pair.kernel_size}: ASHA's decisions · {metric}", fontsize=11)
    return fig


# ---------------------------------------------------------------- the paper's figures


def _pooled_confusion(trials: pd.DataFrame, ids: list[str]) -> np.ndarray | None:
    rows = trials[trials["trial_id"].isin(ids)]["test_confusion_matrix"]
    matrices = [np.asarray(m, dtype=float) for m in rows if isinstance(m, list) and m]
    return np.sum(matrices, axis=0) if matrices else None


def draw_confusion(trials: pd.DataFrame, pair: Pair) -> Figure:
    """Fig. 1: standard | weighted | weighted − standard, rows normalised to recall."""
    _require_weighted(pair)
    standard = _pooled_confusion(trials, pair.baseline_trials)
    weighted = _pooled_confusion(trials, pair.choice.trials) if pair.choice else None
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    axes = fig.subplots(1, 3)
    normed = {}
    for ax, name, matrix in ((axes[0], "standard (α = 1)", standard),
                             (axes[1], f"weighted (α = {format_alpha(pair.choice.alpha) if pair.choice else '-'})",
                              weighted)):
        if matrix is None:
            ax.text(0.5, 0.5, "no confusion matrix stored", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        recall = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        normed[name] = recall
        image = ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
        accuracy = np.trace(matrix) / max(matrix.sum(), 1)
        ax.set_title(f"{name}\ntest accuracy {format_metric('accuracy', accuracy)}", fontsize=10)
        _label_matrix(ax, recall, matrix)
        fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    if standard is not None and weighted is not None and standard.shape == weighted.shape:
        diff = list(normed.values())[1] - list(normed.values())[0]
        limit = max(float(np.abs(diff).max()), 1e-6)
        image = axes[2].imshow(diff, cmap="RdBu", norm=TwoSlopeNorm(0, -limit, limit))
        axes[2].set_title("weighted − standard\n(blue: weighted predicts this cell more often)", fontsize=10)
        _label_matrix(axes[2], diff, None)
        fig.colorbar(image, ax=axes[2], shrink=0.8)
    else:
        axes[2].set_axis_off()
    seeds = len(pair.choice.seeds) if pair.choice else len(pair.baseline_trials)
    fig.suptitle(f"{pair.model}: confusion matrices on the test set (Fig. 1), summed over {seeds} seed"
                 f"{'s' if seeds != 1 else ''}", fontsize=11)
    return fig


def _require_weighted(pair: Pair) -> None:
    if pair.choice is not None and pair.choice.beats_baseline is False:
        raise NotDrawn(f"{pair.choice.note}, so there is no weighted model to set beside α = 1")


def _label_matrix(ax, shown: np.ndarray, counts: np.ndarray | None) -> None:
    n = shown.shape[0]
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n > 12:
        return
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    for i in range(n):
        for j in range(n):
            if counts is not None and counts[i, j] == 0:
                continue
            text = f"{int(counts[i, j])}" if counts is not None else (f"{shown[i, j]:+.2f}" if shown[i, j] else "")
            dark = abs(shown[i, j]) > (0.6 if counts is not None else 0.6 * np.abs(shown).max())
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "#222222")


def _load_model(checkpoint: str | None):
    """The model of a trial's checkpoint (its best epoch's weights) and its test split, on the CPU."""
    from wconv.checkpoint import load_checkpoint
    from wconv.train import CHECKPOINT, TrialConfig, prepare_trial

    path = Path(checkpoint or "") / CHECKPOINT
    if not checkpoint or not path.is_file():
        raise CheckpointMissing(f"checkpoint {path} not found")
    saved = load_checkpoint(path, map_location="cpu")
    setup = prepare_trial(TrialConfig.from_dict(saved["config"]), "cpu")
    setup.model.load_state_dict(saved["model"])
    return setup.model.eval(), setup.data.test


def draw_examples(trials: pd.DataFrame, pair: Pair, frames: Frames, tiles: int = 4) -> Figure:
    """Figs. 2–3: noisy / α = 1 / chosen α / clean on test tiles, rendered from the two trials' checkpoints."""
    import torch
    from piq import psnr

    _require_weighted(pair)
    by_id = trials.set_index("trial_id")
    if pair.choice is None or not pair.baseline_trials:
        raise CheckpointMissing("no completed chosen-α and baseline trial pair to render")
    seed = pair.choice.seeds[0]
    chosen = pair.choice.trials[0]
    baseline = next((t for t in pair.baseline_trials if by_id.loc[t, "seed"] == seed), pair.baseline_trials[0])
    base_model, test = _load_model(by_id.loc[baseline, "checkpoint"])
    best_model, _ = _load_model(by_id.loc[chosen, "checkpoint"])
    noisy, clean = test.noisy.cpu(), test.clean.cpu().float() / 255
    # Tiles picked by the clean image's texture only (never by how either model does): evenly spaced ranks of
    # the per-tile standard deviation, from the median to the most textured.
    texture = clean.flatten(1).std(dim=1).numpy()
    ranked = np.argsort(texture)
    picks = ranked[np.linspace(len(ranked) // 2, len(ranked) - 1, min(tiles, len(ranked))).round().astype(int)]
    with torch.no_grad():
        outputs = {"α = 1": base_model(noisy[picks]).clamp(0, 1),
                   f"α = {format_alpha(pair.choice.alpha)}": best_model(noisy[picks]).clamp(0, 1)}
    target = clean[picks]
    images = [("noisy input", noisy[picks].clamp(0, 1)), *outputs.items(), ("clean", target)]
    errors = {name: (out - target).abs().mean(dim=1) for name, out in outputs.items()}
    top = max(float(torch.quantile(e.flatten(), 0.99)) for e in errors.values()) or 1.0
    ncols = len(images) + len(errors)
    fig = Figure(figsize=(2.2 * ncols, 2.35 * len(picks) + 0.9), layout="constrained")
    axes = fig.subplots(len(picks), ncols, squeeze=False)
    for j, (name, batch) in enumerate(images):
        scores = psnr(batch, target, data_range=1.0, reduction="none") if name != "clean" else None
        for i in range(len(picks)):
            axes[i, j].imshow(batch[i].permute(1, 2, 0).numpy(), interpolation="nearest")
            score = "" if scores is None else f"PSNR {float(scores[i]):.2f} dB"
            axes[i, j].set_title(f"{name}\n{score}" if i == 0 else score, fontsize=9)
    for j, (name, error) in enumerate(errors.items(), start=len(images)):
        for i in range(len(picks)):
            shown = axes[i, j].imshow(error[i].numpy(), cmap="magma", vmin=0, vmax=top, interpolation="nearest")
            axes[i, j].set_title(f"|error|, {name}" if i == 0 else "", fontsize=9)
    fig.colorbar(shown, ax=axes[:, len(images):].ravel().tolist(), shrink=0.6, label="mean |output − clean|")
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    sigma = getattr(test, "sigma", None)
    fig.suptitle(f"{pair.model}, {pair.kernel_size} × {pair.kernel_size}: test tiles ranked by texture, seed {seed}"
                 + (f", noise σ = {sigma:g}" if sigma is not None else ""), fontsize=11)
    return fig


# ---------------------------------------------------------------- confirmation


def draw_confirmation(pair: Pair) -> Figure:
    """Paired differences per fresh seed with the mean and its CI (and the init-scale control when run)."""
    c = pair.confirm
    cmp = c.comparison
    table = c.values.dropna(subset=[Arm.ALPHA, Arm.BASELINE])
    fig = Figure(figsize=(7.5, 4.4), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(table))
    diff = (table[Arm.ALPHA] - table[Arm.BASELINE]).to_numpy()
    ax.axhline(0, color=BASELINE_COLOR, linewidth=1)
    ax.axhspan(cmp.ci_low, cmp.ci_high, color=BEST_COLOR, alpha=0.15, label="95% CI of the mean (bootstrap)")
    ax.axhline(cmp.difference, color=BEST_COLOR, linewidth=1.8, label=f"mean Δ = {cmp.difference:+.4g}")
    ax.scatter(x, diff, color=BEST_COLOR, s=60, zorder=4, edgecolor="white",
               label=f"α = {format_alpha(c.alpha)} − (α = 1), per seed")
    ax.set_xticks(x, [f"seed {s}" for s in table.index])
    ax.set_ylabel(f"Δ {c.metric} ({'higher' if c.mode == 'max' else 'lower'} is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    title = (f"{pair.model}, {pair.kernel_size} × {pair.kernel_size}: {cmp.verdict} — Δ {cmp.difference:+.4g} "
             f"[{cmp.ci_low:+.4g}, {cmp.ci_high:+.4g}], paired t p = {cmp.p_value:.3g}, n = {cmp.n}")
    ax.set_title(title, fontsize=10)
    return fig


def draw_arms(pair: Pair) -> Figure:
    """The arms' paired differences against α = 1 side by side: the chosen α and each control that ran."""
    c = pair.confirm
    arms = [Arm.ALPHA, *(a for a in CONTROLS if a in c.controls)]
    fig = Figure(figsize=(1.9 * len(arms) + 2.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.axhline(0, color=BASELINE_COLOR, linewidth=1)
    labels = []
    for i, arm in enumerate(arms):
        cmp = c.comparison if arm == Arm.ALPHA else c.controls[arm].versus_baseline
        table = c.values[[Arm.ALPHA, Arm.BASELINE, arm]].dropna() if arm != Arm.ALPHA else c.values[
            [Arm.ALPHA, Arm.BASELINE]].dropna()
        diff = (table[arm] - table[Arm.BASELINE]).to_numpy()
        color = BEST_COLOR if arm == Arm.ALPHA else CONTROL_COLOR
        jitter = np.linspace(-0.12, 0.12, len(diff)) if len(diff) > 1 else np.zeros(1)
        ax.scatter(i + jitter, diff, color=color, s=30, zorder=4, edgecolor="white", alpha=0.8)
        ax.errorbar(i, cmp.difference, yerr=[[cmp.difference - cmp.ci_low], [cmp.ci_high - cmp.difference]],
                    fmt="_", markersize=22, color="black", capsize=6, linewidth=1.5, zorder=5)
        share = None if arm == Arm.ALPHA else c.controls[arm].explained
        labels.append(f"α = {format_alpha(c.alpha)}\n{cmp.verdict}" if arm == Arm.ALPHA else
                      f"{arm}\n{cmp.verdict}" + ("" if share is None else f", share {share:.2f}"))
    ax.set_xticks(range(len(arms)), labels, fontsize=8)
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.set_ylabel(f"Δ {c.metric} against α = 1 ({'higher' if c.mode == 'max' else 'lower'} is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{pair.model}, {pair.kernel_size} × {pair.kernel_size}: {decomposition_line(c)}", fontsize=9,
                 wrap=True)
    return fig

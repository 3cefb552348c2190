"""The paper's tables from a sweep's results: Table 3 (classification), Table 5 (denoising), Tables 4/6
(seconds per epoch), plus the confirmation the paper does not have.

Each table keeps its raw numbers (``data``, written as CSV, full precision, so they can be checked against
the database) apart from what is shown (``shown``: rounded text, written as Markdown, LaTeX and HTML by
pandas' own writers) and which shown cells are the best (``bold``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.frames import Frames
from analysis.arms import CONTROLS, DESCRIPTIONS, FIELDS, Arm
from analysis.query import (AlphaChoice, Confirmation, choose_alpha, confirmation, decomposition_line, format_alpha,
                            search_trials)
from analysis.stats import UNCONFIRMED
from wconv.metrics import METRIC_MODES, TASK_METRICS
from wconv.status import TrialStatus

# How the paper prints each test metric: Table 3 accuracy in %, the rest with 2 or 3 decimals.
_METRIC_HEADERS = {"accuracy": "Accuracy", "f1": "F1-score", "nrmse": "NRMSE", "psnr": "PSNR", "ssim": "SSIM",
                   "fsim": "FSIM", "uiq": "UIQ"}
_DENOISING_ORDER = ("nrmse", "psnr", "ssim", "fsim", "uiq")  # Table 5's column order
_LATEX_SYMBOLS = {"α": r"$\alpha$", "±": r"$\pm$", "×": r"$\times$", "Δ": r"$\Delta$", "≥": r"$\geq$"}


def format_metric(metric: str, value: float) -> str:
    """A test metric as the paper prints it: ``82.45%`` accuracy, ``20.17`` PSNR, ``0.735`` otherwise."""
    if metric == "accuracy":
        return f"{100 * value:.2f}%"
    if metric == "psnr":
        return f"{value:.2f}"
    return f"{value:.3f}"


@dataclass(frozen=True)
class Table:
    """One table of the report, in the forms it is written."""

    name: str
    """File stem, e.g. ``table3_classification``."""
    caption: str
    data: pd.DataFrame
    shown: pd.DataFrame
    bold: pd.DataFrame
    """Same shape as ``shown``: True where the cell is the best of its model (or kernel size)."""

    def csv(self) -> str:
        return self.data.to_csv(index=False, lineterminator="\n")

    def markdown(self) -> str:
        marked = self.shown.where(~self.bold, "**" + self.shown + "**")
        return f"{self.caption}\n\n{marked.to_markdown(index=False, disable_numparse=True)}\n"

    def latex(self) -> str:
        text = self._styled("latex").to_latex(
            convert_css=True, hrules=True, caption=self.caption, label=f"tab:{self.name}", position_float="centering"
        )
        return re.sub("|".join(_LATEX_SYMBOLS), lambda m: _LATEX_SYMBOLS[m.group()], text)

    def html(self) -> str:
        return self._styled("html").set_caption(self.caption).to_html(table_attributes='class="results"')

    def _styled(self, escape: str):
        css = self.bold.map(lambda b: "font-weight: bold" if b else "")
        return (self.shown.style.set_uuid(self.name).hide(axis="index").format(escape=escape)
                .format_index(escape=escape, axis=1).apply(lambda _: css, axis=None))


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _std(values: list[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def _shown_value(metric: str, mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    text = format_metric(metric, mean)
    return text if std is None else f"{text} ± {format_metric(metric, std)}"


def _interval(comparison) -> str:
    if comparison is None:
        return "-"
    return f"{comparison.difference:+.4g} [{comparison.ci_low:+.4g}, {comparison.ci_high:+.4g}]"


def _kernel_label(k: int) -> str:
    return f"{k} × {k}"


def _trial_metric(trials: pd.DataFrame, ids: list[str], key: str) -> list[float]:
    if key not in trials.columns or not ids:
        return []
    values = trials.set_index("trial_id").loc[ids, key]
    return [float(v) for v in pd.to_numeric(values, errors="coerce") if np.isfinite(v)]


@dataclass(frozen=True)
class Pair:
    """The two rows a (model, kernel size) gets in Tables 3 and 5: α = 1 and the chosen α, on the same seeds."""

    model: str
    kernel_size: int
    choice: AlphaChoice | None
    baseline_trials: list[str]
    confirm: Confirmation | None


def pairs(frames: Frames, sweep: dict) -> list[Pair]:
    """Per (model, kernel size) of the sweep: the search's chosen α (``query.choose_alpha``) and its baselines."""
    trials = search_trials(frames)
    out = []
    for (model, kernel), group in trials.groupby(["model", "kernel_size"], sort=True):
        choice = choose_alpha(group, sweep["metric"], sweep["mode"])
        if choice is not None and choice.baseline_trials:
            baseline_trials = choice.baseline_trials
        else:  # no chosen α, or no baseline on its seeds: every finished baseline of the group
            done = group[group["baseline"].fillna(False).astype(bool) & (group["status"] == TrialStatus.COMPLETED)]
            baseline_trials = list(done["trial_id"])
        out.append(Pair(model, int(kernel), choice, baseline_trials,
                        confirmation(frames, sweep["name"], model, int(kernel))))
    return out


def results_table(frames: Frames, sweep: dict) -> Table:
    """Table 3 (classification: method, α, accuracy, F1) or Table 5 (denoising: kernel, method, α, NRMSE, PSNR,
    SSIM, FSIM, UIQ): α = 1 and the chosen α per model, test metrics averaged over the chosen α's seeds, the
    best of each pair in bold, the confirmation's verdict and difference with its 95% CI beside the α row."""
    task = sweep["task"]
    metrics = TASK_METRICS[task] if task == "classification" else _DENOISING_ORDER
    trials = frames.trials
    data_rows, shown_rows, bold_rows = [], [], []
    for pair in pairs(frames, sweep):
        # No α beat α = 1: the weighted row stays empty and says so (its choice is α = 1's own trials).
        beaten = pair.choice is not None and pair.choice.beats_baseline is False
        chosen = pair.choice if pair.choice is not None and not beaten else None
        rows = [("standard", [1.0] * len(pair.choice.alpha) if pair.choice else None, pair.baseline_trials)]
        rows.append(("weighted", chosen.alpha if chosen else None, chosen.trials if chosen else []))
        values = {method: {m: _trial_metric(trials, ids, f"test_{m}") for m in metrics} for method, _, ids in rows}
        for method, alpha, ids in rows:
            weighted = method == "weighted"
            verdict = (UNCONFIRMED if pair.confirm is None else pair.confirm.verdict) if weighted else ""
            if weighted and beaten:
                verdict = pair.choice.note
            comparison = pair.confirm.comparison if (weighted and pair.confirm) else None
            data = {"kernel_size": pair.kernel_size, "model": pair.model, "convolution": method,
                    "alpha": format_alpha(alpha) if alpha else None, "seeds": len(ids)}
            shown = {"Kernel": _kernel_label(pair.kernel_size), "Method": pair.model, "Convolution": method,
                     "α": format_alpha(alpha) if alpha else ("none better than α = 1" if weighted and beaten else "-")}
            bold = {key: False for key in shown}
            for m in metrics:
                own, other = values[method][m], values["weighted" if not weighted else "standard"][m]
                data[f"test_{m}"], data[f"test_{m}_std"] = _mean(own), _std(own)
                shown[_METRIC_HEADERS[m]] = _shown_value(m, _mean(own), _std(own))
                bold[_METRIC_HEADERS[m]] = _is_better(_mean(own), _mean(other), METRIC_MODES[m])
            data.update(verdict=verdict, confirm_metric=pair.confirm.metric if weighted and pair.confirm else None,
                        confirm_difference=comparison.difference if comparison else None,
                        confirm_ci_low=comparison.ci_low if comparison else None,
                        confirm_ci_high=comparison.ci_high if comparison else None,
                        confirm_p=comparison.p_value if comparison else None)
            shown.update({"Seeds": str(len(ids)), "Verdict": verdict,
                          "Confirmed Δ [95% CI]": _interval(comparison) if weighted else ""})
            bold.update({"Seeds": False, "Verdict": False, "Confirmed Δ [95% CI]": False})
            data_rows.append(data), shown_rows.append(shown), bold_rows.append(bold)
    if task == "classification":
        number, caption = 3, "Table 3 — classification: test metrics"
        drop = ["Kernel"] if len({r["kernel_size"] for r in data_rows}) <= 1 else []
    else:
        number, caption, drop = 5, "Table 5 — denoising: test metrics", []
    caption += (f" of α = 1 and the best α by {sweep['metric']} ({sweep['mode']}), mean ± std over the chosen "
                "α's seeds; the better of each pair in bold; the verdict and the confirmed difference "
                "(fresh seeds, paired, 95% bootstrap CI) beside the α row.")
    return _table(f"table{number}_{task}", caption, data_rows, shown_rows, bold_rows, drop)


def _is_better(own: float | None, other: float | None, mode: str) -> bool:
    if own is None or other is None:
        return False
    return own >= other if mode == "max" else own <= other


def _table(name: str, caption: str, data: list[dict], shown: list[dict], bold: list[dict], drop=()) -> Table:
    shown_df = pd.DataFrame(shown).drop(columns=list(drop))
    bold_df = pd.DataFrame(bold, dtype=bool).drop(columns=list(drop))
    return Table(name, caption, pd.DataFrame(data), shown_df.astype(str), bold_df)


def seconds_per_epoch(frames: Frames) -> pd.Series:
    """Per search trial (index: trial_id): the median time between consecutive epochs, from the per-epoch
    ``wall_time_s`` (elapsed in the trial): data loading, model building and the first epoch's warm-up left
    out. A trial with one recorded epoch has no such measure (NaN); one with no per-epoch record at all falls
    back to ``wall_time_s / epochs_run``."""
    trials = search_trials(frames)
    per_trial = (trials["wall_time_s"] / trials["epochs_run"].astype(float)).where(trials["epochs_run"] > 0)
    per_trial.index = trials["trial_id"]
    epochs = frames.epochs
    if "wall_time_s" in epochs.columns and not epochs.empty:
        mine = epochs[epochs["trial_id"].isin(trials["trial_id"])].sort_values(["trial_id", "epoch"])
        steps = mine.groupby("trial_id")["wall_time_s"].diff() / mine.groupby("trial_id")["epoch"].diff()
        steady = steps.astype(float).groupby(mine["trial_id"]).median()
        per_trial.loc[steady.index] = steady.to_numpy(dtype=float)
    return per_trial.astype(float)


def timing_table(frames: Frames, sweep: dict) -> Table:
    """Tables 4/6: seconds per epoch of the standard (α = 1) and weighted trials of each model (and kernel size):
    the median over trials of ``seconds_per_epoch``; the faster in bold. Members of fused groups are left out,
    and the caption says how many: a member's time is its whole group's, and its α = 1 member trains as Φ = 1."""
    trials = search_trials(frames).set_index("trial_id")
    fused = trials["group_id"].notna() if "group_id" in trials.columns else pd.Series(False, index=trials.index)
    per_epoch = seconds_per_epoch(frames)
    classification = sweep["task"] == "classification"
    data_rows, shown_rows, bold_rows = [], [], []
    for (model, kernel), group in trials.groupby(["model", "kernel_size"], sort=True):
        group = group[~fused.reindex(group.index)]  # a row for every (model, kernel), timed by its lone trials
        is_baseline = group["baseline"].fillna(False).astype(bool)
        standard = per_epoch.reindex(group.index[is_baseline]).dropna()
        weighted = per_epoch.reindex(group.index[~is_baseline]).dropna()
        s = float(standard.median()) if len(standard) else None
        w = float(weighted.median()) if len(weighted) else None
        data_rows.append({"kernel_size": int(kernel), "model": model, "standard_s": s, "weighted_s": w,
                          "ratio": w / s if s and w is not None else None,
                          "standard_trials": len(standard), "weighted_trials": len(weighted)})
        shown_rows.append({"Kernel size": _kernel_label(int(kernel)), "Method": model,
                           "Standard convolution": "-" if s is None else f"{s:.3g}",
                           "Weighted convolution": "-" if w is None else f"{w:.3g}",
                           "Weighted / standard": "-" if not (s and w is not None) else f"{w / s:.2f}",
                           "Trials (std / w)": f"{len(standard)} / {len(weighted)}"})
        bold_rows.append({"Kernel size": False, "Method": False, "Standard convolution": _is_better(s, w, "min"),
                          "Weighted convolution": _is_better(w, s, "min"), "Weighted / standard": False,
                          "Trials (std / w)": False})
    number = 4 if classification else 6
    drop = ["Kernel size"] if classification and len({r["kernel_size"] for r in data_rows}) <= 1 else []
    caption = (f"Table {number} — training time [seconds] per epoch: median over trials of the time between "
               "consecutive epochs (setup and first-epoch warm-up left out; concurrent trials share the machine)."
               + (f" {int(fused.sum())} trial(s) trained in fused groups are left out: a member's time is its whole "
                  "group's (resources.group_size: 1 times trials one by one)." if fused.any() else ""))
    return _table(f"table{number}_time", caption, data_rows, shown_rows, bold_rows, drop)


def confirmation_table(frames: Frames, sweep: dict) -> Table | None:
    """Per confirmed (model, kernel size): both arms' mean ± std over the fresh seeds, the paired difference with
    its 95% bootstrap CI, the paired t-test's p, the verdict and, for each control that ran (``analysis.arms``),
    its share of the gain and its own paired verdict against α = 1. None when the sweep has no confirmation
    trials."""
    data_rows, shown_rows = [], []
    confirmed = [p.confirm for p in pairs(frames, sweep) if p.confirm is not None]
    ran = [arm for arm in CONTROLS if any(arm in c.values.columns for c in confirmed)]
    for c in confirmed:
        cmp = c.comparison
        metric = c.metric.split("_", 1)[-1]

        def fmt(value: float | None) -> str:
            return "-" if value is None else format_metric(metric, value)

        data_rows.append({
            "kernel_size": c.kernel_size, "model": c.model, "alpha": format_alpha(c.alpha), "metric": c.metric,
            "seeds": len(c.seeds), "planned_seeds": c.planned_seeds,
            "alpha_mean": cmp.mean_a if cmp else None, "alpha_std": cmp.std_a if cmp else None,
            "baseline_mean": cmp.mean_b if cmp else None, "baseline_std": cmp.std_b if cmp else None,
            "difference": cmp.difference if cmp else None, "ci_low": cmp.ci_low if cmp else None,
            "ci_high": cmp.ci_high if cmp else None, "p_value": cmp.p_value if cmp else None, "verdict": c.verdict,
            **{f"{FIELDS[arm]}_{key}": value for arm in CONTROLS for key, value in _control_fields(c, arm).items()},
            "decomposition": decomposition_line(c),
        })  # fmt: skip
        shown_rows.append({
            "Kernel": _kernel_label(c.kernel_size), "Method": c.model, "α": format_alpha(c.alpha),
            "Metric": c.metric, "Seeds": f"{len(c.seeds)} of {c.planned_seeds}",
            "α: mean ± std": f"{fmt(cmp.mean_a)} ± {fmt(cmp.std_a)}" if cmp else "-",
            "α = 1: mean ± std": f"{fmt(cmp.mean_b)} ± {fmt(cmp.std_b)}" if cmp else "-",
            "Δ [95% CI]": _interval(cmp), "p (paired t)": f"{cmp.p_value:.3g}" if cmp else "-",
            "Verdict": c.verdict,
            **{f"{arm} share": _share(c, arm) for arm in ran},
            "Decomposition": decomposition_line(c) or "-",
        })  # fmt: skip
    if not data_rows:
        return None
    bold_rows = [{key: key == "Verdict" and row["Verdict"] == "confirmed" for key in row} for row in shown_rows]
    caption = ("Confirmation — the chosen α against α = 1 retrained on fresh seeds (same seed, same initial weights "
               "and data order), on the test metric; Δ = α − (α = 1) with its 95% percentile-bootstrap CI "
               "(10,000 resamples) and the paired t-test's two-sided p. Confirmed: the CI excludes 0 on the better "
               "side and p < 0.05.")
    if ran:
        caption += (" A control's share: its gain over α = 1 as a share of α's gain, on the seeds all three "
                    "finished (in brackets: the control against α = 1, Δ and verdict). Controls: "
                    + "; ".join(f"{arm}, {DESCRIPTIONS[arm]}" for arm in ran) + ".")
    if {Arm.INIT_SHAPE, Arm.LR_SHAPE} <= set(ran):
        caption += " " + IDENTITY_NOTE + "."
        holds = {c.identity_holds for c in confirmed}
        if holds == {True}:
            caption += " This sweep trained with SGD: the identity is exact here."
        elif holds == {False}:
            caption += f" This sweep trained with {confirmed[0].optimizer}: the identity holds only approximately here."
    return _table("confirmation", caption, data_rows, shown_rows, bold_rows)


IDENTITY_NOTE = ("Under SGD, init-shape and lr-shape together are the weighted convolution exactly (initial weights "
                 "Φ ∘ W₀ and Φ² on the gradient give V = Φ ∘ W at every step, momentum, Nesterov and weight decay "
                 "included); under Adam only approximately (the step scales by Φ, but ε becomes ε/Φ)")


def _control_fields(c: Confirmation, arm: Arm) -> dict:
    share = c.controls.get(arm)
    if share is None:
        return {"explained": None, "difference": None, "ci_low": None, "ci_high": None, "p_value": None,
                "verdict": None, "beyond_verdict": None}
    vs = share.versus_baseline
    return {"explained": share.explained, "difference": vs.difference, "ci_low": vs.ci_low, "ci_high": vs.ci_high,
            "p_value": vs.p_value, "verdict": vs.verdict, "beyond_verdict": share.beyond.verdict}


def _share(c: Confirmation, arm: Arm) -> str:
    share = c.controls.get(arm)
    if share is None:
        return "-"
    vs = share.versus_baseline
    own = f"Δ {vs.difference:+.3g}, {vs.verdict}"
    return f"{share.explained:.2f} ({own})" if share.explained is not None else f"- ({own})"

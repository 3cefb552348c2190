"""Questions asked of the results store: which α did best in each cell, and by how much it beat α = 1."""

from __future__ import annotations

import csv
import io
import json
import math
from numbers import Number
from typing import Any, Sequence

import pandas as pd

from analysis.store import Store

BEST_ALPHA_COLUMNS = [
    "sweep", "cell", "model", "kernel_size", "seed", "metric", "mode",
    "best_alpha", "best_value", "best_trial", "other_metrics",
    "baseline_value", "difference", "improvement",
    "n_trials", "n_completed", "n_stopped", "n_failed", "n_running",
]  # fmt: skip

# The compact view `format_table(..., "table")` shows of a best_alpha frame; json/csv carry every column.
_TABLE_COLUMNS = [
    "sweep", "cell", "metric", "mode", "best_alpha", "best_value", "baseline_value", "improvement",
    "n_completed", "n_stopped", "n_failed", "n_trials",
]  # fmt: skip
_TABLE_HEADERS = {
    "best_alpha": "best α", "best_value": "best", "baseline_value": "baseline (α = 1)",
    "n_completed": "completed", "n_stopped": "stopped", "n_failed": "failed", "n_trials": "trials",
}  # fmt: skip
_SIGNED = {"difference", "improvement"}


def best_alpha(
    store: Store, sweep: str | None = None, model: str | None = None, kernel: int | None = None
) -> pd.DataFrame:
    """One row per cell (sweep × model × kernel size × seed): the best α against the cell's α = 1 baseline.

    The value of a trial is its final ``metrics[<sweep's metric>]``, better by the sweep's mode.
    The best is chosen among *completed*, non-baseline trials with a finite value only: trials
    the scheduler stopped (ASHA) reported metrics after fewer epochs, so they are not comparable,
    and failed trials have none. A cell without such a trial gets no best (``best_alpha``,
    ``best_value`` and the differences are None) rather than a partial-training number; its
    counts still show what happened. ``baseline_value`` is the completed baseline trial's value
    (the most recently updated one if there are several), None until it has finished.
    ``difference`` is best − baseline as is; ``improvement`` is the same signed so that
    positive means better under the mode. ``n_trials`` counts every trial of the cell, the
    baseline included; the ``n_<status>`` columns split it by status.
    """
    trials = store.trials(sweep=sweep, model=model, kernel=kernel)
    if trials.empty:
        return pd.DataFrame(columns=BEST_ALPHA_COLUMNS)
    sweeps = {row["name"]: row for _, row in store.sweeps().iterrows()}
    rows = []
    for (sweep_name, cell), group in trials.groupby(["sweep", "cell"], sort=False, dropna=False):
        info = sweeps.get(sweep_name)
        metric = None if info is None else info["metric"]
        mode = None if info is None else info["mode"]
        values = group["metrics"].map(lambda m: _value(m, metric))
        finished = (group["status"] == "completed") & values.notna()
        is_baseline = group["baseline"].fillna(False).astype(bool)

        best = None
        candidates = group[finished & ~is_baseline]
        if mode in ("min", "max") and not candidates.empty:
            scores = values[candidates.index].astype(float)
            best = candidates.loc[scores.idxmin() if mode == "min" else scores.idxmax()]

        baselines = group[finished & is_baseline].sort_values("updated_at")
        baseline_value = None if baselines.empty else values[baselines.index[-1]]
        best_value = None if best is None else values[best.name]
        difference = None
        improvement = None
        if best_value is not None and baseline_value is not None:
            difference = best_value - baseline_value
            improvement = difference if mode == "max" else -difference

        first = group.iloc[0]
        status = group["status"]
        rows.append(
            dict(
                sweep=sweep_name,
                cell=cell,
                model=first["model"],
                kernel_size=_plain(first["kernel_size"]),
                seed=_plain(first["seed"]),
                metric=metric,
                mode=mode,
                best_alpha=None if best is None else best["alpha"],
                best_value=best_value,
                best_trial=None if best is None else best["trial_id"],
                other_metrics=None if best is None else {k: v for k, v in best["metrics"].items() if k != metric},
                baseline_value=baseline_value,
                difference=difference,
                improvement=improvement,
                n_trials=len(group),
                n_completed=int((status == "completed").sum()),
                n_stopped=int((status == "stopped").sum()),
                n_failed=int((status == "failed").sum()),
                n_running=int((status == "running").sum()),
            )
        )
    df = pd.DataFrame(rows, columns=BEST_ALPHA_COLUMNS)
    df = df.sort_values(["sweep", "model", "kernel_size", "seed", "cell"], na_position="last", kind="stable")
    df = df.reset_index(drop=True)
    return df.astype(object).where(df.notna(), None)


def _value(metrics: Any, metric: str | None) -> float | None:
    """The metric as a finite float, or None (absent, non-numeric, NaN or infinite)."""
    if not isinstance(metrics, dict) or metric is None:
        return None
    value = metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, Number):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def format_table(df: pd.DataFrame, fmt: str = "table", *, columns: Sequence[str] | None = None) -> str:
    """Render a frame as a fixed-width ``table``, ``json`` (a list of records) or ``csv``.

    In the table α is shown as ``0.80`` (one free coefficient) or ``(0.10, 0.90)``; a
    ``best_alpha`` frame is shown compactly (see ``_TABLE_COLUMNS``) unless ``columns`` is given.
    json and csv carry every column; in csv, lists and dicts are JSON text.
    """
    if fmt not in ("table", "json", "csv"):
        raise ValueError(f"format must be 'table', 'json' or 'csv', got {fmt!r}")
    if columns is None:
        compact = fmt == "table" and set(_TABLE_COLUMNS) <= set(df.columns)
        columns = _TABLE_COLUMNS if compact else list(df.columns)
    records = [{c: _plain(row[c]) for c in columns} for _, row in df.iterrows()]
    if fmt == "json":
        return "[\n" + ",\n".join(json.dumps(r) for r in records) + ("\n]\n" if records else "]\n")
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for record in records:
            writer.writerow([_csv_field(v) for v in record.values()])
        return out.getvalue()
    return _fixed_width(records, list(columns))


def _csv_field(value: Any) -> Any:
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _fixed_width(records: list[dict], columns: list[str]) -> str:
    header = [_TABLE_HEADERS.get(c, c) for c in columns]
    cells = [[_cell(c, r[c]) for c in columns] for r in records]
    numeric = [bool(records) and all(isinstance(r[c], Number) or r[c] is None for r in records) for c in columns]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(header)]

    def line(parts: list[str]) -> str:
        return "  ".join(p.rjust(w) if num else p.ljust(w) for p, w, num in zip(parts, widths, numeric)).rstrip()

    lines = [line(header), line(["-" * w for w in widths])]
    lines += [line(row) for row in cells]
    if not records:
        lines.append("(no results)")
    return "\n".join(lines) + "\n"


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list) and all(isinstance(v, Number) for v in value):
        return _format_alpha(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(k, v)}" for k, v in value.items())
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:+.4g}" if column in _SIGNED else f"{value:.4g}"
    return str(value)


def _format_alpha(alpha: list) -> str:
    if len(alpha) == 1:
        return f"{alpha[0]:.2f}"
    return "(" + ", ".join(f"{a:.2f}" for a in alpha) + ")"


def _plain(value: Any) -> Any:
    """Plain JSON-able Python: numpy/pandas scalars unwrapped, NaN/NA to None, timestamps to ISO text."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

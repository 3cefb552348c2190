"""Any results database as three pandas DataFrames, metrics as flat columns: what notebooks and the report read.

    from analysis.frames import load
    f = load("sqlite:///results/wconv.db", sweep="smoke")
    f.trials[["model", "alpha_1", "status", "test_accuracy"]]

Reading never writes: the store is opened with ``create=False``, so a missing database is a
``NoResults`` error rather than a new empty file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import pandas as pd
from analysis.store import DEFAULT_URL, Store, masked_url
from wconv.status import Stage


class ResultsError(Exception):
    """What was asked of the results does not exist; the message is one line listing what does."""


@dataclass(frozen=True)
class Frames:
    """One database's results. ``trials`` and ``epochs`` have one column per metric key (``val_accuracy``,
    ``test_psnr``, ``test_confusion_matrix`` …) instead of the store's ``metrics`` dict."""

    sweeps: pd.DataFrame
    trials: pd.DataFrame
    """One row per trial; ``stage`` is "search" or "confirm", ``arm`` names a confirmation arm."""
    epochs: pd.DataFrame
    """One row per (sweep, trial_id, epoch)."""
    metrics: tuple[str, ...] = ()
    """The columns of ``trials`` that came from its ``metrics`` (what a trial reported)."""

    def sweep(self, name: str) -> dict:
        """The sweep's row as a dict; ResultsError listing the recorded sweeps if there is none."""
        rows = self.sweeps[self.sweeps["name"] == name]
        if rows.empty:
            raise ResultsError(f"no sweep {name!r} in the results; {_listing('sweeps', self.sweeps['name'])}")
        return rows.iloc[0].to_dict()

    def select(self, sweep: str | None = None, model: str | None = None, kernel: int | None = None) -> "Frames":
        """The rows of one sweep / model / kernel size; a name that matches nothing is a ResultsError listing
        what exists at that level (so a typo is not mistaken for "no results yet")."""
        trials = self.trials
        if sweep is not None:
            self.sweep(sweep)
            trials = trials[trials["sweep"] == sweep]
        if model is not None:
            if not (trials["model"] == model).any():
                raise ResultsError(f"no model {model!r}{_within(sweep)}; {_listing('models', trials['model'])}")
            trials = trials[trials["model"] == model]
        if kernel is not None:
            if not (trials["kernel_size"] == kernel).any():
                raise ResultsError(f"no kernel size {kernel}{_within(sweep, model)}; "
                                   f"{_listing('kernel sizes', trials['kernel_size'])}")
            trials = trials[trials["kernel_size"] == kernel]
        sweeps = self.sweeps if sweep is None else self.sweeps[self.sweeps["name"] == sweep]
        keys = trials[["sweep", "trial_id"]]
        epochs = self.epochs.merge(keys, on=["sweep", "trial_id"]) if sweep or model or kernel else self.epochs
        return Frames(sweeps.reset_index(drop=True), trials.reset_index(drop=True), epochs.reset_index(drop=True),
                      self.metrics)


def load(source: str | Store = DEFAULT_URL, sweep: str | None = None) -> Frames:
    """Read the sweeps, trials and epochs of the database at ``source`` (a URL or an open ``Store``),
    of one sweep if given."""
    store = source if isinstance(source, Store) else Store(source, create=False)
    try:
        sweeps = store.sweeps()
        if sweep is not None and not (sweeps["name"] == sweep).any():
            raise ResultsError(f"no sweep {sweep!r} in the results at {masked_url(store.url)}; "
                               f"{_listing('sweeps', sweeps['name'])}")
        trials = store.trials(sweep=sweep)
        names = [sweep] if sweep is not None else sorted(set(sweeps["name"]) | set(trials["sweep"]))
        epochs = [store.epochs(name) for name in names]
    finally:
        if store is not source:
            store.close()
    epochs = [e for e in epochs if not e.empty]
    epochs = pd.concat(epochs, ignore_index=True) if epochs else pd.DataFrame(columns=["sweep", "trial_id", "epoch"])
    if sweep is not None:
        sweeps = sweeps[sweeps["name"] == sweep].reset_index(drop=True)
    trials = _with_stage(trials)
    flat = _flatten(trials, "metrics")
    return Frames(sweeps=sweeps, trials=flat, epochs=_flatten(epochs, "metrics"),
                  metrics=tuple(c for c in flat.columns if c not in trials.columns))


def _with_stage(trials: pd.DataFrame) -> pd.DataFrame:
    """A database from before confirmation runs has search trials only."""
    trials = trials.copy()
    if "stage" not in trials.columns:
        trials["stage"] = Stage.SEARCH.value
    trials["stage"] = trials["stage"].fillna(Stage.SEARCH.value)
    for column in ("arm", "checkpoint"):
        if column not in trials.columns:
            trials[column] = None
    return trials


def _flatten(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Replace the dict column ``column`` by one column per key; a key that names an existing column is
    prefixed ``<column>.``. Lists (a confusion matrix) stay whole, in an object column."""
    if column not in df.columns:
        return df
    dicts = [m if isinstance(m, dict) else {} for m in df[column]]
    flat = pd.DataFrame.from_records(dicts, index=df.index)
    rest = df.drop(columns=[column])
    flat.columns = [f"{column}.{key}" if key in rest.columns else key for key in flat.columns]
    return pd.concat([rest, flat], axis=1)


def _listing(what: str, values: Iterable) -> str:
    present = sorted({str(v) for v in values if v is not None and not pd.isna(v)}, key=_natural)
    return f"{what}: {', '.join(present)}" if present else f"there are no {what} yet"


def _natural(text: str):
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _within(sweep: str | None, model: str | None = None) -> str:
    where = [f"sweep {sweep!r}"] if sweep else []
    where += [f"model {model!r}"] if model else []
    return f" in {' '.join(where)}" if where else ""

"""Results of sweeps: the store (schema, writes, reads), the questions asked of it, and the report.

    from analysis import load, best_alpha
    frames = load("sqlite:///results/wconv.db", sweep="smoke")   # sweeps, trials, epochs as DataFrames
    best_alpha(frames, by="model")                                # best α per model across seeds, with its verdict

``analysis.stats`` holds the paired statistics, ``analysis.report.write_report`` renders ``wconv report``.
Names are imported on first use: a process that only writes to the store (every trial) never imports scipy.
"""

from importlib import import_module

_HOMES = {"Frames": "frames", "ResultsError": "frames", "load": "frames", "best_alpha": "query",
          "confirmation": "query", "format_table": "query", "DEFAULT_URL": "store", "Store": "store",
          "StoreError": "store"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(import_module(f"analysis.{_HOMES[name]}"), name)

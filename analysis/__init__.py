"""Results of sweeps: the store (schema, writes, reads), the questions asked of it, and the report.

    from analysis import load, best_alpha
    frames = load("sqlite:///results/wconv.db", sweep="smoke")   # sweeps, trials, epochs as DataFrames
    best_alpha(frames, by="model")                                # best α per model across seeds, with its verdict

``analysis.stats`` holds the paired statistics, ``analysis.report.write_report`` renders ``wconv report``.
"""

from analysis.frames import Frames, ResultsError, load
from analysis.query import best_alpha, confirmation, format_table
from analysis.store import DEFAULT_URL, Store, StoreError

__all__ = ["DEFAULT_URL", "Frames", "ResultsError", "Store", "StoreError", "best_alpha", "confirmation",
           "format_table", "load"]

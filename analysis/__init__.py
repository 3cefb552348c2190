"""Results of sweeps: the store (schema, writes, reads) and the queries asked of it."""

from analysis.query import best_alpha, format_table
from analysis.store import DEFAULT_URL, Store, StoreError

__all__ = ["DEFAULT_URL", "Store", "StoreError", "best_alpha", "format_table"]

"""The results store, split the way Optuna's ``storages`` are: ``schema`` (tables, version, upgrades, values in
and out), ``engine`` (URL, SQLite locking, the one write path and its errors) and ``results`` (``Store``: sweeps,
trials, epochs). Leases, claims and SLURM job records live over the same engine in ``launch/``."""

from analysis.store.engine import (DEFAULT_URL, EXIT_UNAVAILABLE, Database, NoResults, StoreError, StoreLocked,
                                   StoreUnavailable, masked_url, storage_url)
from analysis.store.results import Store
from wconv.status import TERMINAL  # where analysis/ and its users have always found it

__all__ = ["DEFAULT_URL", "EXIT_UNAVAILABLE", "Database", "NoResults", "Store", "StoreError", "StoreLocked",
           "StoreUnavailable", "TERMINAL", "masked_url", "storage_url"]

"""Test order for ``make test``'s two xdist workers: integration tests (a Ray cluster, SLURM jobs, a browser: tens of
seconds each) go first so that the many quick unit tests fill the workers' last minutes instead of one long test
running alone at the end. Without xdist the order changes nothing a test depends on."""

from __future__ import annotations


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("integration") is None)

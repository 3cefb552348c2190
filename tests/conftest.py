"""How ``make test`` shares the suite among its pytest-xdist workers (``-n auto --dist loadgroup``).

Tests that share something expensive run on one worker (``ONE_WORKER``, by file), and the longest units of work start
first, so that the cores stay busy to the end (the short unit tests fill the gaps) instead of one long test running
alone at the end. The groups are files, not ``xdist_group`` marks: pytest 9.2 ignores the node-id suffix through which
xdist's own loadgroup passes marks to its scheduler (pytest-dev/pytest-xdist#1386), and the scheduler sees node ids
only. A test that uses a shared fixture from a file outside its group is refused at collection.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ONE_WORKER = {
    # One SLURM test cluster: each test cancels the jobs that appeared while it ran, and jobs fight for its CPUs.
    "test_slurm.py": "slurm", "test_slurm_cluster.py": "slurm",
    # The smoke database is built once per worker process (two `wconv run`s, ~90 CPU-s).
    "test_browser.py": "smoke_db", "test_report.py": "smoke_db",
    # Its module fixture starts the three paper sweeps side by side.
    "test_paper_sweeps.py": "paper_sweeps",
    # Its module fixture makes one real `wconv run` that three tests look at.
    "test_security.py": "security",
}
SHARED_FIXTURES = {"slurm_cluster": "slurm", "smoke_db": "smoke_db", "paper_runs": "paper_sweeps"}


def _group(nodeid: str) -> str | None:
    return ONE_WORKER.get(Path(nodeid.split("::", 1)[0]).name)


def _rank(item: pytest.Item) -> int:
    group = _group(item.nodeid)
    if group == "slurm":
        return 0  # ~6 minutes on one worker: the real SLURM daemons' tests
    if group or item.get_closest_marker("integration"):
        return 1  # real Ray runs, one to two minutes each
    return 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, group in SHARED_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()) and _group(item.nodeid) != group:
                raise pytest.UsageError(f"{item.nodeid} uses the fixture {fixture}: add its file to "
                                        f"ONE_WORKER['{group}'] in tests/conftest.py, so that one xdist worker runs "
                                        f"all of its users")
    items.sort(key=_rank)  # stable: files and tests keep their order within a rank


@pytest.hookimpl(optionalhook=True)  # pytest without xdist runs the suite in one process
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadgroup`` with the groups above, in collection order (longest first)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid) or nodeid

    config.option.loadscopereorder = False  # keep the order of pytest_collection_modifyitems
    return FileGroups(config, log)

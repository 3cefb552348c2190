"""A gate a test opens: put this folder first on ``PYTHONPATH`` with ``WCONV_TEST_EPOCH_GATE=<file>`` in the
environment of a run, and every trial of that run (its Ray workers inherit the environment) waits before its second
epoch until the test creates ``<file>`` (or ``<file>.<seed>``, which opens it for the trials of that seed alone). So a test that must act while a cell still has work to do (freeze a runner,
take it over) does not depend on how fast the machine trains: the cell cannot finish until the test lets it.

Test-only: ``make test`` never puts this folder on a path; only ``tests/test_resume.py`` does, for one run.
"""

import importlib.abc
import importlib.machinery
import os
import sys
import time

_GATE = os.environ.get("WCONV_TEST_EPOCH_GATE")


def _hold(module) -> None:
    train_epoch = module.Trial.train_epoch

    def gated(self):
        while self.progress.epoch >= 1 and not (os.path.exists(_GATE) or os.path.exists(f"{_GATE}.{self.config.seed}")):
            time.sleep(0.1)
        return train_epoch(self)

    module.Trial.train_epoch = gated


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds ``wconv.train`` as the other finders do, and gates ``Trial.train_epoch`` once it has executed."""

    def find_spec(self, name, path, target=None):
        if name != "wconv.train":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_gate(module):
            exec_module(module)
            _hold(module)

        spec.loader.exec_module = exec_and_gate
        return spec


if _GATE:
    sys.meta_path.insert(0, _AfterImport())

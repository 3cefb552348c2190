"""The library stands alone: wconv/ never imports the layers above it (launch/, analysis/)."""

from __future__ import annotations

import subprocess
import sys


def test_library_imports_neither_launch_nor_analysis():
    code = ("import sys, wconv, wconv.train, wconv.models, wconv.data, wconv.metrics\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('launch', 'analysis', 'ray'))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"wconv pulled in {out}"

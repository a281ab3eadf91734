"""The README's test command works from a checkout alone: nothing the tests read lies beside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_tests_read_nothing_outside_the_checkout(tmp_path: Path) -> None:
    # A copy with no shared/ beside it (tmp_path holds nothing else); the benchmarks are no tests.
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "tests", checkout / "tests", ignore=shutil.ignore_patterns("__pycache__", "bench"))
    shutil.copy(ROOT / "pyproject.toml", checkout)
    # Collecting imports every test module (the receiver's strategies read every body sample); the
    # modules run read the log type source, the extensions' Slack messages and payload, and samples.
    modules = ["tests/unit/test_catalog.py", "tests/poller/test_reports.py", "tests/receiver/test_shapes.py"]
    for args in (["--collect-only"], modules):
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

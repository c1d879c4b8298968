"""Helpers shared by the tests (importable as `helpers`: tests/ is on sys.path)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None, timeout=120):
    """Run the CLI in a subprocess; returns CompletedProcess."""
    import subprocess

    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "pis_tui", *args], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=str(ROOT))

"""Output paths: checked before anything is measured or computed, so a typo costs nothing.

Used by the CLI (``--json``, ``--csv``, ``--out``) and the explorer's export dialog alike.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError


def check_writable(path: str) -> Path:
    """Fail early (before measuring anything) when an output path cannot be written."""
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise UserError(f"{p}: is a directory, give a file name")
    if not str(path).strip():
        raise UserError("an empty output path: give a file name (or - for standard output)")
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{p}: {parent} is a file, not a directory")
    if not parent.is_dir():
        raise UserError(f"{p}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{p}: not writable")
    return p

"""Finds the data shipped with pis-tui (``profiles/``) and reads its JSON files.

The repository keeps ``profiles/`` at its top level; a wheel maps it to the package
data folder ``pis_tui/shipped``.  :func:`profiles_dir` finds it either way, so an
editable install and an installed wheel behave the same.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def profiles_dir() -> Path:
    for candidate in (_HERE / "profiles", _HERE.parent / "profiles"):
        if (candidate / "gpus").is_dir() and (candidate / "models").is_dir():
            return candidate
    raise FileNotFoundError(
        "pis-tui's data folder 'profiles' is missing: reinstall the package")


def profile_path(*parts: str) -> Path:
    return profiles_dir().joinpath(*parts)


@lru_cache(maxsize=None)
def read_json(*parts: str) -> dict:
    with open(profile_path(*parts), encoding="utf-8") as f:
        return json.load(f)


def list_names(folder: str, suffix: str = ".json") -> list[str]:
    d = profile_path(folder)
    if not d.is_dir():
        return []
    return sorted(p.name[: -len(suffix)] for p in d.iterdir() if p.name.endswith(suffix))

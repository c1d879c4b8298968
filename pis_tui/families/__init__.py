"""The registry of pruning families: one module per family, every list of families from here.

Each built-in family lives in its own module of this package (see :mod:`.base` for what a
family declares) and is registered in the order of :data:`BUILTIN`, which is the order of
every list the tool shows (CLI tables, legends, the JSON Schema enum).  Another family is
added with :func:`register` (a module of its own defining a :class:`Family` subclass);
everything that lists families calls :func:`names`, :func:`pruned` or :func:`all_families`
at the time it needs them, so a family registered later appears everywhere.

Importing the registry imports the family modules, which are torch-free.
"""

from __future__ import annotations

import importlib

from ..errors import UserError
from .base import DEFAULT_SPARSITIES, MAX_SPARSITY, Family, LayerPlan, PhaseContext

__all__ = ["Family", "LayerPlan", "PhaseContext", "MAX_SPARSITY", "DEFAULT_SPARSITIES", "BUILTIN",
           "register", "unregister", "get", "names", "pruned", "all_families", "is_family"]

#: the built-in families, one module each, in display order
BUILTIN = ("dense", "static_depth", "dynamic_depth", "static_width", "static_width_hidden",
           "semi_structured_24", "unstructured", "low_rank", "dynamic_sparse_attention")

_REGISTRY: dict[str, Family] = {}


def register(family: Family, *, replace: bool = False) -> Family:
    """Add a family (an instance of a :class:`Family` subclass).  Its name must be new unless
    ``replace``; its mark and short name should be unique (charts and legends use them)."""
    if not isinstance(family, Family):
        raise TypeError(f"{family!r} is not a pis_tui.families.Family")
    if not family.name or not family.name.isidentifier():
        raise ValueError(f"a family needs a name that is an identifier, got {family.name!r}")
    if family.name in _REGISTRY and not replace:
        raise ValueError(f"family {family.name!r} is already registered")
    _REGISTRY[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove a family added with :func:`register` (built-ins cannot be removed)."""
    if name in BUILTIN:
        raise ValueError(f"{name} is a built-in family")
    _REGISTRY.pop(name, None)


def get(name: str) -> Family:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown strategy {name!r}; choose from {', '.join(names())}") from None


def is_family(name: str) -> bool:
    return name in _REGISTRY


def all_families() -> tuple[Family, ...]:
    return tuple(_REGISTRY.values())


def names() -> tuple[str, ...]:
    """Every family, the baseline (dense) first."""
    return tuple(_REGISTRY)


def pruned() -> tuple[str, ...]:
    """Every family but the baseline: what a sweep runs by default."""
    return tuple(f.name for f in _REGISTRY.values() if not f.is_baseline)


def _load_builtins() -> None:
    for mod in BUILTIN:
        register(importlib.import_module(f"{__name__}.{mod}").FAMILY)


_load_builtins()

"""The registry: every family and combination by name, in display order (see the package's
docstring).  Family modules never import it; what needs a family by name does."""

from __future__ import annotations

import importlib

from ..errors import UserError
from .base import Family
from .combinations import BUILTIN_COMBOS, SEP, Combo, check_pair, combo_name


#: the built-in families, one module each, in display order
BUILTIN = ("dense", "static_depth", "dynamic_depth", "static_width", "static_width_hidden",
           "semi_structured_24", "unstructured", "low_rank", "dynamic_sparse_attention",
           "expert_pruning", "topk_reduction", "dynamic_topk", "expert_slimming")

_REGISTRY: dict[str, Family] = {}
_COMBOS: dict[str, Combo] = {}


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
    """A family or a combination (``first+second``) by name; UserError naming them."""
    try:
        return _REGISTRY[name]
    except KeyError:
        pass
    try:
        return _COMBOS[name]
    except KeyError:
        pass
    if SEP in str(name):
        rev = SEP.join(reversed(str(name).split(SEP)))
        hint = f" (did you mean {rev}? the parts go in the order they are applied)" if rev in _COMBOS else ""
        raise UserError(f"unknown combination {name!r}{hint}; the combinations are "
                        f"{', '.join(combo_names())}") from None
    raise UserError(f"unknown strategy {name!r}; choose from {', '.join(names())}") from None


def register_combo(first: str, second: str, *, mark: str = "+", color=None,
                   replace: bool = False) -> Combo:
    """Add the combination ``first+second`` of two registered families (ValueError when they
    cannot be combined: see :mod:`.combinations`)."""
    a, b = _REGISTRY.get(first), _REGISTRY.get(second)
    if a is None or b is None:
        raise ValueError(f"{first}+{second}: both parts must be registered families")
    check_pair(a, b)
    combo = Combo(a, b, mark, color)
    if combo.name in _COMBOS and not replace:
        raise ValueError(f"combination {combo.name!r} is already registered")
    _COMBOS[combo.name] = combo
    return combo


def unregister_combo(name: str) -> None:
    """Remove a combination added with :func:`register_combo` (built-ins cannot be removed)."""
    if name in {combo_name(a, b) for a, b, _ in BUILTIN_COMBOS}:
        raise ValueError(f"{name} is a built-in combination")
    _COMBOS.pop(name, None)


def combos() -> tuple[Combo, ...]:
    return tuple(_COMBOS.values())


def combo_names() -> tuple[str, ...]:
    """Every combination, in display order."""
    return tuple(_COMBOS)


def is_combo(name: str) -> bool:
    return name in _COMBOS


def strategy_names() -> tuple[str, ...]:
    """Every family (dense first), then every combination: the order of legends and tables."""
    return names() + combo_names()


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
        register(importlib.import_module(f"{__package__}.{mod}").FAMILY)
    for first, second, mark in BUILTIN_COMBOS:
        register_combo(first, second, mark=mark)


_load_builtins()

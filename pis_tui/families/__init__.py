"""The registry of pruning families: one module per family, every list of families from here.

Each built-in family lives in its own module of this package (see :mod:`.base` for what a
family declares) and is registered in the order of :data:`BUILTIN`, which is the order of
every list the tool shows (CLI tables, legends, the JSON Schema enum).  Another family is
added with :func:`register` (a module of its own defining a :class:`Family` subclass);
everything that lists families calls :func:`names`, :func:`pruned` or :func:`all_families`
at the time it needs them, so a family registered later appears everywhere.

Combined strategies (:mod:`.combinations`: two families, the second applied to what the first
kept) are registered beside the families, in the order of :data:`.combinations.BUILTIN_COMBOS`:
:func:`get` finds both, :func:`names` / :func:`pruned` list families only, :func:`combo_names`
the combinations, :func:`strategy_names` both (families first).

Importing the registry imports the family modules, which are torch-free.

The package, one job a module: :mod:`.base` (what a family is), one module per family,
:mod:`.combinations` (two families in turn), :mod:`.registry` (every family and combination by
name), :mod:`.strategy` (a family at a sparsity, parsed from a command line), :mod:`.phase_ops`
(a phase's op list for a strategy), :mod:`.prune` (real pruning by name, through the torch kit
of :mod:`pis_tui.hf`).  Modules of this package import :mod:`.registry`, never this face.
"""

from __future__ import annotations

from .base import DEFAULT_SPARSITIES, MAX_SPARSITY, Family, LayerShape, PhaseContext
from .combinations import BUILTIN_COMBOS, COMBO_SPARSITIES, SEP, Combo, compose_sparsity
from .registry import (BUILTIN, all_families, combo_names, combos, get, is_combo, is_family, names,
                       pruned, register, register_combo, strategy_names, unregister,
                       unregister_combo)

__all__ = ["Family", "LayerShape", "PhaseContext", "MAX_SPARSITY", "DEFAULT_SPARSITIES", "BUILTIN",
           "register", "unregister", "get", "names", "pruned", "all_families", "is_family",
           "Combo", "BUILTIN_COMBOS", "COMBO_SPARSITIES", "SEP", "register_combo", "unregister_combo",
           "combos", "combo_names", "is_combo", "strategy_names", "compose_sparsity"]

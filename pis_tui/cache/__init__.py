"""The DuckDB cache: op timings, device calibrations, sweeps, validations, quality results,
settings.  This is the only module that touches DuckDB; it never imports torch.

Where: ``--cache PATH`` > ``$PIS_TUI_CACHE`` > ``platformdirs.user_cache_dir("pis-tui")/cache.duckdb``
(``:memory:`` gives a throw-away in-memory cache).

Sharing: DuckDB lets one process hold a database file, and a second process cannot open it
(not even read-only) while the first does.  So every operation opens the file, does its work
and closes it again (a few ms), and an open that finds the file held retries with backoff
for up to ``wait_s`` seconds (default 10; ``$PIS_TUI_CACHE_WAIT``) before a clear
:class:`~pis_tui.errors.CacheError`.  Within a process all access is serialised by one lock
(DuckDB raises on concurrent same-key upserts from threads).

Robustness: a file that is not a readable DuckDB database, or that has a newer schema than
this pis-tui knows, is renamed aside (``cache.duckdb.corrupt-YYYYmmdd-HHMMSS`` /
``.newer-schema-…``) with a warning and a fresh cache is made; nothing is deleted.  A
filesystem without file locks (some NFS mounts) makes the cache fall back to memory for
the run, with a warning.

The package, one job a module: :mod:`.store` (the file: opening, waiting, moving aside, the
schema), :mod:`.timings` (op timings and calibrations), :mod:`.records` (sweeps, validations,
measured quality, settings), :mod:`.maintenance` (info, clear, export); :class:`Cache` is all
of them.
"""

from __future__ import annotations

from .maintenance import Maintenance
from .records import RecordsTables
from .store import (DATA_TABLES, DEFAULT_WAIT_S, MEMORY, SCHEMA_VERSION, TABLES, Store,
                    default_path)
from .timings import TimingsTables

__all__ = ["Cache", "DATA_TABLES", "DEFAULT_WAIT_S", "MEMORY", "SCHEMA_VERSION", "TABLES",
           "default_path"]


class Cache(Store, TimingsTables, RecordsTables, Maintenance):
    """A handle on the cache file (see the package docs).  Cheap to create; holds no connection
    between calls: every operation opens the file, works and closes it (or runs inside
    :meth:`~.store.Store.hold`)."""

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
measured quality, settings), :mod:`.collectives` (collectives measured through
torch.distributed, tensor parallelism), :mod:`.maintenance` (info, clear, export);
:class:`Cache` is all of them.
"""

from __future__ import annotations

import functools

from .collectives import CollectiveTables
from .maintenance import Maintenance
from .records import RecordsTables
from .store import (DATA_TABLES, DEFAULT_WAIT_S, MEMORY, SCHEMA_VERSION, TABLES, Store,
                    default_path, is_corruption)
from .timings import TimingsTables

__all__ = ["Cache", "DATA_TABLES", "DEFAULT_WAIT_S", "MEMORY", "SCHEMA_VERSION", "TABLES",
           "default_path"]


class Cache(Store, TimingsTables, RecordsTables, CollectiveTables, Maintenance):
    """A handle on the cache file (see the package docs).  Cheap to create; holds no connection
    between calls: every operation opens the file, works and closes it (or runs inside
    :meth:`~.store.Store.hold`)."""


#: the operations that write, and what a read-only cache refuses to do for them
WRITES = {"put_measurements": "store measurements", "put_calibration": "store device peaks",
          "put_sweep": "store a sweep", "put_validation": "store validation results",
          "put_quality_results": "store quality results", "put_setting": "save settings",
          "put_collectives": "store measured collectives",
          "clear": "clear the cache"}
READS = ("get_measurements", "get_calibration", "get_sweep", "get_validations",
         "get_quality_results", "get_setting", "get_collectives", "info", "export")


def _guarded(name, fn):
    """A query that hits a corrupt block takes the corrupt path (what is readable is saved,
    the file moved aside, a fresh one made) and the operation runs once more on the fresh file;
    a write on a read-only cache is one clear CacheError before any work."""
    what = WRITES.get(name)

    @functools.wraps(fn)
    def call(self, *args, **kw):
        import duckdb

        if what is not None:
            self.check_writable(what)
        try:
            return fn(self, *args, **kw)
        except duckdb.Error as e:
            if not is_corruption(e):
                raise
            self.recover(e)
            return fn(self, *args, **kw)
    return call


for _name in tuple(WRITES) + READS:
    setattr(Cache, _name, _guarded(_name, getattr(Cache, _name)))


"""The cache file: opening it briefly, waiting for another process that holds it, moving a
corrupt or newer-schema file aside, falling back to memory where the filesystem has no locks,
and the schema of its tables."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from ..errors import CacheError, UserError

SCHEMA_VERSION = 3
DEFAULT_WAIT_S = 10.0
MEMORY = ":memory:"

#: one lock for every cache access in this process
_LOCK = threading.RLock()

#: collectives measured through torch.distributed (tensor parallelism), keyed by device, backend,
#: world size, collective, dtype and message bytes (and the torch and method versions)
_COLLECTIVES = """CREATE TABLE IF NOT EXISTS collective_timings (
        fingerprint VARCHAR NOT NULL, backend VARCHAR NOT NULL, world_size INTEGER NOT NULL,
        collective VARCHAR NOT NULL, dtype VARCHAR NOT NULL, bytes BIGINT NOT NULL,
        torch_version VARCHAR NOT NULL, method_version INTEGER NOT NULL, op_type VARCHAR,
        ms DOUBLE, spread DOUBLE, busbw_gbs DOUBLE, rounds INTEGER, iters INTEGER,
        status VARCHAR, note VARCHAR, conditions_json VARCHAR, device_json VARCHAR,
        measured_at TIMESTAMP,
        PRIMARY KEY (fingerprint, backend, world_size, collective, dtype, bytes, torch_version,
                     method_version))"""

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    """CREATE TABLE IF NOT EXISTS op_timings (
        fingerprint VARCHAR NOT NULL, torch_version VARCHAR NOT NULL, cuda_version VARCHAR NOT NULL,
        cusparselt_version VARCHAR NOT NULL, method VARCHAR NOT NULL, method_version INTEGER NOT NULL,
        op_key VARCHAR NOT NULL, op_type VARCHAR, dtype VARCHAR, ms DOUBLE, eager_ms DOUBLE,
        spread DOUBLE, repeats INTEGER, status VARCHAR, note VARCHAR, op_json VARCHAR,
        device_json VARCHAR, measured_at TIMESTAMP, conditions_json VARCHAR,
        PRIMARY KEY (fingerprint, torch_version, cuda_version, cusparselt_version, method,
                     method_version, op_key))""",
    """CREATE TABLE IF NOT EXISTS device_calibration (
        fingerprint VARCHAR NOT NULL, dtype VARCHAR NOT NULL, torch_version VARCHAR NOT NULL,
        cuda_version VARCHAR NOT NULL, method VARCHAR, peak_tflops DOUBLE, bandwidth_gbs DOUBLE,
        info_json VARCHAR, measured_at TIMESTAMP,
        PRIMARY KEY (fingerprint, dtype, torch_version, cuda_version))""",
    """CREATE TABLE IF NOT EXISTS sweeps (
        key VARCHAR PRIMARY KEY, model VARCHAR, gpu VARCHAR, scenario_json VARCHAR,
        result_json VARCHAR, saved_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS validations (
        model VARCHAR NOT NULL, fingerprint VARCHAR NOT NULL, strategy VARCHAR NOT NULL,
        sparsity DOUBLE NOT NULL, achieved_sparsity DOUBLE, phase VARCHAR NOT NULL,
        batch INTEGER NOT NULL, length INTEGER NOT NULL, predicted_ms DOUBLE, measured_ms DOUBLE,
        dense_predicted_ms DOUBLE, dense_measured_ms DOUBLE, predicted_speedup DOUBLE,
        measured_speedup DOUBLE, error DOUBLE, extra_json VARCHAR, measured_at TIMESTAMP,
        PRIMARY KEY (model, fingerprint, strategy, sparsity, phase, batch, length))""",
    """CREATE TABLE IF NOT EXISTS quality_results (
        model VARCHAR NOT NULL, strategy VARCHAR NOT NULL, sparsity DOUBLE NOT NULL,
        achieved_sparsity DOUBLE, ppl_dense DOUBLE, ppl_pruned DOUBLE, ppl_increase DOUBLE,
        text_sha256 VARCHAR NOT NULL, n_tokens INTEGER NOT NULL, extra_json VARCHAR,
        measured_at TIMESTAMP,
        PRIMARY KEY (model, strategy, sparsity, text_sha256, n_tokens))""",
    """CREATE TABLE IF NOT EXISTS settings (
        key VARCHAR PRIMARY KEY, value_json VARCHAR, updated_at TIMESTAMP)""",
    _COLLECTIVES,
]

#: how a file of an older schema version is brought up to date (nothing in it is lost)
MIGRATIONS = {
    1: ["ALTER TABLE op_timings ADD COLUMN IF NOT EXISTS conditions_json VARCHAR"],  # v2: conditions
    2: [_COLLECTIVES],  # v3: collectives measured through torch.distributed (tensor parallelism)
}

DATA_TABLES = ("op_timings", "device_calibration", "sweeps", "validations", "quality_results",
               "collective_timings")
TABLES = DATA_TABLES + ("settings", "meta")

VALIDATION_COLS = ("model", "fingerprint", "strategy", "sparsity", "achieved_sparsity", "phase",
                    "batch", "length", "predicted_ms", "measured_ms", "dense_predicted_ms",
                    "dense_measured_ms", "predicted_speedup", "measured_speedup", "error")
COLLECTIVE_COLS = ("fingerprint", "backend", "world_size", "collective", "dtype", "bytes",
                   "torch_version", "method_version", "op_type", "ms", "spread", "busbw_gbs",
                   "rounds", "iters", "status", "note", "conditions_json", "device_json",
                   "measured_at")
QUALITY_COLS = ("model", "strategy", "sparsity", "achieved_sparsity", "ppl_dense", "ppl_pruned",
                 "ppl_increase", "text_sha256", "n_tokens")


def default_path() -> str:
    """``$PIS_TUI_CACHE`` or the user cache dir (platformdirs) / cache.duckdb."""
    env = os.environ.get("PIS_TUI_CACHE")
    if env:
        return env
    try:
        from platformdirs import user_cache_dir

        base = user_cache_dir("pis-tui", appauthor=False)
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        base = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pis-tui")
    return os.path.join(base, "cache.duckdb")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def to_ts(s) -> Optional[datetime]:
    if s is None or s == "":
        return utcnow()
    if isinstance(s, datetime):
        return s.astimezone(timezone.utc).replace(tzinfo=None) if s.tzinfo else s
    try:
        d = datetime.fromisoformat(str(s))
    except ValueError:
        return utcnow()
    return d.astimezone(timezone.utc).replace(tzinfo=None) if d.tzinfo else d


def to_iso(d) -> str:
    if isinstance(d, datetime):
        return d.replace(tzinfo=timezone.utc).isoformat()
    return str(d or "")


class _Busy(Exception):
    pass


class _NoLocks(Exception):
    pass


class _Unusable(Exception):
    pass


def _classify(e: Exception) -> type:
    """What a DuckDB error on open means: busy, no-locks filesystem, unusable path, corrupt."""
    msg = str(e)
    if "Conflicting lock" in msg or ("lock" in msg.lower() and "held" in msg.lower()):
        return _Busy
    if "Could not set lock" in msg or "No locks available" in msg:
        return _NoLocks
    if any(s in msg for s in ("Permission denied", "No such file or directory", "Read-only file system",
                              "Is a directory", "No space left")):
        return _Unusable
    return Exception  # corrupt / unreadable


#: a DuckDB database file carries this at bytes 8-11 of its main header
DUCKDB_MAGIC = b"DUCK"


def _check_is_duckdb(path: str) -> None:
    """A file that exists and is not a DuckDB database (by its header) is not a cache: it is
    refused, one line, and left untouched (only a DuckDB file may be moved aside as corrupt).
    An empty file is no one's data: it may become the cache."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except FileNotFoundError:
        return
    except OSError:
        return  # unreadable: the connection says why
    if head and head[8:12] != DUCKDB_MAGIC:
        raise UserError(f"{path} is not a pis-tui cache (not a DuckDB database file); it is left "
                        "as it is: give --cache a new file name or an existing cache")


class _NewerSchema(Exception):
    pass


def is_corruption(e: BaseException) -> bool:
    """A DuckDB error that says the file is broken inside (a bad block a query reached), not a
    mistake in the query or a busy file."""
    msg = str(e).lower()
    return ("corrupt" in msg or "checksum" in msg
            or ("internal error" in msg and ("block" in msg or "serializ" in msg)))


def writable(path: str) -> bool:
    """Whether the cache file (if there is one) can be written: opened for update.  Checked by
    opening, not by mode bits: root writes any mode, and an immutable file refuses everyone."""
    p = Path(path)
    if not p.exists():
        return os.access(p.parent if p.parent.exists() else Path("."), os.W_OK)
    try:
        with open(p, "r+b"):
            return True
    except OSError:
        return False


#: rows salvaged per query from a corrupt table (a bad block spoils the chunks it lies in)
SALVAGE_CHUNK = 256


def first_line(e) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else type(e).__name__


class Store:
    """A handle on the cache file.  Cheap to create; holds no connection between calls."""

    def __init__(self, path: str, *, wait_s: float = DEFAULT_WAIT_S,
                 on_warning: Optional[Callable[[str], None]] = None):
        self.path = path
        self.wait_s = wait_s
        self.warnings: list[str] = []
        self._on_warning = on_warning
        self._mem = None  # the connection of an in-memory cache (kept for the run)
        self._held = None  # the connection of a hold() block
        self._ready = False
        self.fallback_reason = ""
        self.read_only = False  # the file is readable but cannot be written: reads only

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: Optional[str] = None, *, wait_s: Optional[float] = None,
             on_warning: Optional[Callable[[str], None]] = None) -> "Store":
        """Open (creating if needed) the cache at ``path`` (default: see :func:`default_path`).

        Raises CacheError when the file stays held by another process longer than
        ``wait_s`` or the path cannot be used.
        """
        if wait_s is None:
            try:
                wait_s = float(os.environ.get("PIS_TUI_CACHE_WAIT", DEFAULT_WAIT_S))
            except ValueError:
                wait_s = DEFAULT_WAIT_S
        p = str(path) if path else default_path()
        if p != MEMORY:
            p = str(Path(p).expanduser())
            if Path(p).is_dir():
                raise UserError(f"cache path {p} is a directory: give a file name (e.g. {p}/cache.duckdb)")
        c = cls(p, wait_s=wait_s, on_warning=on_warning)
        with c._conn():
            pass  # create / check the schema now, so problems surface at open
        return c

    @property
    def in_memory(self) -> bool:
        return self._mem is not None

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        if self._on_warning is not None:
            self._on_warning(msg)
        else:
            print(f"pis-tui: warning: {msg}", file=sys.stderr)

    def _use_memory(self, reason: str) -> None:
        import duckdb

        self._mem = duckdb.connect(MEMORY)
        self.fallback_reason = reason
        self._init_schema(self._mem)

    def _connect_file(self):
        import duckdb

        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            # a path nobody can use (a read-only or missing parent, a file in the way) is bad
            # input, not a cache held by another process: exit 2, one line
            raise UserError(f"cannot use cache file {self.path}: cannot create its directory "
                            f"({e.strerror}); give --cache PATH (or PIS_TUI_CACHE) in a "
                            "writable place") from None
        _check_is_duckdb(self.path)
        deadline = time.monotonic() + self.wait_s
        delay = 0.01
        if not self.read_only and Path(self.path).exists() and not writable(self.path):
            self.read_only = True
            self._warn(f"cache file {self.path} is read-only: reading it; nothing new is stored "
                       "(use --cache PATH or PIS_TUI_CACHE for a writable one)")
        while True:
            try:
                return duckdb.connect(self.path, read_only=self.read_only)
            except duckdb.Error as e:
                kind = _classify(e)
                if kind is _Busy:
                    if time.monotonic() >= deadline:
                        m = re.search(r"PID (\d+)", str(e))
                        who = f" (pid {m.group(1)})" if m else ""
                        raise CacheError(
                            f"cache file {self.path} is in use by another process{who}; "
                            f"waited {self.wait_s:g} s. Try again when it finishes, or use another "
                            "cache with --cache PATH / PIS_TUI_CACHE") from None
                    time.sleep(delay)
                    delay = min(delay * 1.6, 0.25)
                    continue
                if kind is _NoLocks:
                    raise _NoLocks(str(e)) from None
                if kind is _Unusable:
                    raise CacheError(f"cannot use cache file {self.path}: {first_line(e)}") from None
                raise

    def check_writable(self, what: str = "store measurements") -> None:
        """Fail before the work when the cache cannot keep it (a read-only file)."""
        if self.read_only:
            raise CacheError(f"cannot {what}: cache file {self.path} is read-only; use "
                             "--cache PATH (or PIS_TUI_CACHE) for a writable one")

    def recover(self, error: BaseException) -> None:
        """A query hit a corrupt block: export what is still readable beside the file, move
        the file aside, start a fresh one with the salvaged rows (see :meth:`_salvage`)."""
        if self._mem is not None or self.path == MEMORY:
            raise error
        held = self._held is not None
        if held:
            try:
                self._held.close()
            except Exception:  # noqa: BLE001
                pass
            self._held = None
        salvaged, counts = self._salvage()
        self._move_aside("corrupt", first_line(error))
        con = self._connect_file()
        try:
            self._ready = False
            self._init_schema(con)
            restored = self._restore(con, salvaged)
        finally:
            if held:
                self._held = con
            else:
                con.close()
        lost = {t: n - restored.get(t, 0) for t, n in counts.items() if n > restored.get(t, 0)}
        kept = ", ".join(f"{t} {n}" for t, n in restored.items() if n) or "nothing"
        self._warn(f"rows read back into the fresh cache: {kept}"
                   + (f"; unreadable and lost: {', '.join(f'{t} {n}' for t, n in lost.items())}"
                      if lost else "") + (f"; salvaged copies in {salvaged}" if salvaged else ""))

    def _salvage(self):
        """Every table's readable rows, exported to Parquet in a folder beside the file
        (whole tables where they read, else SALVAGE_CHUNK rows at a time).  Returns (folder or
        None, {table: rows it had})."""
        import duckdb

        counts: dict = {}
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        folder = Path(f"{self.path}.salvaged-{stamp}")
        con = duckdb.connect(MEMORY)  # the broken file attached read-only beside it
        try:
            src = self.path.replace("'", "''")
            con.execute(f"ATTACH '{src}' AS bad (READ_ONLY)")
            folder.mkdir(exist_ok=True)
            for t in DATA_TABLES + ("settings",):  # meta is made anew
                try:
                    n = con.execute(f"SELECT count(*) FROM bad.{t}").fetchone()[0]
                    con.execute(f"CREATE TABLE {t} AS SELECT * FROM bad.{t} LIMIT 0")
                except duckdb.Error:
                    continue
                counts[t] = n
                try:
                    con.execute(f"INSERT INTO {t} SELECT * FROM bad.{t}")
                except duckdb.Error:
                    for lo in range(0, n, SALVAGE_CHUNK):
                        try:
                            con.execute(f"INSERT INTO {t} SELECT * FROM bad.{t} "
                                        "WHERE rowid >= ? AND rowid < ?", [lo, lo + SALVAGE_CHUNK])
                        except duckdb.Error:
                            continue
                target = str(folder / f"{t}.parquet").replace("'", "''")
                con.execute(f"COPY {t} TO '{target}' (FORMAT PARQUET)")
        except (duckdb.Error, OSError):
            pass
        finally:
            con.close()
        if not any(folder.glob("*.parquet")):
            try:
                folder.rmdir()
            except OSError:
                pass
            return None, counts
        return folder, counts

    def _restore(self, con, folder) -> dict:
        """Insert the salvaged rows into the fresh cache; {table: rows restored}."""
        out: dict = {}
        if folder is None:
            return out
        for t in DATA_TABLES + ("settings",):
            f = folder / f"{t}.parquet"
            if not f.exists():
                continue
            src = str(f).replace("'", "''")
            try:
                con.execute(f"INSERT OR REPLACE INTO {t} BY NAME SELECT * FROM read_parquet('{src}')")
                out[t] = con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            except Exception:  # noqa: BLE001 - an older layout: keep the Parquet file only
                continue
        return out

    @contextmanager
    def hold(self):
        """One connection for a block of operations instead of one each (opening a DuckDB file
        costs ~25 ms).  Other threads and processes wait meanwhile: keep the block short."""
        with _LOCK:
            if self._held is not None or self._mem is not None or self.path == MEMORY:
                yield self
                return
            with self._conn() as con:
                self._held = con
                try:
                    yield self
                finally:
                    self._held = None

    def _upsert(self, table: str, rows: list, cols: Optional[tuple] = None) -> int:
        """INSERT OR REPLACE ``rows`` into ``table`` (into its ``cols``, in that order; None:
        every column, in the table's order); how many."""
        if not rows:
            return 0
        into = f"{table} ({', '.join(cols)}) " if cols else f"{table} "
        with self._conn() as con:
            con.executemany(f"INSERT OR REPLACE INTO {into}VALUES ({', '.join('?' * len(rows[0]))})",
                            rows)
        return len(rows)

    @contextmanager
    def _conn(self):
        """A connection for one operation: opened, used, closed (serialised in-process)."""
        with _LOCK:
            if self._held is not None:
                yield self._held
                return
            if self._mem is None and self.path == MEMORY:
                self._use_memory("")
            if self._mem is not None:
                yield self._mem
                return
            con = self._open_checked()
            if con is None:  # fell back to memory
                yield self._mem
                return
            try:
                yield con
            finally:
                con.close()

    def _open_checked(self):
        """Open the file and (the first time) check its schema; move a bad file aside."""
        import duckdb

        con = None
        try:
            con = self._connect_file()
            if not self._ready:
                try:
                    self._init_schema(con)
                except _NewerSchema as e:
                    con.close()
                    con = None
                    self._move_aside("newer-schema", str(e))
                    con = self._connect_file()
                    self._init_schema(con)
            return con
        except _NoLocks as e:
            self._warn(f"cache file {self.path}: the filesystem does not support file locks "
                       f"({first_line(e)}); using an in-memory cache for this run (nothing is "
                       "kept). Point --cache or PIS_TUI_CACHE at a local disk to keep results")
            self._use_memory("no file locks")
            return None
        except duckdb.Error as e:
            # not a readable DuckDB file (or broken inside): keep it aside, start afresh
            if con is not None:
                try:
                    con.close()
                except Exception:  # noqa: BLE001
                    pass
            self._move_aside("corrupt", first_line(e))
            con = self._connect_file()
            self._init_schema(con)
            return con

    def _move_aside(self, why: str, detail: str) -> None:
        src = Path(self.path)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        dst = src.with_name(f"{src.name}.{why}-{stamp}")
        n = 1
        while dst.exists():
            dst = src.with_name(f"{src.name}.{why}-{stamp}-{n}")
            n += 1
        try:
            if src.exists():
                os.replace(src, dst)
            wal = src.with_name(src.name + ".wal")
            if wal.exists():
                os.replace(wal, dst.with_name(dst.name + ".wal"))
        except OSError as e:
            raise CacheError(f"cache file {src} is unreadable ({detail}) and could not be moved "
                             f"aside ({e.strerror}); remove it or use --cache PATH") from None
        what = "has a newer schema than this pis-tui" if why == "newer-schema" else "is not a readable cache"
        self._warn(f"cache file {src} {what} ({detail}); moved it to {dst} and started a fresh cache")

    def _init_schema(self, con) -> None:
        row = None
        try:
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except Exception as e:  # noqa: BLE001 - no meta table yet (a fresh file)
            if "does not exist" not in str(e) and "not found" not in str(e).lower():
                raise
        if row is not None:
            try:
                v = int(row[0])
            except (TypeError, ValueError):
                raise _NewerSchema(f"schema version {row[0]!r}") from None
            if v > SCHEMA_VERSION:
                raise _NewerSchema(f"schema version {v}, this pis-tui knows {SCHEMA_VERSION}")
        if self.read_only:  # read as it is: nothing can be created or migrated
            if row is None or int(row[0]) < SCHEMA_VERSION:
                raise CacheError(f"cache file {self.path} is read-only and of an older schema "
                                 f"(v{row[0] if row else '?'}) that this pis-tui would have to "
                                 "migrate; use --cache PATH (or PIS_TUI_CACHE) for another one")
            self._ready = True
            return
        for stmt in _SCHEMA:
            con.execute(stmt)
        if row is not None and int(row[0]) < SCHEMA_VERSION:
            for v in range(int(row[0]), SCHEMA_VERSION):
                for stmt in MIGRATIONS.get(v, ()):
                    con.execute(stmt)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        if row is None:
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            con.execute("INSERT OR REPLACE INTO meta VALUES ('created_at', ?)", [to_iso(utcnow())])
        self._ready = True

    def close(self) -> None:
        with _LOCK:
            if self._mem is not None:
                self._mem.close()
                self._mem = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

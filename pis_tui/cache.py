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
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Optional

from .errors import CacheError, UserError
from .measured_table import METHOD_VERSIONS, Measurement, software_versions

SCHEMA_VERSION = 1
DEFAULT_WAIT_S = 10.0
MEMORY = ":memory:"

#: one lock for every cache access in this process
_LOCK = threading.RLock()

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    """CREATE TABLE IF NOT EXISTS op_timings (
        fingerprint VARCHAR NOT NULL, torch_version VARCHAR NOT NULL, cuda_version VARCHAR NOT NULL,
        cusparselt_version VARCHAR NOT NULL, method VARCHAR NOT NULL, method_version INTEGER NOT NULL,
        op_key VARCHAR NOT NULL, op_type VARCHAR, dtype VARCHAR, ms DOUBLE, eager_ms DOUBLE,
        spread DOUBLE, repeats INTEGER, status VARCHAR, note VARCHAR, op_json VARCHAR,
        device_json VARCHAR, measured_at TIMESTAMP,
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
]

DATA_TABLES = ("op_timings", "device_calibration", "sweeps", "validations", "quality_results")
TABLES = DATA_TABLES + ("settings", "meta")

_VALIDATION_COLS = ("model", "fingerprint", "strategy", "sparsity", "achieved_sparsity", "phase",
                    "batch", "length", "predicted_ms", "measured_ms", "dense_predicted_ms",
                    "dense_measured_ms", "predicted_speedup", "measured_speedup", "error")
_QUALITY_COLS = ("model", "strategy", "sparsity", "achieved_sparsity", "ppl_dense", "ppl_pruned",
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


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def _ts(s) -> Optional[datetime]:
    if s is None or s == "":
        return _utcnow()
    if isinstance(s, datetime):
        return s.astimezone(timezone.utc).replace(tzinfo=None) if s.tzinfo else s
    try:
        d = datetime.fromisoformat(str(s))
    except ValueError:
        return _utcnow()
    return d.astimezone(timezone.utc).replace(tzinfo=None) if d.tzinfo else d


def _iso(d) -> str:
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


class Cache:
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

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: Optional[str] = None, *, wait_s: Optional[float] = None,
             on_warning: Optional[Callable[[str], None]] = None) -> "Cache":
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
            raise CacheError(f"cannot use cache file {self.path}: cannot create its directory "
                             f"({e.strerror})") from None
        deadline = time.monotonic() + self.wait_s
        delay = 0.01
        while True:
            try:
                return duckdb.connect(self.path)
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
                    raise CacheError(f"cannot use cache file {self.path}: {_first_line(e)}") from None
                raise

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
                       f"({_first_line(e)}); using an in-memory cache for this run (nothing is "
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
            self._move_aside("corrupt", _first_line(e))
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
        for stmt in _SCHEMA:
            con.execute(stmt)
        if row is None:
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            con.execute("INSERT OR REPLACE INTO meta VALUES ('created_at', ?)", [_iso(_utcnow())])
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

    # ------------------------------------------------------------ op timings

    def put_measurements(self, measurements: Iterable[Measurement], device_info: Optional[dict] = None) -> int:
        """Upsert measurements (keyed by fingerprint + software versions + method + op key)."""
        cur_sw = None
        rows = {}
        dev_json = json.dumps(device_info, sort_keys=True, default=str) if device_info else None
        for m in measurements:
            sw = m.software or cur_sw or software_versions()
            cur_sw = cur_sw or (m.software or sw)
            fp = m.fingerprint or (device_info or {}).get("fingerprint")
            if not fp:
                raise ValueError(f"measurement {m.key} has no device fingerprint")
            key = (fp, sw.get("torch") or "", sw.get("cuda") or "", sw.get("cusparselt") or "",
                   m.method, int(m.method_version), m.key)
            rows[key] = key + (m.op.get("op_type"), m.op.get("dtype"), m.ms, m.eager_ms, m.spread,
                               int(m.repeats or 0), m.status, m.note or "",
                               json.dumps(m.op, sort_keys=True), dev_json, _ts(m.measured_at))
        if not rows:
            return 0
        with self._conn() as con:
            con.executemany("INSERT OR REPLACE INTO op_timings VALUES "
                            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", list(rows.values()))
        return len(rows)

    def get_measurements(self, fingerprint: str, dtype: Optional[str] = None, *,
                         software: Optional[dict] = None, statuses: Optional[Iterable[str]] = None,
                         any_version: bool = False) -> list[Measurement]:
        """Measurements for a device under the CURRENT software versions (torch, CUDA,
        cuSPARSELt, read without importing torch) and current timing-method versions."""
        sw = software or software_versions()
        q = ("SELECT op_key, op_json, ms, eager_ms, spread, repeats, status, note, method, "
             "method_version, fingerprint, torch_version, cuda_version, cusparselt_version, "
             "measured_at FROM op_timings WHERE fingerprint = ?")
        args: list = [fingerprint]
        if not any_version:
            q += " AND torch_version = ? AND cuda_version = ? AND cusparselt_version = ?"
            args += [sw.get("torch") or "", sw.get("cuda") or "", sw.get("cusparselt") or ""]
        if dtype:
            q += " AND dtype = ?"
            args.append(dtype)
        st = tuple(statuses) if statuses else None
        with self._conn() as con:
            rows = con.execute(q + " ORDER BY measured_at", args).fetchall()
        out = {}
        for r in rows:
            if not any_version and METHOD_VERSIONS.get(r[8]) != r[9]:
                continue
            if st and r[6] not in st:
                continue
            out[r[0]] = Measurement(
                key=r[0], op=json.loads(r[1]), ms=r[2], eager_ms=r[3], spread=r[4], repeats=r[5] or 0,
                status=r[6], note=r[7] or "", method=r[8], method_version=r[9], fingerprint=r[10],
                software={"torch": r[11], "cuda": r[12], "cusparselt": r[13]}, measured_at=_iso(r[14]))
        return list(out.values())

    # ------------------------------------------------------------ device calibration

    def put_calibration(self, fingerprint: str, dtype: str, peak_tflops: float, bandwidth_gbs: float,
                        info: Optional[dict] = None, *, software: Optional[dict] = None,
                        method: str = "") -> None:
        sw = software or software_versions()
        info = dict(info or {})
        with self._conn() as con:
            con.execute("INSERT OR REPLACE INTO device_calibration VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [fingerprint, dtype, sw.get("torch") or "", sw.get("cuda") or "",
                         method or info.get("method", ""), float(peak_tflops), float(bandwidth_gbs),
                         json.dumps(info, sort_keys=True, default=str), _ts(info.get("measured_at"))])

    def get_calibration(self, fingerprint: str, dtype: str) -> Optional[dict]:
        """The measured peak (TFLOP/s) and copy bandwidth (GB/s) of a device for a dtype:
        the one taken under the current torch if any, else the latest."""
        sw = software_versions()
        with self._conn() as con:
            r = con.execute(
                "SELECT peak_tflops, bandwidth_gbs, info_json, torch_version, cuda_version, measured_at "
                "FROM device_calibration WHERE fingerprint = ? AND dtype = ? "
                "ORDER BY (torch_version = ? AND cuda_version = ?) DESC, measured_at DESC LIMIT 1",
                [fingerprint, dtype, sw.get("torch") or "", sw.get("cuda") or ""]).fetchone()
        if r is None:
            return None
        info = json.loads(r[2]) if r[2] else {}
        return {**info, "fingerprint": fingerprint, "dtype": dtype, "peak_tflops": r[0],
                "bandwidth_gbs": r[1], "torch_version": r[3], "cuda_version": r[4],
                "measured_at": _iso(r[5])}

    # ------------------------------------------------------------ sweeps

    @staticmethod
    def _sweep_key(key) -> str:
        return key if isinstance(key, str) else json.dumps(key, sort_keys=True, default=str)

    def put_sweep(self, key, result, *, model: str = "", gpu: str = "", scenario=None) -> None:
        """Save a sweep result (a JSON-serialisable object or a JSON string) under ``key``
        (a string, or any JSON-serialisable value such as (model, gpu, scenario))."""
        text = result if isinstance(result, str) else json.dumps(result, default=str)
        with self._conn() as con:
            con.execute("INSERT OR REPLACE INTO sweeps VALUES (?, ?, ?, ?, ?, ?)",
                        [self._sweep_key(key), model, gpu,
                         json.dumps(scenario, sort_keys=True, default=str) if scenario is not None else None,
                         text, _utcnow()])

    def get_sweep(self, key):
        with self._conn() as con:
            r = con.execute("SELECT result_json FROM sweeps WHERE key = ?", [self._sweep_key(key)]).fetchone()
        return json.loads(r[0]) if r else None

    # ------------------------------------------------------------ validations

    def put_validation(self, rows) -> int:
        """Upsert validation results (dicts with the issue-4 columns; model and fingerprint
        required; unknown keys kept in extra_json)."""
        if isinstance(rows, dict):
            rows = [rows]
        vals = {}
        for r in rows:
            r = dict(r)
            missing = [c for c in ("model", "fingerprint", "strategy", "sparsity", "phase", "batch", "length")
                       if r.get(c) is None]
            if missing:
                raise ValueError(f"validation row lacks {', '.join(missing)}")
            extra = {k: v for k, v in r.items() if k not in _VALIDATION_COLS and k != "measured_at"}
            row = tuple(r.get(c) for c in _VALIDATION_COLS) + (
                json.dumps(extra, sort_keys=True, default=str), _ts(r.get("measured_at")))
            vals[(r["model"], r["fingerprint"], r["strategy"], float(r["sparsity"]), r["phase"],
                  int(r["batch"]), int(r["length"]))] = row
        if not vals:
            return 0
        with self._conn() as con:
            con.executemany(f"INSERT OR REPLACE INTO validations VALUES ({', '.join('?' * 17)})",
                            list(vals.values()))
        return len(vals)

    def get_validations(self, model: Optional[str] = None, fingerprint: Optional[str] = None) -> list[dict]:
        q = f"SELECT {', '.join(_VALIDATION_COLS)}, extra_json, measured_at FROM validations WHERE 1=1"
        args = []
        if model:
            q += " AND model = ?"
            args.append(model)
        if fingerprint:
            q += " AND fingerprint = ?"
            args.append(fingerprint)
        with self._conn() as con:
            rows = con.execute(q + " ORDER BY model, strategy, sparsity, phase, batch, length", args).fetchall()
        out = []
        for r in rows:
            d = dict(zip(_VALIDATION_COLS, r[: len(_VALIDATION_COLS)]))
            d.update(json.loads(r[-2]) if r[-2] else {})
            d["measured_at"] = _iso(r[-1])
            out.append(d)
        return out

    # ------------------------------------------------------------ quality results

    def put_quality_results(self, rows) -> int:
        if isinstance(rows, dict):
            rows = [rows]
        vals = {}
        for r in rows:
            r = dict(r)
            missing = [c for c in ("model", "strategy", "sparsity", "text_sha256", "n_tokens") if r.get(c) is None]
            if missing:
                raise ValueError(f"quality row lacks {', '.join(missing)}")
            extra = {k: v for k, v in r.items() if k not in _QUALITY_COLS and k != "measured_at"}
            vals[(r["model"], r["strategy"], float(r["sparsity"]), r["text_sha256"], int(r["n_tokens"]))] = \
                tuple(r.get(c) for c in _QUALITY_COLS) + (json.dumps(extra, sort_keys=True, default=str),
                                                          _ts(r.get("measured_at")))
        if not vals:
            return 0
        with self._conn() as con:
            con.executemany(f"INSERT OR REPLACE INTO quality_results VALUES ({', '.join('?' * 11)})",
                            list(vals.values()))
        return len(vals)

    def get_quality_results(self, model: Optional[str] = None, text_sha256: Optional[str] = None) -> list[dict]:
        q = f"SELECT {', '.join(_QUALITY_COLS)}, extra_json, measured_at FROM quality_results WHERE 1=1"
        args = []
        if model:
            q += " AND model = ?"
            args.append(model)
        if text_sha256:
            q += " AND text_sha256 = ?"
            args.append(text_sha256)
        with self._conn() as con:
            rows = con.execute(q + " ORDER BY model, strategy, sparsity", args).fetchall()
        out = []
        for r in rows:
            d = dict(zip(_QUALITY_COLS, r[: len(_QUALITY_COLS)]))
            d.update(json.loads(r[-2]) if r[-2] else {})
            d["measured_at"] = _iso(r[-1])
            out.append(d)
        return out

    # ------------------------------------------------------------ settings

    def get_setting(self, key: str, default=None):
        with self._conn() as con:
            r = con.execute("SELECT value_json FROM settings WHERE key = ?", [key]).fetchone()
        return json.loads(r[0]) if r else default

    def put_setting(self, key: str, value) -> None:
        with self._conn() as con:
            con.execute("INSERT OR REPLACE INTO settings VALUES (?, ?, ?)",
                        [key, json.dumps(value, default=str), _utcnow()])

    # ------------------------------------------------------------ maintenance

    def info(self) -> dict:
        with self._conn() as con:
            counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES if t != "meta"}
            sv = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            created = con.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()
            devices = con.execute(
                "SELECT fingerprint, torch_version, cuda_version, method, count(*), "
                "count(*) FILTER (WHERE status = 'ok'), max(measured_at) FROM op_timings "
                "GROUP BY ALL ORDER BY 7 DESC").fetchall()
            calib = con.execute("SELECT fingerprint, dtype, peak_tflops, bandwidth_gbs, torch_version "
                                "FROM device_calibration ORDER BY fingerprint, dtype").fetchall()
        size = None
        if not self.in_memory and Path(self.path).exists():
            size = Path(self.path).stat().st_size
            wal = Path(self.path + ".wal")
            if wal.exists():
                size += wal.stat().st_size
        return {
            "path": self.path, "in_memory": self.in_memory, "fallback_reason": self.fallback_reason,
            "size_bytes": size, "schema_version": int(sv[0]) if sv else None,
            "created_at": created[0] if created else None, "tables": counts,
            "devices": [{"fingerprint": d[0], "torch": d[1], "cuda": d[2], "method": d[3], "ops": d[4],
                         "ok": d[5], "last": _iso(d[6])} for d in devices],
            "calibrations": [{"fingerprint": c[0], "dtype": c[1], "peak_tflops": c[2],
                              "bandwidth_gbs": c[3], "torch": c[4]} for c in calib],
            "warnings": list(self.warnings),
        }

    def clear(self, tables: Optional[Iterable[str]] = None) -> dict:
        """Delete the rows of ``tables`` (default: every data table; settings are kept)."""
        names = tuple(tables) if tables else DATA_TABLES
        bad = [t for t in names if t not in TABLES or t == "meta"]
        if bad:
            raise UserError(f"unknown cache table {bad[0]!r}; tables: {', '.join(TABLES[:-1])}")
        out = {}
        with self._conn() as con:
            for t in names:
                out[t] = con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                con.execute(f"DELETE FROM {t}")
            if not self.in_memory:
                con.execute("CHECKPOINT")
        return out

    def export(self, path, table: str = "op_timings", fmt: Optional[str] = None) -> dict:
        """Write a table to Parquet or CSV with DuckDB's own COPY (no pandas).  The format
        comes from ``fmt`` or the file suffix (.parquet/.pq, .csv)."""
        if table not in TABLES:
            raise UserError(f"unknown cache table {table!r}; tables: {', '.join(TABLES)}")
        p = Path(path).expanduser()
        if fmt is None:
            suf = p.suffix.lower()
            fmt = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}.get(suf)
            if fmt is None:
                raise UserError(f"{p}: give a .parquet or .csv file name (or --format)")
        fmt = fmt.lower()
        if fmt not in ("parquet", "csv"):
            raise UserError(f"export format {fmt!r}: use parquet or csv")
        if p.is_dir():
            raise UserError(f"{p}: is a directory, give a file name")
        if not p.parent.is_dir():
            raise UserError(f"{p}: directory {p.parent} does not exist")
        opts = "(FORMAT PARQUET)" if fmt == "parquet" else "(FORMAT CSV, HEADER)"
        target = str(p).replace("'", "''")
        with self._conn() as con:
            n = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            try:
                con.execute(f"COPY (SELECT * FROM {table}) TO '{target}' {opts}")
            except Exception as e:  # noqa: BLE001 - duckdb.IOException and friends
                raise UserError(f"{p}: cannot write ({_first_line(e)})") from None
        return {"path": str(p), "table": table, "format": fmt, "rows": n}


class _NewerSchema(Exception):
    pass


def _first_line(e) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else type(e).__name__


def open_cache(path: Optional[str] = None, **kw) -> Cache:
    """Shorthand for :meth:`Cache.open`."""
    return Cache.open(path, **kw)

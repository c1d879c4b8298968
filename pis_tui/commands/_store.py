"""Where a measuring command (``profile``, ``validate``) keeps what it measures.

The DuckDB cache (:mod:`pis_tui.cache`) where duckdb is installed; otherwise, and with
``--cache none``, a :class:`MemoryStore` with the same methods, kept for the run only (a
bare GPU server often has torch and little else).  ``--cache FILE.json`` keeps such a store
in a JSON file instead, so separate runs share their measurements without duckdb.

(Its natural home is :mod:`pis_tui.cache`; it lives here while that package is being
changed elsewhere.)
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Optional

from ..errors import CacheError, UserError
from ..pricing.measured_table import (METHOD_VERSIONS, Measurement, MeasuredTable, TableError,
                                      now_iso, read_table, software_versions)

STORE_FORMAT = "pis-tui-store/1"
NO_DUCKDB = ("duckdb is not installed: measurements are kept in memory for this run only "
             "(install duckdb to keep them in the cache, or give --cache FILE.json)")


def _sw_key(sw: Optional[dict]) -> tuple:
    sw = sw or {}
    return (sw.get("torch") or "", sw.get("cuda") or "", sw.get("cusparselt") or "")


class MemoryStore:
    """The cache's interface for op timings, calibrations and validations, in memory (or in a
    JSON file when ``path`` is given).  Lookups follow the cache's rules: measurements of the
    current software versions and timing-method versions, the latest per op key."""

    def __init__(self, path: Optional[str] = None, reason: str = ""):
        self.file = Path(path).expanduser() if path else None
        self.path = str(self.file) if self.file else ":memory:"
        self.fallback_reason = reason
        self.warnings: list[str] = []
        self._m: dict = {}  # (fingerprint, sw, method, method_version, key) → Measurement
        self._cal: dict = {}  # (fingerprint, dtype, torch, cuda) → dict
        self._val: dict = {}  # (model, fingerprint, strategy, sparsity, phase, batch, length) → dict
        self._coll: dict = {}  # the cache's collective_timings key → row dict
        if self.file is not None and self.file.exists():
            self._load()

    @property
    def in_memory(self) -> bool:
        return self.file is None

    # ------------------------------------------------------------ file
    def _load(self) -> None:
        try:
            d = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CacheError(f"cannot read the store {self.file}: {e}") from None
        if not isinstance(d, dict) or d.get("format") != STORE_FORMAT:
            raise UserError(f"{self.file} is not a pis-tui store ({STORE_FORMAT!r} expected); "
                            "a --cache FILE.json is written by pis-tui itself")
        self.put_measurements([Measurement.from_dict(m) for m in d.get("measurements", [])], save=False)
        for c in d.get("calibrations", []):
            self._cal[(c["fingerprint"], c["dtype"], c.get("torch_version", ""),
                       c.get("cuda_version", ""))] = c
        for v in d.get("validations", []):
            self._val[self._val_key(v)] = v
        self.put_collectives(d.get("collectives", []), save=False)

    def _save(self) -> None:
        if self.file is None:
            return
        d = {"format": STORE_FORMAT, "saved_at": now_iso(),
             "measurements": [m.to_dict() for m in self._m.values()],
             "calibrations": list(self._cal.values()), "validations": list(self._val.values()),
             "collectives": list(self._coll.values())}
        tmp = self.file.with_name(self.file.name + f".tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(d, default=str), encoding="utf-8")
            os.replace(tmp, self.file)
        except OSError as e:
            raise CacheError(f"cannot write the store {self.file} ({e.strerror})") from None

    # ------------------------------------------------------------ op timings
    def put_measurements(self, measurements: Iterable[Measurement], device_info: Optional[dict] = None,
                         save: bool = True) -> int:
        n = 0
        for m in measurements:
            fp = m.fingerprint or (device_info or {}).get("fingerprint")
            if not fp:
                raise ValueError(f"measurement {m.key} has no device fingerprint")
            m.fingerprint = fp
            m.software = dict(m.software or software_versions())
            self._m[(fp, _sw_key(m.software), m.method, int(m.method_version), m.key)] = m
            n += 1
        if n and save:
            self._save()
        return n

    def get_measurements(self, fingerprint: str, dtype: Optional[str] = None, *,
                         software: Optional[dict] = None, statuses: Optional[Iterable[str]] = None,
                         any_version: bool = False) -> list:
        sw = _sw_key(software or software_versions())
        st = tuple(statuses) if statuses else None
        out: dict = {}
        for (fp, msw, method, mv, key), m in sorted(self._m.items(), key=lambda kv: kv[1].measured_at or ""):
            if fp != fingerprint:
                continue
            if not any_version and (msw != sw or METHOD_VERSIONS.get(method) != mv):
                continue
            if dtype and m.dtype != dtype:
                continue
            if st and m.status not in st:
                continue
            out[key] = m
        return list(out.values())

    def put_calibration(self, fingerprint: str, dtype: str, peak_tflops: float, bandwidth_gbs: float,
                        info: Optional[dict] = None, *, software: Optional[dict] = None,
                        method: str = "") -> None:
        sw = software or software_versions()
        self._cal[(fingerprint, dtype, sw.get("torch") or "", sw.get("cuda") or "")] = {
            **dict(info or {}), "fingerprint": fingerprint, "dtype": dtype,
            "peak_tflops": float(peak_tflops), "bandwidth_gbs": float(bandwidth_gbs),
            "torch_version": sw.get("torch") or "", "cuda_version": sw.get("cuda") or "",
            "method": method or (info or {}).get("method", ""),
            "measured_at": (info or {}).get("measured_at") or now_iso()}
        self._save()

    def get_calibration(self, fingerprint: str, dtype: str) -> Optional[dict]:
        sw = software_versions()
        rows = [c for (fp, dt, _, _), c in self._cal.items() if fp == fingerprint and dt == dtype]
        if not rows:
            return None
        rows.sort(key=lambda c: ((c.get("torch_version"), c.get("cuda_version"))
                                 == (sw.get("torch") or "", sw.get("cuda") or ""),
                                 str(c.get("measured_at", ""))), reverse=True)
        return dict(rows[0])

    # ------------------------------------------------------------ validations
    @staticmethod
    def _val_key(r: dict) -> tuple:
        return (r["model"], r["fingerprint"], r["strategy"], float(r["sparsity"]), r["phase"],
                int(r["batch"]), int(r["length"]))

    def put_validation(self, rows) -> int:
        if isinstance(rows, dict):
            rows = [rows]
        n = 0
        for r in rows:
            missing = [c for c in ("model", "fingerprint", "strategy", "sparsity", "phase", "batch",
                                   "length") if r.get(c) is None]
            if missing:
                raise ValueError(f"validation row lacks {', '.join(missing)}")
            self._val[self._val_key(r)] = dict(r)
            n += 1
        if n:
            self._save()
        return n

    def get_validations(self, model: Optional[str] = None, fingerprint: Optional[str] = None) -> list:
        return [dict(v) for k, v in sorted(self._val.items(), key=lambda kv: str(kv[0]))
                if (model is None or k[0] == model) and (fingerprint is None or k[1] == fingerprint)]

    def get_quality_results(self, model: str) -> list:
        return []

    def get_acceptance(self, model: str) -> list:
        return []

    # ------------------------------------------------------------ collectives
    def put_collectives(self, rows, save: bool = True) -> int:
        from ..cache.collectives import collective_key

        n = 0
        for r in rows:
            k = collective_key(r)
            self._coll[k] = {**dict(r), "torch_version": k[6], "method_version": k[7]}
            n += 1
        if n and save:
            self._save()
        return n

    def get_collectives(self, fingerprint: str, backend: Optional[str] = None,
                        world_size: Optional[int] = None, *, any_version: bool = False) -> list:
        from ..pricing.measured_table import COLLECTIVE_METHOD_VERSION

        torch_v = software_versions().get("torch") or ""
        return [dict(r) for k, r in self._coll.items()
                if k[0] == fingerprint and (backend is None or k[1] == backend)
                and (world_size is None or k[2] == int(world_size))
                and (any_version or (k[6] == torch_v and k[7] == COLLECTIVE_METHOD_VERSION))]

    # ------------------------------------------------------------ the cache's housekeeping
    @contextmanager
    def hold(self):
        yield self

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def add_store_arg(p) -> None:
    """``--cache`` of a measuring command: the DuckDB file, ``none`` or a JSON file."""
    p.add_argument("--cache", default=None, metavar="PATH|none|FILE.json",
                   help="DuckDB cache file (default: $PIS_TUI_CACHE or the user cache dir); "
                        "'none': in memory for this run (also the fallback, with a warning, "
                        "where duckdb is not installed); FILE.json: a JSON file instead of DuckDB")


def duckdb_available() -> bool:
    try:
        import duckdb  # noqa: F401
    except ImportError:
        return False
    return True


def open_store(path: Optional[str], on_warning: Optional[Callable[[str], None]] = None):
    """The store a measuring command uses for ``--cache PATH``: ``none`` → in memory for the
    run; ``*.json`` → a JSON-file store; else the DuckDB cache (at PATH, or the default),
    falling back to memory with one warning where duckdb is not installed.  Without
    ``path``, ``$PIS_TUI_CACHE`` may say ``none`` or a JSON file too."""
    path = path if path is not None else (os.environ.get("PIS_TUI_CACHE") or None)
    if path is not None and str(path).strip().lower() == "none":
        return MemoryStore(None, "--cache none")
    if path is not None and str(path).lower().endswith(".json"):
        p = Path(path).expanduser()
        if p.is_dir() or not p.parent.is_dir():
            raise UserError(f"--cache {path}: {'is a directory' if p.is_dir() else 'its folder does not exist'}")
        return MemoryStore(str(p))
    if not duckdb_available():
        store = MemoryStore(None, "duckdb is not installed")
        store.warnings.append(NO_DUCKDB)
        if on_warning is not None:
            on_warning(NO_DUCKDB)
        else:
            import sys

            print(f"pis-tui: warning: {NO_DUCKDB}", file=sys.stderr)
        return store
    from ..cache import Cache

    return Cache.open(path, on_warning=on_warning)


def check_table_is_local(table: MeasuredTable, path: str, fingerprint: str) -> None:
    """A measured table can stand in for this device's measurements only when it was taken on
    this device, under this torch/CUDA/cuSPARSELt and this timing method's version."""
    if table.fingerprint != fingerprint:
        raise UserError(f"{path} was measured on {table.fingerprint or 'an unnamed device'}, "
                        f"not on this device ({fingerprint}): its times cannot be reused here")
    if METHOD_VERSIONS.get(table.method) != table.method_version:
        raise UserError(f"{path} was timed with {table.method} v{table.method_version}; this "
                        f"pis-tui times with v{METHOD_VERSIONS.get(table.method)}")
    if _sw_key(table.software) != _sw_key(software_versions()):
        raise UserError(f"{path} was measured under torch/CUDA/cuSPARSELt "
                        f"{'/'.join(_sw_key(table.software))}, this machine has "
                        f"{'/'.join(_sw_key(software_versions()))}")


def read_local_table(path: str, fingerprint: str) -> MeasuredTable:
    try:
        table = read_table(path)
    except TableError as e:
        raise UserError(str(e)) from None
    check_table_is_local(table, path, fingerprint)
    return table


def reuse_table(store, path: str, fingerprint: str) -> tuple[int, MeasuredTable]:
    """Put the entries of a measured table (``pis-tui calibrate --out``) taken on THIS device,
    under this software and timing method, into ``store`` so they are not measured again.
    A table of another device, torch/CUDA or method version is refused (UserError)."""
    table = read_local_table(path, fingerprint)
    entries = [m for m in table.entries if m.status in ("ok", "unsupported", "oom")]
    for m in entries:
        m.software = {k: table.software.get(k, "") for k in ("torch", "cuda", "cusparselt")}
        m.note = "; ".join(x for x in (m.note, f"from {Path(path).name}") if x)
    store.put_measurements(entries, table.device)
    return len(entries), table

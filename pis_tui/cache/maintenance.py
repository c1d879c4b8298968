"""What is in the cache, clearing it and exporting a table."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from ..errors import UserError
from .store import DATA_TABLES, TABLES, first_line, is_corruption, to_iso


class Maintenance:
    """info, clear and export (mixed into :class:`pis_tui.cache.Cache`)."""

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
            colls = con.execute(
                "SELECT fingerprint, backend, world_size, count(*), "
                "count(*) FILTER (WHERE status = 'unstable'), max(measured_at) "
                "FROM collective_timings GROUP BY ALL ORDER BY 1, 3").fetchall()
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
                         "ok": d[5], "last": to_iso(d[6])} for d in devices],
            "calibrations": [{"fingerprint": c[0], "dtype": c[1], "peak_tflops": c[2],
                              "bandwidth_gbs": c[3], "torch": c[4]} for c in calib],
            "collectives": [{"fingerprint": c[0], "backend": c[1], "world_size": c[2], "rows": c[3],
                             "unstable": c[4], "last": to_iso(c[5])} for c in colls],
            "warnings": list(self.warnings),
        }

    def clear(self, tables: Optional[Iterable[str]] = None, *, fingerprint: Optional[str] = None,
              op_type: Optional[str] = None, op_keys: Optional[Iterable[str]] = None,
              model: Optional[str] = None, status: Optional[str] = None) -> dict:
        """Delete the rows of ``tables`` (default: every data table; settings are kept).

        Filters narrow it: ``fingerprint`` (a device), ``op_type`` (gemm, attention,
        elementwise, overhead; collective: the collective_timings), ``op_keys`` (these kernels), ``model`` (a model's validations,
        quality results and sweeps), ``status`` (e.g. unstable).  A table is cleared only when
        every given filter applies to it (it has the column); the others are left alone."""
        names = tuple(tables) if tables else DATA_TABLES
        bad = [t for t in names if t not in TABLES or t == "meta"]
        if bad:
            raise UserError(f"unknown cache table {bad[0]!r}; tables: {', '.join(TABLES[:-1])}")
        keys = None if op_keys is None else sorted(set(op_keys))
        out = {}
        with self._conn() as con:
            for t in names:
                cols = {r[0] for r in con.execute(f"DESCRIBE {t}").fetchall()}
                wheres, args, applies = [], [], True
                for col, val in (("fingerprint", fingerprint), ("op_type", op_type),
                                 ("status", status)):
                    if val is not None:
                        applies &= col in cols
                        wheres.append(f"{col} = ?")
                        args.append(val)
                if model is not None and "model" in cols:
                    wheres.append("model = ?")
                    args.append(model)
                elif keys is not None or model is not None:
                    # a model's kernels: op timings have no model column, the caller gives the keys
                    applies &= "op_key" in cols and keys is not None
                    wheres.append("list_contains(?, op_key)")
                    args.append(keys or [])
                if not applies:
                    continue
                where = f" WHERE {' AND '.join(wheres)}" if wheres else ""
                out[t] = con.execute(f"SELECT count(*) FROM {t}{where}", args).fetchone()[0]
                con.execute(f"DELETE FROM {t}{where}", args)
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
                if is_corruption(e):
                    raise  # the cache's own corrupt path, not the output file's problem
                raise UserError(f"{p}: cannot write ({first_line(e)})") from None
        return {"path": str(p), "table": table, "format": fmt, "rows": n}

"""Results kept beside the timings: sweeps, validations, measured quality, the explorer's settings."""

from __future__ import annotations

import json
from typing import Optional

from .store import QUALITY_COLS, VALIDATION_COLS, to_iso, to_ts, utcnow


class RecordsTables:
    """Sweeps, validations, measured quality and settings (mixed into :class:`pis_tui.cache.Cache`)."""

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
                         text, utcnow()])

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
            extra = {k: v for k, v in r.items() if k not in VALIDATION_COLS and k != "measured_at"}
            row = tuple(r.get(c) for c in VALIDATION_COLS) + (
                json.dumps(extra, sort_keys=True, default=str), to_ts(r.get("measured_at")))
            vals[(r["model"], r["fingerprint"], r["strategy"], float(r["sparsity"]), r["phase"],
                  int(r["batch"]), int(r["length"]))] = row
        if not vals:
            return 0
        with self._conn() as con:
            con.executemany(f"INSERT OR REPLACE INTO validations VALUES ({', '.join('?' * 17)})",
                            list(vals.values()))
        return len(vals)

    def get_validations(self, model: Optional[str] = None, fingerprint: Optional[str] = None) -> list[dict]:
        q = f"SELECT {', '.join(VALIDATION_COLS)}, extra_json, measured_at FROM validations WHERE 1=1"
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
            d = dict(zip(VALIDATION_COLS, r[: len(VALIDATION_COLS)]))
            d.update(json.loads(r[-2]) if r[-2] else {})
            d["measured_at"] = to_iso(r[-1])
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
            extra = {k: v for k, v in r.items() if k not in QUALITY_COLS and k != "measured_at"}
            vals[(r["model"], r["strategy"], float(r["sparsity"]), r["text_sha256"], int(r["n_tokens"]))] = \
                tuple(r.get(c) for c in QUALITY_COLS) + (json.dumps(extra, sort_keys=True, default=str),
                                                          to_ts(r.get("measured_at")))
        if not vals:
            return 0
        with self._conn() as con:
            con.executemany(f"INSERT OR REPLACE INTO quality_results VALUES ({', '.join('?' * 11)})",
                            list(vals.values()))
        return len(vals)

    def get_quality_results(self, model: Optional[str] = None, text_sha256: Optional[str] = None) -> list[dict]:
        q = f"SELECT {', '.join(QUALITY_COLS)}, extra_json, measured_at FROM quality_results WHERE 1=1"
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
            d = dict(zip(QUALITY_COLS, r[: len(QUALITY_COLS)]))
            d.update(json.loads(r[-2]) if r[-2] else {})
            d["measured_at"] = to_iso(r[-1])
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
                        [key, json.dumps(value, default=str), utcnow()])

    # ------------------------------------------------------------ maintenance

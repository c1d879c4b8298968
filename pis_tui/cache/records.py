"""Results kept beside the timings: sweeps, validations, measured quality, the explorer's settings."""

from __future__ import annotations

import json
from typing import Callable, Optional

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
        return self._put_records(
            "validations", VALIDATION_COLS, rows, "validation",
            ("model", "fingerprint", "strategy", "sparsity", "phase", "batch", "length"),
            lambda r: (r["model"], r["fingerprint"], r["strategy"], float(r["sparsity"]), r["phase"],
                       int(r["batch"]), int(r["length"])))

    def get_validations(self, model: Optional[str] = None, fingerprint: Optional[str] = None) -> list[dict]:
        return self._get_records("validations", VALIDATION_COLS,
                                 {"model": model, "fingerprint": fingerprint},
                                 "model, strategy, sparsity, phase, batch, length")

    # ------------------------------------------------------------ quality results

    def put_quality_results(self, rows) -> int:
        return self._put_records(
            "quality_results", QUALITY_COLS, rows, "quality",
            ("model", "strategy", "sparsity", "text_sha256", "n_tokens"),
            lambda r: (r["model"], r["strategy"], float(r["sparsity"]), r["text_sha256"],
                       int(r["n_tokens"])))

    def get_quality_results(self, model: Optional[str] = None, text_sha256: Optional[str] = None) -> list[dict]:
        return self._get_records("quality_results", QUALITY_COLS,
                                 {"model": model, "text_sha256": text_sha256},
                                 "model, strategy, sparsity")

    def get_acceptance(self, model: Optional[str] = None) -> list[dict]:
        """Measured quality rows that carry a draft's acceptance rates (``pis-tui quality
        --acceptance``), newest last: what a plan's speculative candidates read."""
        return [r for r in self.get_quality_results(model)
                if r.get("greedy_acceptance") is not None or r.get("sampling_acceptance") is not None]

    # ------------------------------------------------------------ records: columns, extra_json, measured_at

    def _put_records(self, table: str, cols: tuple, rows, what: str, required: tuple,
                     key: Callable[[dict], tuple]) -> int:
        """Upsert records (a dict or dicts) into ``table``: its ``cols``, the other keys in
        extra_json, then measured_at; the last of the records with one ``key`` wins.  A
        ValueError names the ``required`` columns a record lacks."""
        if isinstance(rows, dict):
            rows = [rows]
        vals = {}
        for r in rows:
            r = dict(r)
            missing = [c for c in required if r.get(c) is None]
            if missing:
                raise ValueError(f"{what} row lacks {', '.join(missing)}")
            extra = {k: v for k, v in r.items() if k not in cols and k != "measured_at"}
            row = tuple(r.get(c) for c in cols) + (
                json.dumps(extra, sort_keys=True, default=str), to_ts(r.get("measured_at")))
            vals[key(r)] = row
        return self._upsert(table, list(vals.values()))

    def _get_records(self, table: str, cols: tuple, where: dict, order: str) -> list[dict]:
        """The records of ``table`` whose columns equal ``where``'s values (a None or empty
        value: any), in ``order``: each its columns, its extra keys and measured_at."""
        q = f"SELECT {', '.join(cols)}, extra_json, measured_at FROM {table} WHERE 1=1"
        args = []
        for col, value in where.items():
            if value:
                q += f" AND {col} = ?"
                args.append(value)
        with self._conn() as con:
            rows = con.execute(f"{q} ORDER BY {order}", args).fetchall()
        out = []
        for r in rows:
            d = dict(zip(cols, r[: len(cols)]))
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

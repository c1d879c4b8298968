"""Op timings and device calibrations: what was measured on which device, under which software."""

from __future__ import annotations

import json
from typing import Iterable, Optional

from ..pricing.measured_table import METHOD_VERSIONS, Measurement, software_versions
from .store import to_iso, to_ts

#: op_timings' columns, in the order put_measurements writes them
OP_TIMING_COLS = ("fingerprint", "torch_version", "cuda_version", "cusparselt_version", "method",
                  "method_version", "op_key", "op_type", "dtype", "ms", "eager_ms", "spread",
                  "repeats", "status", "note", "op_json", "device_json", "measured_at",
                  "conditions_json")


class TimingsTables:
    """Op timings and device calibrations (mixed into :class:`pis_tui.cache.Cache`)."""

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
                               json.dumps(m.op, sort_keys=True), dev_json, to_ts(m.measured_at),
                               json.dumps(m.conditions, sort_keys=True, default=str)
                               if m.conditions else None)
        return self._upsert("op_timings", list(rows.values()), OP_TIMING_COLS)

    def get_measurements(self, fingerprint: str, dtype: Optional[str] = None, *,
                         software: Optional[dict] = None, statuses: Optional[Iterable[str]] = None,
                         any_version: bool = False) -> list[Measurement]:
        """Measurements for a device under the CURRENT software versions (torch, CUDA,
        cuSPARSELt, read without importing torch) and current timing-method versions."""
        sw = software or software_versions()
        q = ("SELECT op_key, op_json, ms, eager_ms, spread, repeats, status, note, method, "
             "method_version, fingerprint, torch_version, cuda_version, cusparselt_version, "
             "measured_at, conditions_json FROM op_timings WHERE fingerprint = ?")
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
                software={"torch": r[11], "cuda": r[12], "cusparselt": r[13]}, measured_at=to_iso(r[14]),
                conditions=json.loads(r[15]) if r[15] else {})
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
                         json.dumps(info, sort_keys=True, default=str), to_ts(info.get("measured_at"))])

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
                "measured_at": to_iso(r[5])}

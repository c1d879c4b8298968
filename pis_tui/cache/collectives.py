"""Collectives measured through torch.distributed (tensor parallelism): what was timed on which
device, over which backend and world size, for which message size."""

from __future__ import annotations

import json
from typing import Iterable, Optional

from ..pricing.measured_table import COLLECTIVE_METHOD_VERSION, software_versions
from .store import COLLECTIVE_COLS, to_iso, to_ts


def collective_key(row: dict) -> tuple:
    """The key a collective measurement is stored under (the table's primary key)."""
    sw = software_versions()
    return (row["fingerprint"], row["backend"], int(row["world_size"]), row["collective"],
            row["dtype"], int(row["bytes"]), row.get("torch_version") or sw.get("torch") or "",
            int(row.get("method_version") or COLLECTIVE_METHOD_VERSION))


class CollectiveTables:
    """collective_timings (mixed into :class:`pis_tui.cache.Cache`)."""

    def put_collectives(self, rows: Iterable[dict]) -> int:
        """Upsert measured collectives (dicts: fingerprint, backend, world_size, collective,
        dtype, bytes, ms, spread, busbw_gbs, rounds, iters, status, note, conditions, device,
        measured_at; torch and method versions default to the current ones)."""
        vals = {}
        for r in rows:
            k = collective_key(r)
            vals[k] = k + ("collective", r.get("ms"), r.get("spread"), r.get("busbw_gbs"),
                           int(r.get("rounds") or 0), int(r.get("iters") or 0),
                           r.get("status", "ok"), r.get("note", ""),
                           json.dumps(r.get("conditions") or {}, sort_keys=True, default=str),
                           json.dumps(r.get("device") or {}, sort_keys=True, default=str),
                           to_ts(r.get("measured_at")))
        return self._upsert("collective_timings", list(vals.values()), COLLECTIVE_COLS)

    def get_collectives(self, fingerprint: str, backend: Optional[str] = None,
                        world_size: Optional[int] = None, *, any_version: bool = False) -> list[dict]:
        """The collectives measured on a device (under the current torch and method version
        unless ``any_version``), newest last."""
        q = f"SELECT {', '.join(COLLECTIVE_COLS)} FROM collective_timings WHERE fingerprint = ?"
        args: list = [fingerprint]
        if not any_version:
            q += " AND torch_version = ? AND method_version = ?"
            args += [software_versions().get("torch") or "", COLLECTIVE_METHOD_VERSION]
        if backend:
            q += " AND backend = ?"
            args.append(backend)
        if world_size:
            q += " AND world_size = ?"
            args.append(int(world_size))
        with self._conn() as con:
            rows = con.execute(q + " ORDER BY measured_at", args).fetchall()
        out = []
        for r in rows:
            d = dict(zip(COLLECTIVE_COLS, r))
            d["conditions"] = json.loads(d.pop("conditions_json") or "{}")
            d["device"] = json.loads(d.pop("device_json") or "{}")
            d["measured_at"] = to_iso(d["measured_at"])
            out.append(d)
        return out

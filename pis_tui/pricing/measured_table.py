"""Measurements as plain data, and the measured-table file format of ``profiles/measured/``.

This module is deliberately light: no torch, no duckdb, no platformdirs.  It is what
``pis-tui calibrate`` uses to write a table on a GPU server where only torch is installed,
what the estimator uses to load a shipped table, and where the :class:`Measurement` value
type lives (``timing`` produces them, ``cache`` stores and returns them).

Table format (``"format": "pis-tui-measured/1"``), one JSON object::

    {
      "format": "pis-tui-measured/1",
      "device":   {"name", "display_name", "kind", "fingerprint", "driver", "capability",
                   "memory_gb", "l2_mb", "sm_count", "threads", "clocks", ...},
      "software": {"torch": "2.11.0", "cuda": "13.0", "cusparselt": "0.7.1"|null, "python": ...},
      "method":   "cuda-graph" | "cpu-wall",  "method_version": 1,
      "method_doc": "how the times were taken",
      "date":     "2026-07-01T12:00:00+00:00",
      "dtypes":   ["bf16"],
      "calibration": {"bf16": {"peak_tflops": ..., "bandwidth_gbs": ...}},
      "entries":  [{"key", "op": {dataclasses.asdict(op)}, "ms", "eager_ms", "spread",
                    "repeats", "status", "note"}, ...]
    }

``ms`` is the time the estimator uses for one call of the op: on CUDA the per-call time of a
CUDA-graph replay of a batch of calls, on the CPU the multithreaded wall time per call.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

FORMAT = "pis-tui-measured/1"

#: timing methods and their current versions (bump a version when the way a method times
#: changes; the cache then ignores older measurements instead of mixing them in).
METHOD_VERSIONS = {"cuda-graph": 1, "cpu-wall": 4}
#: collectives (tensor parallelism) timed through torch.distributed: the method's version keys
#: the cache's collective_timings (pis_tui.timing.collectives says how)
COLLECTIVE_METHOD = "torch-distributed"
COLLECTIVE_METHOD_VERSION = 1

METHOD_DOCS = {
    "cuda-graph": (
        "CUDA: weights/KV caches rotated among enough copies to exceed L2 (a forward pass "
        "streams its weights), warm-up, then a batch of calls captured in a CUDA graph and "
        "replayed; ms = replay time / calls (CUDA events), median over repeats; eager_ms = "
        "one eager call timed alone with CUDA events (includes launch overhead); "
        "spread = IQR / median of the replays."),
    "cpu-wall": (
        "CPU: torch.get_num_threads() threads, weights/KV caches rotated past the last-level "
        "cache, warm-up, then batches of calls timed with time.perf_counter; each op is "
        "measured in 3 rounds interleaved with the other ops of a group (~2 s per round in a "
        "profile, ~30 s for validate) (a burst of another process spoils a round, not the "
        "op), and in up to 6 until its two fastest rounds agree within 10%; before each round "
        "a contention probe (a small GEMM on all threads against one) marks the round "
        "contended, and contended rounds are not used; ms = eager_ms = wall time per call of "
        "the second-fastest uncontended round (each round the median of its batches; another "
        "process only slows a round down); spread = (second fastest - fastest) / second "
        "fastest; conditions keep every round's time, its load average and whether it was "
        "contended.  An op with fewer than 2 uncontended rounds, or whose two fastest differ "
        "by more than 25%, is re-measured once later and stored 'unstable' if it stays so; a "
        "kernel more than 15% (same N, K, along M) or 25% (other shapes of its kind) slower "
        "than one doing more work is re-measured, then stored 'unstable'.  v4: contended "
        "rounds dropped, unstable status (v3: rounds; v2: median of 3 rounds; v1: one burst)."),
}

#: ``unstable``: timed, but its rounds disagree, were taken under contention, or it is slower
#: than a kernel of its kind doing more work (``conditions["unstable"]`` says why); priced no
#: better than interpolated
STATUSES = ("ok", "unstable", "unsupported", "oom", "error")


@dataclass
class Measurement:
    """One op timed on one device (one call; the op's ``count`` is ignored)."""

    key: str
    op: dict
    ms: Optional[float]
    eager_ms: Optional[float] = None
    spread: Optional[float] = None
    repeats: int = 0
    status: str = "ok"  # ok | unstable | unsupported | oom | error
    note: str = ""
    method: str = ""
    method_version: int = 0
    fingerprint: str = ""
    software: dict = field(default_factory=dict)
    measured_at: str = ""
    #: what it was measured under: rounds' times, loads and contention (CPU), clocks and other
    #: processes on the GPU; "unstable": the reasons, where it is
    conditions: dict = field(default_factory=dict)

    @property
    def timed(self) -> bool:
        """A time was taken (ok or unstable)."""
        return self.status in ("ok", "unstable") and self.ms is not None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.ms is not None

    @property
    def dtype(self) -> str:
        return str(self.op.get("dtype", ""))

    def to_op(self):
        from ..model.ops import op_from_dict

        return op_from_dict(self.op)

    def to_entry(self) -> dict:
        """The compact form stored in a measured table."""
        d = {"key": self.key, "op": self.op, "ms": self.ms, "eager_ms": self.eager_ms,
             "spread": self.spread, "repeats": self.repeats, "status": self.status,
             "note": self.note}
        if self.conditions:
            d["conditions"] = self.conditions
        return d

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Measurement":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# ---------------------------------------------------------------- software versions


def _dist_version(*names: str) -> Optional[str]:
    import importlib.metadata  # here: ~20 ms an estimate-only command need not pay

    for n in names:
        try:
            return importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _torch_cuda_version() -> Optional[str]:
    """torch.version.cuda, read from torch/version.py without importing torch."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "version.py"
        try:
            text = p.read_text(encoding="utf-8")
        except OSError:
            continue
        m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
        return m.group(1) if m else None
    return None


def software_versions() -> dict:
    """The versions that key measurements: torch, its CUDA, cuSPARSELt (None when absent).

    Read from package metadata and ``torch/version.py``, never by importing torch, so the
    cache can look measurements up on the fast estimate path; ``timing`` uses the same
    function, so what it stores matches what is looked up.  Read once per process (a
    metadata lookup scans sys.path: ~25 ms, on every sweep of the explorer otherwise).
    """
    return dict(_software_versions())


@lru_cache(maxsize=1)
def _software_versions() -> dict:
    torch_v = _dist_version("torch")
    if torch_v is None and "torch" in __import__("sys").modules:  # pragma: no cover - odd installs
        import torch

        torch_v = torch.__version__
    cuda = _torch_cuda_version()
    cusparselt = None
    if cuda:
        cusparselt = _dist_version("nvidia-cusparselt-cu13", "nvidia-cusparselt-cu12",
                                   "nvidia-cusparselt", "cusparselt")
    return {"torch": torch_v or "", "cuda": cuda or "", "cusparselt": cusparselt or ""}


def method_for_kind(kind: str) -> str:
    """Timing method used for a device kind ("gpu"/"cuda" or "cpu")."""
    return "cuda-graph" if kind in ("gpu", "cuda") else "cpu-wall"


# ---------------------------------------------------------------- the table file


@dataclass
class MeasuredTable:
    device: dict
    software: dict
    method: str
    method_version: int
    date: str
    entries: list  # list[Measurement]
    calibration: dict = field(default_factory=dict)
    dtypes: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return str(self.device.get("fingerprint", ""))

    def ok_entries(self) -> list:
        return [m for m in self.entries if m.ok]

    def by_key(self) -> dict:
        return {m.key: m for m in self.entries}

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "device": self.device,
            "software": self.software,
            "method": self.method,
            "method_version": self.method_version,
            "method_doc": METHOD_DOCS.get(self.method, ""),
            "date": self.date,
            "dtypes": sorted(set(self.dtypes or [m.dtype for m in self.entries])),
            "calibration": self.calibration,
            **self.extra,
            "entries": [m.to_entry() for m in self.entries],
        }


class TableError(ValueError):
    """A measured table that cannot be read (the message names the file and the problem)."""


def build_table(measurements: Iterable[Measurement], device: dict, *, software: Optional[dict] = None,
                calibration: Optional[dict] = None, method: Optional[str] = None,
                extra: Optional[dict] = None) -> MeasuredTable:
    ms = list(measurements)
    if method is None:
        method = ms[0].method if ms and ms[0].method else method_for_kind(device.get("kind", "cpu"))
    sw = dict(software or software_versions())
    sw.setdefault("python", platform.python_version())
    return MeasuredTable(device=dict(device), software=sw, method=method,
                         method_version=METHOD_VERSIONS.get(method, 0), date=now_iso(),
                         entries=ms, calibration=dict(calibration or {}),
                         dtypes=sorted({m.dtype for m in ms}), extra=dict(extra or {}))


def write_table(path, table: MeasuredTable) -> Path:
    """Write a table atomically (a temporary file renamed into place)."""
    p = Path(path).expanduser()
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(table.to_dict(), f, indent=1)
        f.write("\n")
    os.replace(tmp, p)
    return p


def read_table(path) -> MeasuredTable:
    p = Path(path)
    try:
        with open(p, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise TableError(f"{p}: malformed JSON (line {e.lineno}: {e.msg})") from None
    except OSError as e:
        raise TableError(f"{p}: cannot read ({e.strerror})") from None
    return table_from_dict(d, str(p))


@lru_cache(maxsize=8)
def load_shipped(name: str) -> tuple[Optional[MeasuredTable], Optional[str]]:
    """The table a GPU profile names (``profiles/measured/<name>``), read and checked: its
    format, and its timing method's version against this pis-tui's (an older method is not
    mixed in, as in the cache).  Returns (table, None), or (None, one warning naming the file)
    when it cannot be used."""
    from ..shipped import profile_path

    path = profile_path("measured", name)
    try:
        table = read_table(path)
    except TableError as e:
        return None, f"measured table not used: {e}"
    current = METHOD_VERSIONS.get(table.method)
    if current is None:
        return None, f"measured table not used: {path}: unknown timing method {table.method!r}"
    if table.method_version != current:
        return None, (f"measured table not used: {path} was timed with {table.method} "
                      f"v{table.method_version}, this pis-tui times with v{current} (re-run "
                      "pis-tui calibrate on that GPU)")
    return table, None


def table_from_dict(d: dict, where: str = "table") -> MeasuredTable:
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise TableError(f"{where}: not a pis-tui measured table (format {FORMAT!r} expected)")
    for k in ("device", "software", "method", "entries"):
        if k not in d:
            raise TableError(f"{where}: missing {k!r}")
    device, software = d["device"], d["software"]
    method = d["method"]
    mv = int(d.get("method_version", 0))
    entries = []
    for i, e in enumerate(d["entries"]):
        try:
            entries.append(Measurement(
                key=e["key"], op=e["op"], ms=e.get("ms"), eager_ms=e.get("eager_ms"),
                spread=e.get("spread"), repeats=int(e.get("repeats", 0)),
                status=e.get("status", "ok"), note=e.get("note", ""), method=method,
                conditions=dict(e.get("conditions") or {}),
                method_version=mv, fingerprint=device.get("fingerprint", ""),
                software=dict(software), measured_at=d.get("date", "")))
        except (KeyError, TypeError, ValueError) as ex:
            raise TableError(f"{where}: entry {i} is malformed ({ex})") from None
    known = {"format", "device", "software", "method", "method_version", "method_doc", "date",
             "dtypes", "calibration", "entries"}
    return MeasuredTable(device=device, software=software, method=method, method_version=mv,
                         date=d.get("date", ""), entries=entries,
                         calibration=d.get("calibration", {}), dtypes=d.get("dtypes", []),
                         extra={k: v for k, v in d.items() if k not in known})

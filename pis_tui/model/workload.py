"""Workloads: the traffic one deployed model serves, and the presets for common shapes.

A :class:`Workload` is one request class (prompts of about ``prompt_len`` tokens, answers of
``output_len`` tokens, ``concurrency`` requests at once) or a small weighted mix of such
classes, with optional targets for the time to first token (TTFT) and the time per output
token (TPOT).  Weights are shares of the requests; they are normalised to sum to 1.

Pure data and parsing (no engine work); every mistake is a :class:`~pis_tui.errors.UserError`
with one line that says what to change.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from ..errors import UserError

MAX_TOKENS = 1 << 20  # the scenario's limit on any length or batch


@dataclass(frozen=True)
class RequestClass:
    """Requests of one shape: prompt and answer lengths (tokens), how many at once."""

    name: str
    prompt_len: int
    output_len: int
    concurrency: int
    weight: float = 1.0
    description: str = ""

    def __post_init__(self) -> None:
        for what in ("prompt_len", "output_len", "concurrency"):
            v = getattr(self, what)
            words = what.replace("_", " ")
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise UserError(f"{self.name}: {words} must be a positive integer, got {v!r}")
            if v > MAX_TOKENS:
                raise UserError(f"{self.name}: {words} {v} is too large (at most {MAX_TOKENS})")
        if self.prompt_len + self.output_len > MAX_TOKENS:
            raise UserError(f"{self.name}: prompt + output = {self.prompt_len + self.output_len} "
                            f"tokens is too long (at most {MAX_TOKENS})")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise UserError(f"{self.name}: weight must be a number ≥ 0, got {w!r}")

    def to_dict(self, share: Optional[float] = None) -> dict:
        d = {"name": self.name, "prompt_len": self.prompt_len, "output_len": self.output_len,
             "concurrency": self.concurrency, "weight": round(float(self.weight), 6)}
        if share is not None:
            d["share"] = round(share, 6)
        return d

    def label(self) -> str:
        return f"{self.name} {self.prompt_len}→{self.output_len} ×{self.concurrency}"


@dataclass(frozen=True)
class Targets:
    """Service targets in milliseconds (None: no target)."""

    ttft_ms: Optional[float] = None
    tpot_ms: Optional[float] = None

    def __post_init__(self) -> None:
        for what, words in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT")):
            v = getattr(self, what)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise UserError(f"the {words} target must be a number of milliseconds, got {v!r}")
            if v <= 0:
                raise UserError(f"a {words} target of {v:g} ms cannot be met by any model: give a "
                                "positive number of milliseconds")

    @property
    def any(self) -> bool:
        return self.ttft_ms is not None or self.tpot_ms is not None

    def misses(self, ttft_ms: float, tpot_ms: float) -> list[str]:
        """The targets these figures miss, in words ([] when they meet both)."""
        out = []
        if self.ttft_ms is not None and ttft_ms > self.ttft_ms:
            out.append(f"TTFT {ttft_ms:,.0f} ms > {self.ttft_ms:g} ms")
        if self.tpot_ms is not None and tpot_ms > self.tpot_ms:
            out.append(f"TPOT {tpot_ms:,.1f} ms > {self.tpot_ms:g} ms")
        return out

    def to_dict(self) -> dict:
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms}

    def label(self) -> str:
        parts = [f"TTFT ≤ {self.ttft_ms:g} ms" if self.ttft_ms is not None else "",
                 f"TPOT ≤ {self.tpot_ms:g} ms" if self.tpot_ms is not None else ""]
        return ", ".join(p for p in parts if p) or "no targets"


@dataclass(frozen=True)
class Workload:
    name: str
    classes: tuple[RequestClass, ...]
    targets: Targets = field(default_factory=Targets)

    def __post_init__(self) -> None:
        if not self.classes:
            raise UserError("a workload needs at least one request class")
        names = [c.name for c in self.classes]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise UserError(f"the mix names {dup!r} twice: give each class once")
        total = sum(c.weight for c in self.classes)
        if not total > 0:
            raise UserError("the mix's weights sum to 0: give at least one class a positive weight")

    @property
    def shares(self) -> tuple[float, ...]:
        """Each class's share of the requests (the weights normalised to sum to 1)."""
        total = sum(c.weight for c in self.classes)
        return tuple(c.weight / total for c in self.classes)

    @property
    def main(self) -> RequestClass:
        """The class with the largest share (the first of equals): the per-phase view of a
        plan and the sparsity a quality figure is read at are this class's."""
        shares = self.shares
        return self.classes[max(range(len(shares)), key=lambda i: (shares[i], -i))]

    def with_targets(self, ttft_ms: Optional[float] = None, tpot_ms: Optional[float] = None) -> "Workload":
        return replace(self, targets=Targets(ttft_ms, tpot_ms))

    def label(self) -> str:
        if len(self.classes) == 1:
            return self.classes[0].label()
        return " + ".join(f"{s:.0%} {c.label()}" for c, s in zip(self.classes, self.shares))

    def to_dict(self) -> dict:
        return {"name": self.name,
                "classes": [c.to_dict(s) for c, s in zip(self.classes, self.shares)],
                "targets": self.targets.to_dict()}


#: the presets: name -> (prompt, output, concurrency, what it stands for); docs/planning.md states them
PRESETS: dict[str, RequestClass] = {
    "chat": RequestClass("chat", 1024, 256, 32, description=(
        "interactive chat: a conversation so far of ~1k tokens, answers of 256, 32 users at once")),
    "rag": RequestClass("rag", 8192, 256, 8, description=(
        "long-prompt retrieval: 8k tokens of retrieved context, a short answer, 8 at once")),
    "summarize": RequestClass("summarize", 4096, 512, 64, description=(
        "batch summarisation: 4k-token documents, 512-token summaries, 64 at once")),
}
DEFAULT_PRESET = "chat"


def preset(name: str) -> RequestClass:
    try:
        return PRESETS[str(name).strip()]
    except KeyError:
        raise UserError(f"unknown workload preset {name!r}; choose from {', '.join(PRESETS)}") from None


def single(name: str = DEFAULT_PRESET, prompt_len: Optional[int] = None,
           output_len: Optional[int] = None, concurrency: Optional[int] = None,
           targets: Optional[Targets] = None) -> Workload:
    """One class: a preset with any of its numbers replaced."""
    base = preset(name)
    changed = {k: v for k, v in (("prompt_len", prompt_len), ("output_len", output_len),
                                 ("concurrency", concurrency)) if v is not None}
    cls = replace(base, **changed)
    label = base.name if not changed else f"{base.name} (custom)"
    return Workload(label, (cls,), targets or Targets())


def parse_mix(text: str) -> Workload:
    """``chat:0.7,rag:0.3`` (preset:weight, a weight omitted is 1), or the path of a CSV file
    with columns ``name,weight,prompt_len,output_len,concurrency`` (a row naming a preset may
    leave its numbers blank: the preset's are used)."""
    s = str(text).strip()
    if not s:
        raise UserError("--mix is empty: give e.g. chat:0.7,rag:0.3 or a CSV file")
    p = Path(s).expanduser()
    if p.suffix.lower() == ".csv" or p.is_file():
        return Workload(p.stem, tuple(_mix_file(p)))
    classes = []
    for part in s.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, w = part.partition(":")
        base = preset(name)
        weight = _number(w, f"the weight of {name.strip()}") if w.strip() else 1.0
        classes.append(replace(base, weight=weight))
    return Workload("mix " + s, tuple(classes))


def _number(text: str, what: str) -> float:
    try:
        v = float(str(text).strip())
    except ValueError:
        raise UserError(f"{what} {text.strip()!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise UserError(f"{what} must be a number ≥ 0, got {text.strip()}")
    return v


def _integer(text: str, what: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise UserError(f"{what} {text.strip()!r} is not an integer") from None


def _mix_file(path: Path) -> list[RequestClass]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise UserError(f"{path}: no such mix file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the mix file ({e})") from None
    if not rows:
        raise UserError(f"{path}: the mix file has no rows (columns: name,weight,prompt_len,"
                        "output_len,concurrency)")
    if "name" not in rows[0]:
        raise UserError(f"{path}: the mix file needs a header with a 'name' column (columns: "
                        "name,weight,prompt_len,output_len,concurrency)")
    out = []
    for i, r in enumerate(rows, start=2):
        name = (r.get("name") or "").strip()
        where = f"{path.name} line {i}"
        if not name:
            raise UserError(f"{where}: a class needs a name")
        base = PRESETS.get(name)
        nums = {}
        for col in ("prompt_len", "output_len", "concurrency"):
            cell = (r.get(col) or "").strip()
            if cell:
                nums[col] = _integer(cell, f"{where}: {col}")
            elif base is None:
                raise UserError(f"{where}: {col} is missing (only a preset's name, "
                                f"{', '.join(PRESETS)}, may leave it blank)")
        w = (r.get("weight") or "").strip()
        weight = _number(w, f"{where}: weight") if w else 1.0
        cls = replace(base, weight=weight, **nums) if base else RequestClass(name, weight=weight, **nums)
        out.append(cls)
    return out

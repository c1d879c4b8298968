"""Quality rows: the cited literature priors (profiles/quality/literature.csv), the user's own file, method names, and how model names compare (line, generation, parameter count) for borrowing."""

from __future__ import annotations
import csv
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional
from .. import families
from ..errors import UserError


PROTOCOLS = ("lora", "training-free", "trained")


METRICS = ("accuracy_drop", "ppl_increase")


@dataclass(frozen=True)
class QualityRow:
    """One shipped literature figure (a row of profiles/quality/literature.csv)."""

    family: str
    method: str
    protocol: str
    model: str
    params_b: Optional[float]
    ratio: str
    sparsity: float
    metric_kind: str
    measure: str
    metric: str
    dense: Optional[float]
    pruned: Optional[float]
    quality_loss: Optional[float]
    reported_gap: Optional[float]
    on_curve: bool
    secondary: bool
    uncertain: bool
    citation: str
    checked: str = ""
    note: str = ""


@dataclass(frozen=True)
class UserQualityRow:
    """One row of the user's quality file."""

    strategy: str
    sparsity: float
    quality_loss: float
    model: Optional[str] = None  # None: applies to every model
    note: str = ""
    line: int = 0


#: the study's family-mean rows, named after the methods the study averaged (reference-study:
#: "Representative methods: static depth: Shortened-LLaMA (Taylor), CoopPruner")
_METHOD_ALIASES = {"static M (mean)": "Shortened-taylor/CoopPruner (study mean)"}


_STUDY_AXES = re.compile(r"^(static|dynamic) (M|NK|K)\b[^(]*\((.*)\)\s*$")


def method_name(raw: str) -> str:
    """A literature row's method, as one name for every row of that method.

    The study's rows are labelled by their axis ("static NK (Tyr-the-Pruner, +LoRA)"): the
    method is the first item in the parentheses ("Tyr-the-Pruner"; a "... mean" item is the
    study's mean of those methods).  Otherwise qualifiers are dropped: a trailing "*" (Týr's
    LoRA-recovered runs), a parenthesised remark ("LLM-Pruner (Element2, +LoRA Alpaca)",
    "SVD-LLM (W, training-free)", "MindSkip (Block granularity)") and a " 2:4" suffix
    ("Wanda 2:4" is Wanda in the 2:4 family).  Names are compared case-insensitively
    (:func:`method_key`): "Shortened-PPL" and "Shortened-ppl" are one method."""
    text = (raw or "").strip()
    if text in _METHOD_ALIASES:
        return _METHOD_ALIASES[text]
    m = _STUDY_AXES.match(text)
    if m:
        items = [i.strip() for i in m.group(3).split(",") if i.strip() and "lora" not in i.lower()]
        first = items[0] if items else text
        if first.lower().endswith(" mean"):
            return f"{first[:-5].strip()} (study mean)"
        return first
    text = re.sub(r"\s*\([^)]*\)\s*$", "", text).strip()
    text = text.rstrip("*").strip()
    text = re.sub(r"\s+2:4$", "", text).strip()
    return text or (raw or "").strip()


@lru_cache(maxsize=None)
def method_key(name: str) -> str:
    """How a method name is matched (``--quality-method``): case and spacing ignored."""
    return re.sub(r"\s+", " ", method_name(name).strip().lower())


def opt_float(s: str) -> Optional[float]:
    s = (s or "").strip()
    return float(s) if s else None


def flag(s) -> bool:
    """A cited table's true/false cell."""
    return (s or "").strip().lower() in ("true", "1", "yes")


def read_rows(path: Path, what: str) -> list[dict]:
    """The rows of a shipped CSV table (none when the file is absent); one line for a file that
    cannot be read."""
    if not path.exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the {what} ({e})") from None


def literature_path() -> Path:
    from ..shipped import profile_path

    return profile_path("quality", "literature.csv")


@lru_cache(maxsize=None)
def _load_priors(path: str) -> tuple[QualityRow, ...]:
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            out.append(QualityRow(
                family=r["family"], method=r["method"], protocol=r["protocol"], model=r["model"],
                params_b=opt_float(r["params_b"]), ratio=r["ratio"], sparsity=float(r["sparsity"]),
                metric_kind=r["metric_kind"], measure=r["measure"], metric=r["metric"],
                dense=opt_float(r["dense"]), pruned=opt_float(r["pruned"]),
                quality_loss=opt_float(r["quality_loss"]), reported_gap=opt_float(r["reported_gap"]),
                on_curve=r["on_curve"] == "true", secondary=r["secondary"] == "true",
                uncertain=r["uncertain"] == "true", citation=r["citation"],
                checked=r.get("checked", ""), note=r.get("note", "")))
    return tuple(out)


def load_priors() -> list[QualityRow]:
    """Every shipped literature row (cached after the first call)."""
    return list(_load_priors(str(literature_path())))


_LINES = ("llama", "qwen", "mistral", "mixtral", "gemma", "phi", "olmo", "falcon", "opt", "gpt")


def normalize_model_name(name: str) -> str:
    """'meta-llama/Meta-Llama-3.1-8B' → 'llama-3.1-8b'; 'Qwen/Qwen2.5-7B' → 'qwen-2.5-7b'."""
    s = str(name).strip().rstrip("/\\").replace("\\", "/")
    s = s.split("/")[-1].lower()
    s = re.sub(r"[\s_]+", "-", s)
    if s.startswith("meta-"):
        s = s[len("meta-"):]
    s = re.sub(r"-hf$", "", s)
    s = re.sub(r"^([a-z]+)(\d)", r"\1-\2", s)  # llama3.1-8b → llama-3.1-8b
    return s


def model_line(key: str) -> str:
    head = key.split("-")[0]
    for line in _LINES:
        if head.startswith(line):
            return line
    return head


def _model_generation(key: str) -> Optional[float]:
    parts = key.split("-")
    if len(parts) > 1 and re.fullmatch(r"\d+(\.\d+)?", parts[1]):
        return float(parts[1])
    if parts[0] == "llama":
        return 1.0  # LLaMA-7B, the first generation
    return None


def _params_from_name(key: str) -> Optional[float]:
    for tok in key.split("-"):
        m = re.fullmatch(r"(\d+(?:\.\d+)?)b", tok)
        if m:
            return float(m.group(1))
    return None


@lru_cache(maxsize=None)
def model_params_b(name: str) -> Optional[float]:
    """Parameter count in billions: a preset's real count, else read from the name."""
    try:
        from ..model.spec import load_preset_config, preset_names, spec_from_config

        if name in preset_names():
            return spec_from_config(load_preset_config(name), name).total_params() / 1e9
    except Exception:  # a preset that cannot be read: fall back to the name
        pass
    return _params_from_name(normalize_model_name(name))


def model_distance(query: str, query_params: Optional[float], cand: str,
                    cand_params: Optional[float]) -> tuple:
    q, c = normalize_model_name(query), normalize_model_name(cand)
    same_line = model_line(q) == model_line(c)
    gq, gc = _model_generation(q), _model_generation(c)
    gen = abs(gq - gc) if (same_line and gq is not None and gc is not None) else (0.0 if same_line else 99.0)
    if query_params and cand_params:
        size = abs(math.log(query_params / cand_params))
    else:
        size = 99.0
    return (0 if same_line else 1, round(gen, 6), round(size, 6))


_USER_REQUIRED = ("strategy", "sparsity", "quality_loss")


_USER_OPTIONAL = ("model", "note")


def _user_number(text: str, what: str, where: str, lo: float, hi: float, lo_open: bool = False) -> float:
    s = (text or "").strip()
    if not s:
        raise UserError(f"{where}: {what} is empty")
    try:
        v = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        raise UserError(f"{where}: {what} {s!r} is not a number (use a fraction like 0.10 or 10%)") from None
    if not math.isfinite(v) or v > hi or v < lo or (lo_open and v <= lo):
        rng = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
        raise UserError(f"{where}: {what} {s} is outside {rng} (use a fraction like 0.10 or 10%)")
    return v


def load_user_csv(path) -> list[UserQualityRow]:
    """Read the user's quality file; any malformed row → UserError naming its line."""
    p = Path(path).expanduser()
    label = str(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(f"{label}: no such quality file") from None
    except IsADirectoryError:
        raise UserError(f"{label}: is a directory, give the quality CSV file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{label}: cannot read the quality file ({e})") from None
    if not text.strip():
        raise UserError(f"{label}: empty file (expected a header: strategy,sparsity,quality_loss[,model,note])")
    reader = csv.reader(text.splitlines())
    header = None
    for header in reader:
        if any(h.strip() for h in header):
            break
    header_line = reader.line_num
    cols = [h.strip().lower() for h in header]
    missing = [c for c in _USER_REQUIRED if c not in cols]
    if missing:
        raise UserError(f"{label} line {header_line}: missing column(s) {', '.join(missing)} "
                        f"(the header must name strategy, sparsity, quality_loss; optional model, note)")
    dup = sorted({c for c in cols if c and cols.count(c) > 1})
    if dup:
        raise UserError(f"{label} line {header_line}: column(s) {', '.join(dup)} appear twice")
    idx = {c: cols.index(c) for c in _USER_REQUIRED + _USER_OPTIONAL if c in cols}
    rows: list[UserQualityRow] = []
    for fields in reader:
        line = reader.line_num
        if not any(x.strip() for x in fields) or fields[0].lstrip().startswith("#"):
            continue
        where = f"{label} line {line}"
        if len(fields) > len(cols) and any(x.strip() for x in fields[len(cols):]):
            raise UserError(f"{where}: {len(fields)} fields but the header has {len(cols)}")

        def get(c: str) -> str:
            i = idx.get(c)
            return fields[i].strip() if i is not None and i < len(fields) else ""

        strat = get("strategy").lower().replace("-", "_")
        if not strat:
            raise UserError(f"{where}: strategy is empty")
        if not families.is_family(strat):
            raise UserError(f"{where}: unknown strategy {get('strategy')!r} "
                            f"(choose from {', '.join(families.names())})")
        sp = _user_number(get("sparsity"), "sparsity", where, 0.0, 0.99, lo_open=True)
        q = _user_number(get("quality_loss"), "quality_loss", where, -1.0, 1.0)
        if strat == "dense" and q != 0.0:
            raise UserError(f"{where}: dense has no loss by definition (got {get('quality_loss')})")
        model = get("model")
        rows.append(UserQualityRow(strat, sp, q, None if model in ("", "*", "any") else model,
                                   get("note"), line))
    if not rows:
        raise UserError(f"{label}: no data rows after the header")
    return rows


_KNOWN_PARAMS: dict = {}


def remember_params(name: str, params_b: Optional[float]) -> None:
    """The parameter count of a model the caller has loaded (a config that is no preset and
    whose name says no size): the borrowing rule compares sizes."""
    if name and params_b:
        _KNOWN_PARAMS[normalize_model_name(name)] = float(params_b)


def params_of(name: str) -> Optional[float]:
    return _KNOWN_PARAMS.get(normalize_model_name(name)) or model_params_b(name)



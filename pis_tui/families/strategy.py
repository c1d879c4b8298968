"""Strategies: a family at a sparsity, or a combination with each part's; parsed from a command line's tokens and laid out as a sweep's grid."""

from __future__ import annotations

from dataclasses import dataclass

from . import registry
from ..errors import UserError
from .base import MAX_SPARSITY
from .combinations import SEP, compose_sparsity


@dataclass(frozen=True)
class Strategy:
    """A family at a sparsity, or a combination (``family`` = ``first+second``) whose
    ``parts`` hold each family's sparsity, in the order they are applied.

    A combination's ``sparsity`` is composed from its parts': 1 − Π(1 − sᵢ) (each part's
    effective sparsity; 2:4 is 0.5), at most :data:`MAX_SPARSITY`.  Given without
    parts, a combination puts each part at ``sparsity`` (a fixed-sparsity part at its own)."""

    family: str
    sparsity: float = 0.0
    granularity: str = "layer"  # static_depth: layer | sublayer
    align: int = 128  # static_width / static_width_hidden channel rounding
    parts: tuple = ()  # combinations: ((family, sparsity), ...) in the order applied
    #: dynamic_topk: a per-token distribution of k given by the user, ((k, probability), …)
    #: (token ``dynamic_topk@k6:0.5/8:0.5``); empty: the family's own from the sparsity
    k_dist: tuple = ()

    def __post_init__(self) -> None:
        fam = registry.get(self.family)  # UserError naming the families (and combinations)
        if self.k_dist:
            from ..model.moe import check_k_dist

            if self.family != "dynamic_topk":
                raise UserError(f"{self.family}: a distribution of k belongs to dynamic_topk")
            # the bounds on k need the model (checked when the op list is built)
            object.__setattr__(self, "k_dist", check_k_dist(self.k_dist, 1 << 20, "dynamic_topk's k"))
        if self.granularity not in ("layer", "sublayer"):
            raise UserError(f"granularity must be layer or sublayer, got {self.granularity!r}")
        if not isinstance(self.align, int) or self.align < 1:
            raise UserError(f"align must be a positive integer, got {self.align!r}")
        if fam.is_combo:
            self._check_parts(fam)
            return
        if self.parts:
            raise UserError(f"{self.family} is a family, not a combination: it has no parts")
        if not (0.0 <= self.sparsity <= fam.max_sparsity) or self.sparsity != self.sparsity:
            raise UserError(f"sparsity {self.sparsity} is outside [0, {fam.max_sparsity}]")

    def _check_parts(self, combo) -> None:
        given = tuple(self.parts)
        if not given:
            s = self.sparsity
            if not (0.0 < s <= MAX_SPARSITY) or s != s:
                raise UserError(f"{self.family}: each part needs a sparsity in (0, "
                                f"{MAX_SPARSITY}], got {s}")
            given = tuple((f.name, s) for f in combo.parts)
        if len(given) != len(combo.parts) or any(
                not isinstance(p, (tuple, list)) or len(p) != 2 for p in given):
            raise UserError(f"{self.family}: give one sparsity for each of its parts "
                            f"({', '.join(combo.part_names)})")
        parts = []
        for fam, (name, s) in zip(combo.parts, given):
            if name != fam.name:
                raise UserError(f"{self.family}: its parts are {', '.join(combo.part_names)}, "
                                f"in that order (got {name!r})")
            try:
                s = float(s)
            except (TypeError, ValueError):
                raise UserError(f"{self.family}: {name}'s sparsity {s!r} is not a number") from None
            if not (0.0 < s <= fam.max_sparsity) or s != s:
                raise UserError(f"{self.family}: {name}'s sparsity {s:g} is outside (0, "
                                f"{fam.max_sparsity}] (a part at 0 is no combination)")
            parts.append((name, round(fam.effective_sparsity(s), 9)))
        total = round(compose_sparsity(s for _, s in parts), 9)
        if total > combo.max_sparsity + 1e-9:
            raise UserError(f"{self.family} at {' + '.join(f'{s:g}' for _, s in parts)} removes "
                            f"{total:.1%}, more than {combo.max_sparsity:.0%}: lower a part")
        object.__setattr__(self, "parts", tuple(parts))
        object.__setattr__(self, "sparsity", total)

    @property
    def is_combo(self) -> bool:
        return bool(self.parts)

    @property
    def part_strategies(self) -> tuple["Strategy", ...]:
        """Each part as a strategy of its own (same granularity and alignment)."""
        return tuple(Strategy(f, s, self.granularity, self.align) for f, s in self.parts)

    @property
    def effective_sparsity(self) -> float:
        return registry.get(self.family).effective_sparsity(self.sparsity)

    @property
    def token(self) -> str:
        """The name a command line takes for exactly this strategy: ``static_depth`` (its
        sparsity given apart), ``static_depth@0.125+static_width@0.25`` for a combination."""
        if self.k_dist:
            return f"{self.family}@{k_dist_text(self.k_dist)}"
        if not self.parts:
            return self.family
        return SEP.join(f"{f}@{s:g}" for f, s in self.parts)

    @property
    def label(self) -> str:
        """``static_depth 25%`` or ``static_depth 12.5% + static_width 25%`` (asked sparsities)."""
        if self.k_dist:
            return f"{self.family} {k_dist_text(self.k_dist)}"
        if not self.parts:
            return f"{self.family} {_pct(self.sparsity)}"
        return " + ".join(f"{f} {_pct(s)}" for f, s in self.parts)


def k_dist_text(k_dist) -> str:
    """``k6:0.5/8:0.5``: a distribution of k as a strategy token writes it."""
    return "k" + "/".join(f"{k}:{p:g}" for k, p in k_dist)


def parse_k_dist(text: str) -> tuple:
    """``k6:0.5/8:0.5`` → ((6, 0.5), (8, 0.5)); a malformed one is one line."""
    body = text.strip()[1:] if text.strip().startswith("k") else text.strip()
    out = []
    for item in (x.strip() for x in body.split("/") if x.strip()):
        k, _, p = item.partition(":")
        try:
            out.append((int(k), float(p)))
        except ValueError:
            raise UserError(f"{text!r}: a distribution of k is k<k>:<probability>/… "
                            "(e.g. dynamic_topk@k6:0.5/8:0.5)") from None
    if not out:
        raise UserError(f"{text!r}: an empty distribution of k")
    return tuple(out)


def _pct(s: float) -> str:
    return f"{100 * s:.2f}".rstrip("0").rstrip(".") + "%"


def family_axis(name: str) -> str:
    """The GEMM dimension a family acts on (the study's taxonomy)."""
    return registry.get(name).axis


def from_token(token: str, sparsity=None, granularity: str = "layer", align: int = 128) -> Strategy:
    """A strategy from a command line's token: a family at ``sparsity``; a combination
    ``first+second`` with each part at ``sparsity``; or ``first@0.125+second@0.25``, each part
    at its own (a fixed-sparsity part may leave its own out: ``static_depth@0.25+semi_structured_24``)."""
    text = str(token).strip()
    if SEP not in text and "@" in text and text.split("@", 1)[1].strip().startswith("k"):
        fam, dist = text.split("@", 1)
        return Strategy(fam.strip(), 0.0, granularity, align, k_dist=parse_k_dist(dist))
    if SEP not in text:
        if "@" in text:
            raise UserError(f"{text!r}: a part sparsity (@) belongs to a combination "
                            f"(e.g. static_depth@0.125+static_width@0.25)")
        return Strategy(text, 0.0 if sparsity is None else sparsity, granularity, align)
    pieces = [p.strip() for p in text.split(SEP)]
    names = [p.split("@", 1)[0].strip() for p in pieces]
    combo = registry.get(SEP.join(names))  # UserError naming the combinations
    if not any("@" in p for p in pieces):
        if sparsity is None:
            raise UserError(f"{combo.name}: give each part's sparsity "
                            f"({'@0.125+'.join(combo.part_names)}@0.25) or one for both")
        return Strategy(combo.name, sparsity, granularity, align)
    parts = []
    for fam, piece in zip(combo.parts, pieces):
        if "@" in piece:
            value = piece.split("@", 1)[1].strip()
            try:
                v = float(value[:-1]) / 100.0 if value.endswith("%") else float(value)
            except ValueError:
                raise UserError(f"{text!r}: {fam.name}'s sparsity {value!r} is not a number") from None
        elif fam.fixed_sparsity is not None:
            v = fam.fixed_sparsity
        else:
            raise UserError(f"{text!r}: {fam.name} needs its sparsity ({fam.name}@0.25)")
        parts.append((fam.name, v))
    return Strategy(combo.name, 0.0, granularity, align, tuple(parts))


def parse_strategies(text: str | None) -> tuple[str, ...]:
    if not text:
        return registry.pruned()
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    for n in names:
        registry.get(n)
    return names


def strategies_grid(family_names, sparsities=None, granularity="layer", align=128,
                    combo_sparsities=None, spec=None) -> list[Strategy]:
    """Dense first, then every family × its sparsities (``sparsities`` None: each family's
    default grid; a fixed-sparsity family such as 2:4 at its one sparsity), and every
    combination named × its parts' grid (``combo_sparsities`` None: each part at
    ``families.COMBO_SPARSITIES``; a combination that would remove more than
    ``MAX_SPARSITY`` at some pair is left out at that pair).  With ``spec``, the families that
    do not apply to that model (:meth:`Family.applies`: the expert-level ones on a dense model)
    are left out; if every pruning family named is, that is a one-line error."""
    out = [Strategy("dense", 0.0, granularity, align)]
    skipped = []
    for f in family_names:
        fam = registry.get(f)
        if fam.is_baseline:
            continue
        why = fam.applies(spec) if spec is not None else None
        if why:
            skipped.append((f, why))
            continue
        if fam.is_combo:
            for pair in fam.part_grid(None if combo_sparsities is None else tuple(combo_sparsities)):
                if compose_sparsity(fam.parts[i].effective_sparsity(s)
                                           for i, s in enumerate(pair)) > fam.max_sparsity + 1e-9:
                    continue
                out.append(Strategy(f, 0.0, granularity, align,
                                    tuple(zip(fam.part_names, pair))))
            continue
        for s in fam.sparsity_grid(None if sparsities is None else tuple(sparsities)):
            out.append(Strategy(f, s, granularity, align))
    if skipped and len(out) == 1:
        f, why = skipped[0]
        raise UserError(f"{f}: {why}")
    return out



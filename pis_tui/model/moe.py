"""Mixture-of-experts layers: what a config says about its experts, how tokens are routed, and
the law that sets a step's cost — the distinct experts the step touches.

Pure data and arithmetic (no torch).  A step of T tokens, each routed to k of E experts, reads
the weights of every expert any of its tokens was routed to.  If a token includes expert e with
probability q_e (Σ q_e = k, each q_e ≤ 1) independently of the other tokens, the expected number
of distinct experts touched is

    D(T) = Σ_e [1 − (1 − q_e)^T]

which under balanced routing (q_e = k/E) is E·(1 − (1 − k/E)^T), bounded above by min(E, T·k).
A skewed router (a power law over the experts, or a histogram recorded from a model) has
unequal q_e: fewer distinct experts at small T (the popular ones are shared), uneven groups at
large T.  Each expert's rows (tokens routed to it) are Binomial(T, q_e); a grouped kernel that
pads each expert's rows to its tile does the padded rows' work.

The routing is a stated input (:func:`routing`): ``balanced``, ``powerlaw:<alpha>`` (expert i's
routing weight ∝ (i + 1)^−alpha), or a histogram of tokens per expert (per layer) read from a
file.  Nothing here decides which experts a real router picks; it says what a step costs given
how tokens are spread.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

from ..errors import UserError

#: config keys of the routed expert count, the experts per token and the expert width, by the
#: names the model families use (Qwen2/3-MoE, OLMoE, Granite-MoE: num_experts; Mixtral:
#: num_local_experts; DeepSeek: n_routed_experts; others: moe_num_experts)
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOPK_KEYS = ("num_experts_per_tok", "moe_top_k", "top_k")
EXPERT_WIDTH_KEYS = ("moe_intermediate_size", "expert_intermediate_size")


@dataclass(frozen=True)
class MoEConfig:
    """The experts of an MoE decoder, as its config states them."""

    experts: int               # routed experts E
    top_k: int                 # experts per token k
    expert_inter: int          # each routed expert's intermediate width I
    shared_inter: int = 0      # the shared experts' total intermediate width (0: none)
    moe_layers: int = 0        # layers with an MoE block (the rest are dense MLPs)
    num_layers: int = 0
    norm_topk: bool = False    # top-k weights renormalised to sum to 1
    router_bias: bool = False  # a per-expert bias added to the router scores (selection only)
    shared_gate: bool = False  # Qwen2-MoE: sigmoid([T, H]×[H, 1]) scales the shared experts

    @property
    def dense_layers(self) -> int:
        return self.num_layers - self.moe_layers

    def expert_params(self, hidden: int) -> int:
        """Weights of one routed expert: gate, up and down (3·H·I)."""
        return 3 * hidden * self.expert_inter


def _int(cfg: dict, keys: Sequence[str]) -> Optional[int]:
    for k in keys:
        v = cfg.get(k)
        if v is not None:
            if not isinstance(v, int) or isinstance(v, bool):
                raise UserError(f"config field {k}={v!r} is not an integer")
            return v
    return None


def moe_config(cfg: dict, name: str = "model") -> Optional[MoEConfig]:
    """The MoE description of a config dict, None for a dense model.  Bad values (E = 0, top-k
    above E, a shared expert without routed ones, an expert width ≤ 0) are one-line errors."""
    experts = _int(cfg, EXPERT_KEYS)
    shared_w = _int(cfg, ("shared_expert_intermediate_size",)) or 0
    n_shared = _int(cfg, ("n_shared_experts", "num_shared_experts")) or 0
    if experts in (None, 1) and not (shared_w or n_shared):
        return None
    if not experts or experts < 1:
        if shared_w or n_shared:
            raise UserError(f"{name}: a shared expert is configured but no routed experts "
                            f"(experts={experts!r})")
        raise UserError(f"{name}: {experts!r} routed experts: an MoE layer needs at least one")
    k = _int(cfg, TOPK_KEYS)
    if k is None or k < 1:
        raise UserError(f"{name}: num_experts_per_tok={k!r}: each token needs at least one expert")
    if k > experts:
        raise UserError(f"{name}: num_experts_per_tok={k} is more than the {experts} experts")
    width = _int(cfg, EXPERT_WIDTH_KEYS) or _int(cfg, ("intermediate_size",))  # Mixtral
    if not width or width < 1:
        raise UserError(f"{name}: the experts' intermediate size {width!r} is not a positive integer")
    if n_shared and not shared_w:
        shared_w = n_shared * width  # DeepSeek: n_shared_experts of the routed width, fused
    layers = _int(cfg, ("num_hidden_layers", "n_layer", "num_layers")) or 0
    return MoEConfig(experts=experts, top_k=k, expert_inter=width, shared_inter=shared_w,
                     moe_layers=_moe_layer_count(cfg, layers), num_layers=layers,
                     norm_topk=bool(cfg.get("norm_topk_prob", False)),
                     router_bias=bool(cfg.get("router_bias") or cfg.get("topk_method") == "noaux_tc"),
                     shared_gate=bool(cfg.get("shared_expert_intermediate_size")))


def _moe_layer_count(cfg: dict, layers: int) -> int:
    """Layers that run an MoE block: all but DeepSeek's first_k_dense_replace, those off
    Qwen-MoE's decoder_sparse_step, and those listed in mlp_only_layers."""
    first_dense = _int(cfg, ("first_k_dense_replace",)) or 0
    step = _int(cfg, ("decoder_sparse_step",)) or 1
    mlp_only = set(cfg.get("mlp_only_layers") or ())
    return sum(1 for i in range(layers)
               if i >= first_dense and (i + 1) % step == 0 and i not in mlp_only)


# ------------------------------------------------------------------ routing


@dataclass(frozen=True)
class Routing:
    """How a step's tokens spread over the experts: each expert's share of the routing weight
    (per layer where a histogram gives layers; one list for every layer otherwise).

    ``id`` names it in a measurement's key: the name of a named routing; for a histogram its
    file name, phase and a hash of its shares (two files with the same counts share
    measurements, an edited file does not)."""

    name: str
    shares: tuple  # tuple of per-layer tuples of E shares, each summing to 1
    id: str = ""

    def layer(self, i: int) -> tuple:
        return self.shares[i % len(self.shares)]


def kept_experts(shares: Sequence[float], keep: int) -> list[int]:
    """The ``keep`` experts a layer keeps when experts are pruned: those its routing uses most
    (the frequency criterion; ties by index, so a balanced routing keeps the first ones)."""
    order = sorted(range(len(shares)), key=lambda i: (-shares[i], i))
    return sorted(order[:keep])


#: the power laws a measurement's routing profile is rounded to: exponents in steps of this
PROFILE_STEP = 0.25
PROFILE_MAX = 4.0
_PROFILES: dict = {}


def measured_profile(r: Routing) -> tuple:
    """(id, shares) naming what a grouped GEMM's measurement draws its steps from.

    A grouped GEMM's cost does not depend on which expert gets which rows (every expert has the
    same shapes), only on how the rows spread, and a recorded histogram's shares carry sampling
    noise that makes no other kernel.  So a routing is measured at its nearest power law: each
    layer's shares sorted, averaged over the layers, and the exponent α (in steps of
    :data:`PROFILE_STEP`, 0 being balanced) whose shares ∝ (i + 1)^−α are closest in squares.
    Two routings with the same profile — a dense model and a pruned one routing alike, two
    recordings of one model — share one measurement, so its noise cancels in their ratio as a
    dense GEMM's does; the estimator scales it by the roofline to the routing's own experts
    touched (:meth:`pis_tui.pricing.estimator.Estimator._price_op`).  The law's figures
    (distinct experts, rows, padding) always come from the routing's own per-layer shares."""
    key = (r.id or r.name, len(r.shares))
    hit = _PROFILES.get(key)
    if hit is not None and hit[0] is r.shares:
        return hit[1]
    E = len(r.shares[0])
    if r.id == "balanced" or r.name.startswith("powerlaw:"):
        out = (r.id or r.name, (tuple(r.shares[0]),))
    else:
        mean = [sum(col) / len(r.shares) for col in zip(*(sorted(sh, reverse=True) for sh in r.shares))]
        best = None
        for j in range(int(round(PROFILE_MAX / PROFILE_STEP)) + 1):
            a = round(j * PROFILE_STEP, 6)
            cand = _named_routing("balanced" if a == 0 else f"powerlaw:{a:g}", E).shares[0]
            err = sum((x - y) ** 2 for x, y in zip(mean, cand))
            if best is None or err < best[0] - 1e-15:
                best = (err, a, cand)
        _, a, cand = best
        out = ("balanced" if a == 0 else f"powerlaw:{a:g}", (tuple(cand),))
    if len(_PROFILES) > 1024:
        _PROFILES.clear()
    _PROFILES[key] = (r.shares, out)
    return out


_PRUNED: dict = {}


def pruned_routing(r: Routing, keep: int) -> Routing:
    """The routing of a model whose layers each keep ``keep`` of their experts
    (:func:`kept_experts`): the router's scores over the kept experts alone, so the tokens that
    went to a removed expert spread over the kept ones in proportion to their shares (softmax
    renormalised).  A layer whose kept experts got no tokens in a histogram is spread evenly."""
    E = len(r.shares[0])
    if keep >= E:
        return r
    key = (r.id or r.name, len(r.shares), keep)
    hit = _PRUNED.get(key)
    if hit is not None and hit[0] is r.shares:
        return hit[1]
    layers = []
    for sh in r.shares:
        kept = kept_experts(sh, keep)
        tot = sum(sh[i] for i in kept)
        layers.append(tuple(sh[i] / tot if tot > 0 else 1.0 / keep for i in kept))
    out = Routing(f"{r.name}, {keep} of {E} kept", tuple(layers), f"{r.id or r.name}|keep{keep}")
    if len(_PRUNED) > 1024:
        _PRUNED.clear()
    _PRUNED[key] = (r.shares, out)
    return out


#: the histogram file format :func:`pis_tui.hf.routing_record.record` writes
HISTOGRAM_FORMAT = "pis-tui-routing/1"
PHASES = ("prefill", "decode")


def routing(spec: str, experts: int, *, moe_layers: int = 1, phase: Optional[str] = None) -> Routing:
    """See :func:`_routing`; a named routing is computed once per expert count, a histogram
    file once per (path, modification time, phase)."""
    spec = (spec or "").strip()
    if spec.endswith(".json"):
        path = Path(spec).expanduser()
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            mtime = -1  # _histogram says why in one line
        return _histogram_routing(str(path), mtime, experts, moe_layers, phase)
    return _named_routing(spec, experts)


@lru_cache(maxsize=64)
def _named_routing(spec: str, experts: int) -> Routing:
    return _routing(spec, experts, 1)


@lru_cache(maxsize=64)
def _histogram_routing(spec: str, mtime: int, experts: int, moe_layers: int,
                       phase: Optional[str]) -> Routing:
    return _routing(spec, experts, moe_layers, phase)


def _routing(spec: str, experts: int, moe_layers: int = 1, phase: Optional[str] = None) -> Routing:
    """``balanced``, ``powerlaw:<alpha>`` or the path of a JSON histogram (``{"layers": [[tokens
    per expert, …], …]}``: one list per MoE layer, E counts each, as a model routed them; a
    recorded file (:data:`HISTOGRAM_FORMAT`) also has ``phases`` with the prefill's and the
    decode's own layers, and ``phase`` picks one: a random-weight model routes one sequence's
    prefill tokens very unevenly and a batch's decode tokens nearly uniformly)."""
    spec = (spec or "").strip()
    if spec == "balanced":
        return Routing("balanced", (tuple([1.0 / experts] * experts),), "balanced")
    if spec.startswith("powerlaw:"):
        try:
            alpha = float(spec.split(":", 1)[1])
        except ValueError:
            raise UserError(f"routing {spec!r}: the power law's exponent is not a number") from None
        if not 0 <= alpha <= 10:
            raise UserError(f"routing {spec!r}: the exponent must be within 0…10")
        w = [(i + 1) ** -alpha for i in range(experts)]
        tot = sum(w)
        return Routing(spec, (tuple(x / tot for x in w),), spec)
    path = Path(spec).expanduser()
    if spec and path.suffix == ".json":
        return _histogram(path, experts, moe_layers, phase)
    raise UserError(f"unknown routing {spec!r}: balanced, powerlaw:<alpha> or a histogram .json file")


def _histogram(path: Path, experts: int, moe_layers: int, phase: Optional[str] = None) -> Routing:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{path}: cannot read the routing histogram ({e.strerror})") from None
    except ValueError as e:
        raise UserError(f"{path}: malformed routing histogram ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a routing histogram is {{\"layers\": [[tokens per expert, …], …]}}")
    layers, where = data.get("layers"), ""
    phases = data.get("phases")
    if phases is not None and not isinstance(phases, dict):
        raise UserError(f"{path}: \"phases\" must map prefill/decode to {{\"layers\": …}}")
    if phase is not None and phases and isinstance(phases.get(phase), dict):
        layers, where = phases[phase].get("layers"), f"{phase} "
    if not isinstance(layers, list) or not layers:
        raise UserError(f"{path}: a routing histogram is {{\"layers\": [[tokens per expert, …], …]}}")
    shares = []
    for i, counts in enumerate(layers):
        if not isinstance(counts, list) or len(counts) != experts:
            raise UserError(f"{path}: {where}layer {i} has "
                            f"{len(counts) if isinstance(counts, list) else '?'} "
                            f"counts; this model has {experts} experts")
        if (any(isinstance(c, bool) or not isinstance(c, (int, float)) or not c >= 0 for c in counts)
                or not 0 < sum(counts) < float("inf")):
            raise UserError(f"{path}: {where}layer {i}: counts must be non-negative with a positive sum")
        tot = float(sum(counts))
        shares.append(tuple(round(c / tot, 9) for c in counts))
    # a record of a pruned model that runs fewer of this model's MoE layers (static depth)
    # names the model it was pruned from: its layers are the ones that run
    kept = data.get("pruned_from_moe_layers") == moe_layers and len(shares) < moe_layers
    # a recording of the model at reduced depth (`pis-tui routing --layers N`) describes its
    # first N MoE layers: the op list prices their mean layer for every layer (moe.mean_step)
    reduced = data.get("format") == HISTOGRAM_FORMAT and len(shares) < moe_layers
    if len(shares) not in (1, moe_layers) and not (kept or reduced):
        raise UserError(f"{path}: {len(shares)} layers of {where}counts; this model has {moe_layers} "
                        "MoE layers (or give one list for all)")
    digest = hashlib.sha1(repr(shares).encode()).hexdigest()[:10]
    tag = f":{phase}" if where else ""
    return Routing(path.name + tag, tuple(shares), f"{path.stem}{tag}#{digest}")


def inclusion(shares: Sequence[float], k: int) -> list[float]:
    """Each expert's probability of being among a token's k: q_e ∝ its share, Σ q_e = k, capped
    at 1 (an expert cannot be picked twice by one token), the excess given to the others."""
    n = len(shares)
    if k >= n:
        return [1.0] * n
    q = [0.0] * n
    free = [i for i in range(n) if shares[i] > 0]
    left = float(k)
    while free:
        tot = sum(shares[i] for i in free)
        capped = [i for i in free if left * shares[i] / tot >= 1.0]
        if not capped:
            for i in free:
                q[i] = left * shares[i] / tot
            break
        for i in capped:
            q[i] = 1.0
        left -= len(capped)
        free = [i for i in free if i not in capped]
    return q


def distinct_experts(tokens: float, k: int, shares: Sequence[float]) -> float:
    """Expected distinct experts a step of ``tokens`` tokens touches: Σ_e 1 − (1 − q_e)^T."""
    if tokens <= 0:
        return 0.0
    return sum(1.0 - (1.0 - q) ** tokens for q in inclusion(shares, k))


def balanced_distinct(experts: int, k: int, tokens: float) -> float:
    """E·(1 − (1 − k/E)^T): the balanced-routing case of :func:`distinct_experts`."""
    return experts * (1.0 - (1.0 - k / experts) ** tokens)


@dataclass(frozen=True)
class StepRouting:
    """What one MoE layer does in a step of ``tokens`` tokens (expected values)."""

    tokens: float
    routed_rows: float      # T·k: rows the grouped GEMMs compute
    distinct: float         # experts touched: their weights are read
    rows_per_expert: float  # mean rows of an expert that was touched
    padded_rows: float      # rows computed when each expert's rows are padded to the tile
    busiest: float          # the most popular expert's expected rows (T·max q_e)


def step_routing(tokens: int, k: int, shares: Sequence[float], tile: int = 1,
                 k_dist: tuple = ()) -> StepRouting:
    """See :func:`_step_routing` (memoised: a sweep asks the same shapes many times)."""
    return _step_routing(int(tokens), int(k), tuple(shares), int(tile), tuple(k_dist))


def check_k_dist(k_dist, top_k: int, what: str = "the distribution of k") -> tuple:
    """A per-token distribution of experts per token, ``((k, probability), …)``: each k a whole
    number in 1…``top_k`` (a token cannot take more experts than the model routes it to, nor
    none), probabilities positive and summing to 1 (within 1e-6).  Returned sorted by k."""
    out = []
    for pair in k_dist:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise UserError(f"{what}: give (k, probability) pairs, got {pair!r}")
        k, p = pair
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= top_k:
            raise UserError(f"{what}: k={k!r} is outside 1…{top_k} (the model routes each token "
                            f"to {top_k} experts)")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise UserError(f"{what}: probability {p!r} of k={k} is not in (0, 1]")
        out.append((k, float(p)))
    if not out or abs(sum(p for _, p in out) - 1.0) > 1e-6 or len({k for k, _ in out}) != len(out):
        raise UserError(f"{what}: the probabilities must sum to 1, one per k")
    return tuple(sorted(out))


def mean_k(k_dist: tuple, k: int) -> float:
    return sum(kk * p for kk, p in k_dist) if k_dist else float(k)


def mixed_inclusion(shares: Sequence[float], k: int, k_dist: tuple = ()) -> list[float]:
    """Each expert's inclusion probability for a token whose k is drawn from ``k_dist``
    (Σ_j p_j · q_e(k_j)); ``k`` itself when there is no distribution.  With the tokens of a step
    independent, E[Π_t (1 − q_e(k_t))] = (1 − q̄_e)^T, so the distinct-experts law over this
    mixture is exact — and it is not the mean of the law at each k (the law is not linear in
    k).  Under balanced routing q̄_e = k̄/E, the law at the mean k̄; under a skewed router the
    popular experts stay capped at 1 whatever a token's k, so it is not."""
    if not k_dist:
        return inclusion(shares, k)
    out = [0.0] * len(shares)
    for kk, p in k_dist:
        for i, x in enumerate(inclusion(shares, kk)):
            out[i] += p * x
    return out


@lru_cache(maxsize=4096)
def _step_routing(tokens: int, k: int, shares: tuple, tile: int = 1, k_dist: tuple = ()) -> StepRouting:
    """The expected shape of one MoE layer's step.  An expert's rows are Binomial(T, q_e); the
    padded rows are E[⌈rows/tile⌉·tile] summed over the experts (exact for T ≤ 4096; above,
    each touched expert adds (tile − 1)/2 rows on average to its mean).  With a per-token
    distribution of k (``k_dist``) q_e is the mixture's (:func:`mixed_inclusion`)."""
    q = mixed_inclusion(shares, k, k_dist)
    T = max(0, int(tokens))
    distinct = sum(1.0 - (1.0 - x) ** T for x in q)
    rows = T * mean_k(k_dist, k)
    padded = 0.0
    for x in q:
        if x <= 0 or T == 0:
            continue
        if tile <= 1:
            padded += T * x
        elif T <= 4096:
            padded += _padded_binomial(T, x, tile)
        else:
            padded += T * x + (tile - 1) / 2.0 * (1.0 - (1.0 - x) ** T)
    busiest = max((T * x for x in q), default=0.0)
    return StepRouting(float(T), float(rows), distinct, rows / distinct if distinct else 0.0,
                       padded if tile > 1 else float(rows), busiest)


_MEAN_STEPS: dict = {}


def mean_step(tokens: int, k: int, r: Routing, tile: int = 1, k_dist: tuple = ()) -> StepRouting:
    """:func:`step_routing` averaged over the routing's layers (a recorded histogram routes each
    layer its own way): the op list prices one MoE layer × the layer count, so the mean
    layer's distinct experts and padded rows (the bytes and FLOPs are linear in them)."""
    key = (int(tokens), int(k), r.id or r.name, len(r.shares), int(tile), tuple(k_dist))
    hit = _MEAN_STEPS.get(key)
    if hit is not None and hit[0] is r.shares:
        return hit[1]
    steps = [step_routing(tokens, k, sh, tile, k_dist) for sh in r.shares]
    n = len(steps)
    out = steps[0] if n == 1 else StepRouting(
        steps[0].tokens, steps[0].routed_rows, sum(x.distinct for x in steps) / n,
        sum(x.rows_per_expert for x in steps) / n, sum(x.padded_rows for x in steps) / n,
        sum(x.busiest for x in steps) / n)
    if len(_MEAN_STEPS) > 4096:
        _MEAN_STEPS.clear()
    _MEAN_STEPS[key] = (r.shares, out)
    return out


def _padded_binomial(n: int, p: float, tile: int) -> float:
    """E[⌈X/tile⌉·tile] for X ~ Binomial(n, p), summed over the pmf (log space, stable)."""
    if p >= 1.0:
        return float(math.ceil(n / tile) * tile)
    lp, lq = math.log(p), math.log1p(-p)
    mean = n * p
    sd = math.sqrt(max(mean * (1 - p), 1e-12))
    lo, hi = max(0, int(mean - 12 * sd) - 1), min(n, int(mean + 12 * sd) + 2)
    out = 0.0
    for m in range(lo, hi + 1):
        logpmf = math.lgamma(n + 1) - math.lgamma(m + 1) - math.lgamma(n - m + 1) + m * lp + (n - m) * lq
        out += math.exp(logpmf) * math.ceil(m / tile) * tile
    return out


def decode_weight_bytes(cfg: MoEConfig, hidden: int, tokens: int, shares: Sequence[float],
                        bytes_per_weight: float) -> float:
    """Expert and router weight bytes one MoE layer reads in a step of ``tokens`` tokens: the
    distinct routed experts' gate, up and down, the shared experts, the router."""
    d = distinct_experts(tokens, cfg.top_k, shares)
    routed = d * cfg.expert_params(hidden)
    shared = 3 * hidden * cfg.shared_inter
    router = hidden * cfg.experts
    return (routed + shared + router) * bytes_per_weight

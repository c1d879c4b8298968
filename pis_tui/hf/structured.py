"""Structured pruning that changes shapes: layers dropped (static depth), heads and channels
sliced (static width), linears factorised (low rank)."""

from __future__ import annotations

from ..errors import UserError
from ..model.layer import round_half_up
from .calibration import Calibration
from .layout import decoder_layers, decoder_linear_params, decoder_linears, head_dim_of
from .result import PruneResult

# ---------------------------------------------------------------------------------------------
# static_depth
# ---------------------------------------------------------------------------------------------

def _zero_modules():
    import torch
    import torch.nn as nn

    class SkippedAttention(nn.Module):
        """A removed attention block: contributes nothing to the residual stream."""

        def forward(self, hidden_states, *args, **kwargs):
            return torch.zeros_like(hidden_states), None

    class SkippedMLP(nn.Module):
        """A removed MLP block: contributes nothing to the residual stream."""

        def forward(self, x, *args, **kwargs):
            return torch.zeros_like(x)

    return SkippedAttention, SkippedMLP


def _keep_layers(model, keep: list[int]) -> None:
    import torch.nn as nn

    layers = decoder_layers(model)
    new = nn.ModuleList([layers[i] for i in keep])
    for j, layer in enumerate(new):
        for obj in (layer, getattr(layer, "self_attn", None)):
            if obj is not None and hasattr(obj, "layer_idx"):
                obj.layer_idx = j
    model.model.layers = new
    cfg = model.config
    types = getattr(cfg, "layer_types", None)
    cfg.num_hidden_layers = len(keep)
    if isinstance(types, (list, tuple)) and len(types) == len(layers):
        cfg.layer_types = [types[i] for i in keep]


def prune_static_depth(model, sparsity: float, cal: Calibration, granularity: str = "layer") -> PruneResult:
    """Drop the floor(s·n + 0.5) least influential layers (or attention / MLP blocks)."""
    layers = decoder_layers(model)
    n = len(layers)
    if granularity == "layer":
        k = min(round_half_up(sparsity * n), n - 1)
        order = sorted(range(n), key=lambda i: (cal.layer_bi[i], i))
        drop = sorted(order[:k])
        _keep_layers(model, [i for i in range(n) if i not in drop])
        return PruneResult("static_depth", sparsity, k / n,
                           note=f"dropped {k}/{n} layers (Block Influence)",
                           details={"dropped_layers": drop, "block_influence": list(cal.layer_bi)})
    if granularity != "sublayer":
        raise UserError(f"granularity {granularity!r}: use layer or sublayer")
    blocks = [(cal.attn_bi[i], i, "attn") for i in range(n)] + [(cal.mlp_bi[i], i, "mlp") for i in range(n)]
    k = min(round_half_up(sparsity * 2 * n), 2 * n - 1)
    drop = sorted(blocks)[:k]
    SkippedAttention, SkippedMLP = _zero_modules()
    dropped = {i: set() for i in range(n)}
    for _, i, kind in drop:
        dropped[i].add(kind)
        if kind == "attn":
            layers[i].self_attn = SkippedAttention()
        else:
            layers[i].mlp = SkippedMLP()
    whole = [i for i in range(n) if dropped[i] == {"attn", "mlp"}]
    if whole:
        _keep_layers(model, [i for i in range(n) if i not in whole])
    return PruneResult("static_depth", sparsity, k / (2 * n),
                       note=f"dropped {k}/{2 * n} attention/MLP blocks (Block Influence)",
                       details={"dropped_blocks": [(i, kind) for _, i, kind in sorted(drop, key=lambda t: (t[1], t[2]))]})


# ---------------------------------------------------------------------------------------------
# static_width
# ---------------------------------------------------------------------------------------------

def _slice_linear(lin, out_idx=None, in_idx=None):
    import torch.nn as nn

    w = lin.weight.data
    b = lin.bias.data if lin.bias is not None else None
    if out_idx is not None:
        w = w.index_select(0, out_idx.to(w.device))
        b = b.index_select(0, out_idx.to(w.device)) if b is not None else None
    if in_idx is not None:
        w = w.index_select(1, in_idx.to(w.device))
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    new.requires_grad_(lin.weight.requires_grad)
    return new


def auto_align(intermediate_size: int) -> int:
    """128 for real models, 8 for tiny ones (intermediate size under 1024)."""
    return 128 if intermediate_size >= 1024 else 8


def width_targets(num_kv_heads: int, intermediate_size: int, sparsity: float,
                  align: int | None = None) -> tuple[int, int]:
    """(kept KV groups, kept MLP channels) for a sparsity: round((1−s)·kv) groups, at least 1;
    (1−s)·I channels rounded to a multiple of ``align`` (at least one multiple, at most I)."""
    a = align or auto_align(intermediate_size)
    groups = max(1, min(num_kv_heads, round_half_up((1 - sparsity) * num_kv_heads)))
    chans = round_half_up((1 - sparsity) * intermediate_size / a) * a
    chans = max(min(a, intermediate_size), min(intermediate_size, chans))
    return groups, chans


def prune_static_width(model, sparsity: float, cal: Calibration, align: int | None = None) -> PruneResult:
    """Remove whole GQA groups of heads and MLP channels of least activation magnitude, slicing
    q/k/v/o and gate/up/down and updating module and config attributes."""
    import torch

    cfg = model.config
    layers = decoder_layers(model)
    before = decoder_linear_params(model)
    first = layers[0].self_attn
    hd = head_dim_of(first, cfg)
    hq = first.q_proj.out_features // hd
    hkv = first.k_proj.out_features // hd
    group = hq // hkv
    inter = layers[0].mlp.gate_proj.out_features
    keep_groups, keep_ch = width_targets(hkv, inter, sparsity, align)
    kept_heads = {}
    for i, layer in enumerate(layers):
        attn, mlp = layer.self_attn, layer.mlp
        # heads: o_proj input, per channel → per head → per GQA group
        if keep_groups < hkv:
            o_sq = cal.in_sqsum[f"layers.{i}.self_attn.o_proj"].reshape(hkv, group, hd)
            g_imp = o_sq.sum(dim=(1, 2)).sqrt()
            groups = torch.sort(torch.topk(g_imp, keep_groups).indices).values
            kept_heads[i] = groups.tolist()
            kv_idx = (groups[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)
            q_heads = (groups[:, None] * group + torch.arange(group)[None, :]).reshape(-1)
            q_idx = (q_heads[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)
            attn.q_proj = _slice_linear(attn.q_proj, out_idx=q_idx)
            attn.k_proj = _slice_linear(attn.k_proj, out_idx=kv_idx)
            attn.v_proj = _slice_linear(attn.v_proj, out_idx=kv_idx)
            attn.o_proj = _slice_linear(attn.o_proj, in_idx=q_idx)
            for name, val in (("num_heads", keep_groups * group), ("num_attention_heads", keep_groups * group),
                              ("num_key_value_heads", keep_groups)):
                if hasattr(attn, name):
                    setattr(attn, name, val)
            if hasattr(attn, "head_dim"):
                attn.head_dim = hd
        if keep_ch < inter:
            c_imp = cal.in_sqsum[f"layers.{i}.mlp.down_proj"]
            ch = torch.sort(torch.topk(c_imp, keep_ch).indices).values
            mlp.gate_proj = _slice_linear(mlp.gate_proj, out_idx=ch)
            mlp.up_proj = _slice_linear(mlp.up_proj, out_idx=ch)
            mlp.down_proj = _slice_linear(mlp.down_proj, in_idx=ch)
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = keep_ch
    cfg.head_dim = hd
    cfg.num_attention_heads = keep_groups * group
    cfg.num_key_value_heads = keep_groups
    cfg.intermediate_size = keep_ch
    after = decoder_linear_params(model)
    return PruneResult("static_width", sparsity, 1 - after / before,
                       note=f"heads {hq}→{keep_groups * group}, KV {hkv}→{keep_groups}, MLP {inter}→{keep_ch}",
                       details={"kv_groups": keep_groups, "q_heads": keep_groups * group,
                                "intermediate_size": keep_ch, "kept_groups": kept_heads})


# ---------------------------------------------------------------------------------------------
# low_rank
# ---------------------------------------------------------------------------------------------

def _low_rank_class():
    import torch.nn as nn

    class LowRankLinear(nn.Module):
        """W[N,K] ≈ B[N,r]·A[r,K]: ``first`` maps K→r, ``second`` maps r→N (with W's bias)."""

        def __init__(self, first, second):
            super().__init__()
            self.first, self.second = first, second
            self.in_features, self.out_features = first.in_features, second.out_features
            self.rank = first.out_features

        def forward(self, x):
            return self.second(self.first(x))

    return LowRankLinear


def prune_low_rank(model, sparsity: float, svd_cache: dict | None = None) -> PruneResult:
    """Replace each decoder nn.Linear by two linears through rank r (truncated SVD, singular
    values split evenly as sqrt(S) on both factors).  A linear whose rank would not save
    parameters (r ≥ min(N, K) or r·(N+K) ≥ N·K) stays dense.

    ``svd_cache``: a dict shared between calls on copies of the same dense model, so each
    linear is decomposed once for all sparsities (the SVD dominates the cost on CPU)."""
    import torch
    import torch.nn as nn

    from ..model.layer import factor_rank

    LowRankLinear = _low_rank_class()
    before = decoder_linear_params(model)
    ranks = {}
    lins = decoder_linears(model)
    n_lin = len(lins)
    for name, lin in lins.items():
        n_out, k_in = lin.weight.shape
        r = factor_rank(n_out, k_in, sparsity)
        if r >= min(n_out, k_in) or r * (n_out + k_in) >= n_out * k_in:
            continue
        w = lin.weight.data.float()
        if svd_cache is not None and name in svd_cache:
            u, s, vh = (t.to(w.device) for t in svd_cache[name])
        else:
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            if svd_cache is not None:
                svd_cache[name] = (u, s, vh)
        sr = s[:r].sqrt()
        first = nn.Linear(k_in, r, bias=False, device=w.device, dtype=lin.weight.dtype)
        second = nn.Linear(r, n_out, bias=lin.bias is not None, device=w.device, dtype=lin.weight.dtype)
        first.weight.data.copy_(sr[:, None] * vh[:r])
        second.weight.data.copy_(u[:, :r] * sr[None, :])
        if lin.bias is not None:
            second.bias.data.copy_(lin.bias.data)
        _, part, attr = name.rsplit(".", 2)
        layer = decoder_layers(model)[int(name.split(".")[1])]
        setattr(getattr(layer, part), attr, LowRankLinear(first, second))
        ranks[name] = r
    after = decoder_linear_params(model)
    return PruneResult("low_rank", sparsity, 1 - after / before,
                       note=(f"SVD of {len(ranks)}/{n_lin} linears, rank {min(ranks.values())}–{max(ranks.values())}"
                             if ranks else "no linear small enough to gain from a low rank"),
                       details={"ranks": ranks})

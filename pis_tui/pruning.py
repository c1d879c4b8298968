"""Real pruning of a loaded Hugging Face causal LM, one function per family, by importance.

This is the measured-quality side of pis-tui: it changes a model the way a family says
(layers gone, widths sliced, weights zeroed, linears factorised, sublayers or attention
blocks skipped per token) so that its perplexity can be measured.  Every function works
in place on a model of the Llama layout (``model.model.layers[i].self_attn.{q,k,v,o}_proj``
and ``.mlp.{gate,up,down}_proj``: Llama, Qwen2/2.5/3, Mistral and their kin).

Importance comes from one calibration pass (:func:`calibrate`) over token windows:

* ``static_depth``: ShortGPT's Block Influence, BI = 1 − cos(x_in, x_out) of a layer's (or,
  with ``granularity="sublayer"``, of an attention / MLP block's) input and output hidden
  states, averaged over tokens; the least influential floor(s·n + 0.5) are dropped.
* ``static_width``: activation magnitude: the L2 norm over calibration tokens of the
  input of o_proj (per head, summed over a GQA group) and of down_proj (per MLP channel).
  Whole GQA groups are removed; MLP channels are kept in multiples of ``align``.
* ``semi_structured_24`` and ``unstructured``: Wanda scores |W_ij|·‖X_j‖₂ (one pass over
  the dense model, not Wanda's layer-by-layer sequential variant); 2:4 keeps 2 of every 4
  consecutive input weights, unstructured keeps the top (1−s) of each output row.
* ``low_rank``: plain truncated SVD of each decoder linear (not activation-aware like
  Dobi-SVD or ASVD, so it is a pessimistic stand-in for those methods).
* ``dynamic_depth``: forward hooks that compute each attention / MLP update and zero it for
  the share s of tokens whose update norm ‖f(x)‖ is smallest in their sequence.  This is a
  quality *oracle* (it still computes every update and looks at the whole window to rank
  tokens): it bounds what a learned router skipping the same share could reach and is
  no speed path at all.
* ``dynamic_sparse_attention``: block-sparse causal attention keeping, per query block,
  the top (1−s) of its causal key blocks by pooled q·k score (the diagonal block always
  kept).  Also an oracle: the scores are computed from the full q and k.
* ``static_width_hidden`` (SliceGPT-like) is not implemented: its family's
  ``quality_unsupported`` says why (:func:`unsupported`).

Each family's ``prune`` hook (``pis_tui/families``) calls its function here; :func:`apply` is
the one entry point.  torch is imported inside the functions (this module is imported by the
CLI lazily anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from . import families
from .errors import UserError


def measurable() -> tuple[str, ...]:
    """Families that can be applied to a real model (the registry's, in its order)."""
    return tuple(f.name for f in families.all_families() if not f.is_baseline and f.quality_supported)


def unsupported() -> dict[str, str]:
    """Families that cannot, with the reason shown to the user."""
    return {f.name: f.quality_unsupported_reason for f in families.all_families()
            if not f.is_baseline and not f.quality_supported}


ATTN_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")

# ---------------------------------------------------------------------------------------------
# model layout
# ---------------------------------------------------------------------------------------------

def decoder_layers(model):
    """The ModuleList of decoder layers, checked to have the Llama layout."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or len(layers) == 0:
        raise UserError(f"{type(model).__name__}: no model.layers: only Llama-layout decoder models "
                        "(Llama, Qwen2/3, Mistral…) can be pruned for measured quality")
    first = layers[0]
    attn, mlp = getattr(first, "self_attn", None), getattr(first, "mlp", None)
    if attn is None or mlp is None or not all(hasattr(attn, n) for n in ATTN_LINEARS) \
            or not all(hasattr(mlp, n) for n in MLP_LINEARS):
        raise UserError(f"{type(model).__name__}: layers lack self_attn.{{q,k,v,o}}_proj or "
                        "mlp.{gate,up,down}_proj: this layout cannot be pruned for measured quality")
    return layers


def decoder_linears(model) -> dict[str, Any]:
    """{"layers.3.self_attn.q_proj": nn.Linear, ...} over every decoder layer."""
    import torch.nn as nn

    out = {}
    for i, layer in enumerate(decoder_layers(model)):
        for part, names in (("self_attn", ATTN_LINEARS), ("mlp", MLP_LINEARS)):
            mod = getattr(layer, part)
            for n in names:
                lin = getattr(mod, n)
                if isinstance(lin, nn.Linear):
                    out[f"layers.{i}.{part}.{n}"] = lin
    return out


def decoder_linear_params(model) -> int:
    """Parameters of the decoder linears (weights only), counting factorised ones as they are."""
    total = 0
    for layer in decoder_layers(model):
        for part, names in (("self_attn", ATTN_LINEARS), ("mlp", MLP_LINEARS)):
            mod = getattr(layer, part, None)
            for n in names:
                lin = getattr(mod, n, None) if mod is not None else None
                if lin is None:
                    continue
                total += sum(p.numel() for name, p in lin.named_parameters() if name.endswith("weight"))
    return total


def _head_dim(attn, cfg) -> int:
    hd = getattr(attn, "head_dim", None) or getattr(cfg, "head_dim", None)
    return int(hd or cfg.hidden_size // cfg.num_attention_heads)


# ---------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------

@dataclass
class Calibration:
    """Importance statistics from one pass of the dense model over calibration windows."""

    n_tokens: int = 0
    #: per layer: mean over tokens of 1 − cos(layer input, layer output)
    layer_bi: list = field(default_factory=list)
    #: per layer: BI of the attention block and of the MLP block
    attn_bi: list = field(default_factory=list)
    mlp_bi: list = field(default_factory=list)
    #: per decoder linear name: sum over tokens of x_j² (float64 tensor of in_features)
    in_sqsum: dict = field(default_factory=dict)

    def in_norm(self, name: str):
        """‖X_j‖₂ over calibration tokens for the input channels of linear ``name``."""
        return self.in_sqsum[name].sqrt()


def _first_tensor(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def calibrate(model, windows, *, on_progress=None, cancel=None) -> Calibration:
    """Run the dense model over ``windows`` (LongTensor [n, T] or list of 1-D token lists) and
    collect Block Influence per layer and sublayer and input sum of squares per decoder linear."""
    import torch

    from .perplexity import _check_cancel, _as_windows

    layers = decoder_layers(model)
    lins = decoder_linears(model)
    n = len(layers)
    cal = Calibration(layer_bi=[0.0] * n, attn_bi=[0.0] * n, mlp_bi=[0.0] * n)
    sq = {name: None for name in lins}
    state: dict = {}
    hooks = []

    def lin_hook(name):
        def h(mod, args, kwargs=None):
            x = _first_tensor(args).detach().float()
            s = x.pow(2).reshape(-1, x.shape[-1]).sum(0).double()
            sq[name] = s if sq[name] is None else sq[name] + s
        return h

    def cos_loss(a, b):
        a, b = a.float().reshape(-1, a.shape[-1]), b.float().reshape(-1, b.shape[-1])
        return float((1.0 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).sum())

    def layer_pre(i):
        def h(mod, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            state[i] = {"in": x.detach()}
        return h

    def attn_post(i):
        def h(mod, args, kwargs, out):
            state[i]["attn"] = _first_tensor(out).detach()
        return h

    def layer_post(i):
        def h(mod, args, kwargs, out):
            y = _first_tensor(out).detach()
            st = state.pop(i)
            x = st["in"]
            cal.layer_bi[i] += cos_loss(x, y)
            if "attn" in st:
                mid = x + st["attn"]
                cal.attn_bi[i] += cos_loss(x, mid)
                cal.mlp_bi[i] += cos_loss(mid, y)
        return h

    try:
        for name, lin in lins.items():
            hooks.append(lin.register_forward_pre_hook(lin_hook(name)))
        for i, layer in enumerate(layers):
            hooks.append(layer.register_forward_pre_hook(layer_pre(i), with_kwargs=True))
            hooks.append(layer.self_attn.register_forward_hook(attn_post(i), with_kwargs=True))
            hooks.append(layer.register_forward_hook(layer_post(i), with_kwargs=True))
        device = next(model.parameters()).device
        wins = _as_windows(windows)
        model.eval()
        with torch.inference_mode():
            for k, w in enumerate(wins):
                _check_cancel(cancel)
                ids = w.to(device).unsqueeze(0) if w.dim() == 1 else w.to(device)
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
                cal.n_tokens += ids.numel()
                if on_progress:
                    on_progress(k + 1, len(wins))
    finally:
        for h in hooks:
            h.remove()
    if cal.n_tokens == 0:
        raise UserError("no calibration tokens")
    for lst in (cal.layer_bi, cal.attn_bi, cal.mlp_bi):
        for i in range(n):
            lst[i] /= cal.n_tokens
    cal.in_sqsum = {k: v.cpu() for k, v in sq.items() if v is not None}
    return cal


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------

@dataclass
class PruneResult:
    strategy: str
    sparsity: float
    achieved_sparsity: float
    note: str = ""
    details: dict = field(default_factory=dict)
    #: for dynamic families: a live counter object (achieved share read after running)
    tracker: Any = None

    def final_achieved(self) -> float:
        if self.tracker is not None and self.tracker.total > 0:
            return self.tracker.share()
        return self.achieved_sparsity


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


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
        k = min(_round_half_up(sparsity * n), n - 1)
        order = sorted(range(n), key=lambda i: (cal.layer_bi[i], i))
        drop = sorted(order[:k])
        _keep_layers(model, [i for i in range(n) if i not in drop])
        return PruneResult("static_depth", sparsity, k / n,
                           note=f"dropped {k}/{n} layers (Block Influence)",
                           details={"dropped_layers": drop, "block_influence": list(cal.layer_bi)})
    if granularity != "sublayer":
        raise UserError(f"granularity {granularity!r}: use layer or sublayer")
    blocks = [(cal.attn_bi[i], i, "attn") for i in range(n)] + [(cal.mlp_bi[i], i, "mlp") for i in range(n)]
    k = min(_round_half_up(sparsity * 2 * n), 2 * n - 1)
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
    groups = max(1, min(num_kv_heads, _round_half_up((1 - sparsity) * num_kv_heads)))
    chans = _round_half_up((1 - sparsity) * intermediate_size / a) * a
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
    hd = _head_dim(first, cfg)
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
# semi_structured_24, unstructured (Wanda)
# ---------------------------------------------------------------------------------------------

def wanda_scores(lin, in_norm):
    """|W_ij|·‖X_j‖₂, float32."""
    return lin.weight.data.abs().float() * in_norm.to(lin.weight.device).float()[None, :]


def prune_semi_structured_24(model, cal: Calibration, sparsity: float = 0.5) -> PruneResult:
    """In every group of 4 consecutive input weights of each decoder linear, keep the 2 of
    highest Wanda score (the sparsity is fixed at 0.5 whatever is asked)."""
    import torch

    zeros = total = 0
    skipped = []
    for name, lin in decoder_linears(model).items():
        n_out, k_in = lin.weight.shape
        total += lin.weight.numel()
        if k_in % 4:
            skipped.append(name)
            continue
        s = wanda_scores(lin, cal.in_norm(name)).reshape(n_out, k_in // 4, 4)
        keep = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, torch.topk(s, 2, dim=-1).indices, True)
        lin.weight.data.mul_(keep.reshape(n_out, k_in).to(lin.weight.dtype))
        zeros += int((~keep).sum())
    note = "2:4 by Wanda score"
    if skipped:
        note += f"; {len(skipped)} linears skipped (input size not a multiple of 4)"
    return PruneResult("semi_structured_24", sparsity, zeros / max(total, 1), note=note)


def prune_unstructured(model, sparsity: float, cal: Calibration) -> PruneResult:
    """Zero, in each output row of each decoder linear, the floor(s·K + 0.5) weights of lowest
    Wanda score."""
    import torch

    zeros = total = 0
    for name, lin in decoder_linears(model).items():
        n_out, k_in = lin.weight.shape
        total += lin.weight.numel()
        k = min(_round_half_up(sparsity * k_in), k_in)
        if k == 0:
            continue
        s = wanda_scores(lin, cal.in_norm(name))
        idx = torch.topk(s, k, dim=1, largest=False).indices
        mask = torch.ones_like(s, dtype=torch.bool).scatter_(1, idx, False)
        lin.weight.data.mul_(mask.to(lin.weight.dtype))
        zeros += n_out * k
    return PruneResult("unstructured", sparsity, zeros / max(total, 1),
                       note="Wanda |W|·‖X‖ per row")


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

    from .families.low_rank import rank as low_rank_rank

    LowRankLinear = _low_rank_class()
    before = decoder_linear_params(model)
    ranks = {}
    lins = decoder_linears(model)
    n_lin = len(lins)
    for name, lin in lins.items():
        n_out, k_in = lin.weight.shape
        r = low_rank_rank(n_out, k_in, sparsity)
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


# ---------------------------------------------------------------------------------------------
# dynamic_depth (oracle)
# ---------------------------------------------------------------------------------------------

@dataclass
class SkipTracker:
    """Counts (sublayer, token) pairs skipped and seen."""

    skipped: int = 0
    total: int = 0
    handles: list = field(default_factory=list)

    def share(self) -> float:
        return self.skipped / self.total if self.total else 0.0

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def enable_dynamic_depth(model, sparsity: float) -> PruneResult:
    """Per sequence and per sublayer (every attention and MLP block), zero the update of the
    floor(s·T + 0.5) tokens with the smallest ‖f(x)‖.  A quality oracle, not a speed path:
    every update is still computed, and the ranking looks at the whole window."""
    import torch

    tracker = SkipTracker()

    def hook(mod, args, out):
        upd = _first_tensor(out)
        if upd.dim() != 3:
            return out
        b, t, _ = upd.shape
        k = min(_round_half_up(sparsity * t), t)
        tracker.total += b * t
        if k == 0:
            return out
        norms = upd.float().norm(dim=-1)  # [B, T]
        idx = torch.topk(norms, k, dim=-1, largest=False).indices
        keep = torch.ones_like(norms, dtype=torch.bool).scatter_(-1, idx, False)
        tracker.skipped += b * k
        new = upd * keep.unsqueeze(-1).to(upd.dtype)
        if isinstance(out, tuple):
            return (new,) + tuple(out[1:])
        return new

    for layer in decoder_layers(model):
        tracker.handles.append(layer.self_attn.register_forward_hook(hook))
        tracker.handles.append(layer.mlp.register_forward_hook(hook))
    return PruneResult("dynamic_depth", sparsity, sparsity, tracker=tracker,
                       note="oracle: smallest-norm sublayer updates zeroed per token")


# ---------------------------------------------------------------------------------------------
# dynamic_sparse_attention (oracle)
# ---------------------------------------------------------------------------------------------

_BSA_NAME = "pis_block_sparse"


@dataclass
class BlockTracker:
    skipped: int = 0
    total: int = 0

    def share(self) -> float:
        return self.skipped / self.total if self.total else 0.0

    def remove(self) -> None:
        pass


def _block_sparse_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal attention restricted, per query block and head, to the top (1−s) causal key blocks
    by pooled (mean) q·k score, the diagonal block always kept.  The padding mask is ignored:
    pis-tui only feeds contiguous unpadded windows."""
    import torch

    cfgd = getattr(module, "_pis_bsa", None)
    rep = getattr(module, "num_key_value_groups", 1)
    if rep > 1:
        b_, h_, s_, d_ = key.shape
        key = key[:, :, None].expand(b_, h_, rep, s_, d_).reshape(b_, h_ * rep, s_, d_)
        value = value[:, :, None].expand(b_, h_, rep, s_, d_).reshape(b_, h_ * rep, s_, d_)
    bsz, heads, t, d = query.shape
    s_len = key.shape[2]
    scaling = scaling if scaling is not None else d ** -0.5
    qf, kf, vf = query.float(), key.float(), value.float()
    scores = torch.matmul(qf, kf.transpose(2, 3)) * scaling
    off = s_len - t
    qpos = torch.arange(t, device=query.device)[:, None] + off
    kpos = torch.arange(s_len, device=query.device)[None, :]
    allowed = kpos <= qpos  # [T, S]
    if cfgd is not None and cfgd["sparsity"] > 0 and t == s_len and t > cfgd["block"]:
        blk, sp, tracker = cfgd["block"], cfgd["sparsity"], cfgd["tracker"]
        nb = -(-t // blk)
        pad = nb * blk - t
        qp = torch.nn.functional.pad(qf, (0, 0, 0, pad))
        kp = torch.nn.functional.pad(kf, (0, 0, 0, pad))
        counts = torch.full((nb,), float(blk), device=query.device)
        counts[-1] = blk - pad
        qpool = qp.reshape(bsz, heads, nb, blk, d).sum(3) / counts[:, None]
        kpool = kp.reshape(bsz, heads, nb, blk, d).sum(3) / counts[:, None]
        bscore = torch.matmul(qpool, kpool.transpose(2, 3))  # [B, H, nb, nb]
        bi = torch.arange(nb, device=query.device)
        causal_b = bi[None, :] <= bi[:, None]
        diag = bi[None, :] == bi[:, None]
        bscore = bscore.masked_fill(~causal_b, float("-inf")).masked_fill(diag, float("inf"))
        n_causal = bi + 1
        n_keep = torch.clamp(torch.floor((1 - sp) * n_causal.float() + 0.5).long(), min=1)
        rank = torch.argsort(torch.argsort(bscore, dim=-1, descending=True), dim=-1)
        keep_b = (rank < n_keep[:, None]) & causal_b  # [B, H, nb, nb]
        tracker.total += bsz * heads * int(n_causal.sum())
        tracker.skipped += bsz * heads * int(n_causal.sum()) - int(keep_b.sum())
        keep_tok = keep_b.repeat_interleave(blk, dim=2).repeat_interleave(blk, dim=3)[:, :, :t, :t]
        allowed = allowed & keep_tok
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, vf).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def enable_block_sparse_attention(model, sparsity: float, block: int = 64) -> PruneResult:
    """Switch every attention to :func:`_block_sparse_attention` keeping 1−s of causal blocks."""
    from transformers import AttentionInterface

    AttentionInterface.register(_BSA_NAME, _block_sparse_attention)
    tracker = BlockTracker()
    for layer in decoder_layers(model):
        layer.self_attn._pis_bsa = {"sparsity": sparsity, "block": int(block), "tracker": tracker}
    model.config._attn_implementation = _BSA_NAME
    return PruneResult("dynamic_sparse_attention", sparsity, sparsity, tracker=tracker,
                       note=f"oracle: top blocks by pooled q·k, {block}-token blocks")


# ---------------------------------------------------------------------------------------------
# one entry point
# ---------------------------------------------------------------------------------------------

def apply(model, strategy: str, sparsity: float, cal: Calibration | None, *, align: int | None = None,
          granularity: str = "layer", block: int = 64, svd_cache: dict | None = None) -> PruneResult:
    """Prune ``model`` in place by family ``strategy`` at ``sparsity`` (the family's ``prune``
    hook).  ``cal`` (from :func:`calibrate`) is needed by the families whose
    ``needs_calibration`` is set (static_depth, static_width, semi_structured_24, unstructured)."""
    fam = families.get(strategy)
    if fam.is_baseline:
        return fam.prune(model, 0.0, cal)
    if not fam.quality_supported:
        raise UserError(fam.quality_unsupported_reason)
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"sparsity {sparsity} is outside [0, 1)")
    if fam.needs_calibration and cal is None:
        raise ValueError(f"{strategy} needs a calibration")
    return fam.prune(model, sparsity, cal, align=align, granularity=granularity, block=block,
                     svd_cache=svd_cache)

"""Real pruning of a mixture of experts' routed experts, in transformers' own MoE classes
(Qwen3-MoE, Qwen2-MoE, Mixtral, OLMoE, Granite-MoE): the surgery behind the four expert-level
families, for ``pis-tui quality`` (a loaded model, a calibration) and ``pis-tui validate`` (a
built random-weight model, the routing of its timed prefill's inputs).

Each MoE block (:func:`pis_tui.hf.routing_record.moe_blocks`) holds an experts module with 3-D
weights — ``gate_up_proj`` [E, 2I, H] (gate rows first, then up) and ``down_proj`` [E, H, I];
``is_transposed`` experts hold [E, H, 2I] and [E, I, H] — and a router with ``weight`` [E, H]
(or a Linear), ``top_k`` and ``num_experts``.  transformers' ``grouped_mm`` forward sorts the
T·k routed rows by expert id and sizes the groups with ``histc(bins=num_experts)``: every
attribute holding E, k or I is updated with the tensors, the shared config too, so the forward,
the offsets and the config agree.

* :func:`slice_experts`: each layer keeps its own expert ids (router rows, both expert tensors,
  biases and any per-expert buffer, together); the kept ids are remembered on the experts
  module (``pis_kept_experts``) so a routing recorded from the pruned model can be read at the
  dense model's ids (:func:`dense_counts`).
* :func:`set_top_k`: k′ on every router (and the block and config where they hold it).
* :func:`slim_experts`: each expert keeps its own I′ channels (the gate and up halves of
  ``gate_up_proj`` the same channels, ``down_proj`` its K).
* :func:`skip_experts`: dynamic top-k — a router wrapper (:class:`SkipRouter`) that gives each
  token ⌊k̄⌋ or ⌈k̄⌉ of its k highest-weighted experts, drawn at the family's probabilities from
  a seeded stream, renormalised where the model's own router normalises its top-k weights
  (``norm_topk_prob``; Mixtral and Granite-MoE always do); a dropped slot gets the id E, which
  ``grouped_mm`` sorts past the last group (``histc`` drops it) and the experts module masks
  (its expert-parallel sentinel path), so the grouped GEMMs compute exactly Σ per-token k rows.

The criteria (:class:`ExpertStats`, one pre-hook on each experts module over calibration
forwards): the tokens each expert is routed to (expert pruning keeps each layer's most used —
:func:`pis_tui.model.moe.kept_experts`, the rule the prediction's ``pruned_routing`` applies)
and, per expert and channel, Σ over the tokens routed to it of |act(gate)·up| times the norm of
the channel's ``down_proj`` column (expert slimming keeps each expert's highest; an expert no
calibration token reached ranks its channels by ‖gate_c‖·‖up_c‖·‖down_c‖).

torch is imported inside the functions.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..errors import MeasureError, UserError

#: the config keys holding E, k and the routed experts' width (Qwen-MoE: moe_intermediate_size;
#: Mixtral, OLMoE, Granite-MoE: intermediate_size is the experts' width)
E_KEYS = ("num_experts", "num_local_experts")
K_KEYS = ("num_experts_per_tok",)
#: the prefill validate records its criteria from: the timed prefill's own draw of input ids
#: (:class:`pis_tui.validation.run.PhaseRun`) at batch 1 × this many tokens
VALIDATE_CAL_TOKENS = 128


# ====================================================================== finding the tensors


def blocks(model) -> list:
    """``[(layer index, block, experts, router), …]`` of every MoE block; a model without any
    is a UserError (one line)."""
    from .routing_record import moe_blocks, router_of

    found = [(i, b, b.experts, router_of(b)) for i, b in moe_blocks(model)]
    if not found:
        raise UserError(f"{type(model).__name__}: no mixture-of-experts block: the expert-level "
                        "families prune routed experts")
    return found


def _weights(experts) -> tuple:
    """(gate_up name or None, up name, down name, transposed) of a 3-D experts module."""
    names = dict(experts.named_parameters(recurse=False))
    down = names.get("down_proj")
    gu = "gate_up_proj" if "gate_up_proj" in names else None
    up = gu or ("up_proj" if "up_proj" in names else None)
    if down is None or up is None or down.dim() != 3:
        raise MeasureError(f"{type(experts).__name__}: its experts are not 3-D gate_up_proj/"
                           "down_proj tensors: no surgery for this class")
    return gu, up, "down_proj", bool(getattr(experts, "is_transposed", False))


def expert_inter(experts) -> int:
    """I of an experts module (its down projection's K)."""
    _gu, _up, down, tr = _weights(experts)
    w = getattr(experts, down)
    return int(w.shape[1] if tr else w.shape[2])


def _config_key(config, keys) -> Optional[str]:
    return next((k for k in keys if isinstance(getattr(config, k, None), int)), None)


def _inter_key(config) -> str:
    return "moe_intermediate_size" if isinstance(getattr(config, "moe_intermediate_size", None),
                                                 int) else "intermediate_size"


def shape_of(model) -> dict:
    """{"experts", "top_k", "expert_inter"} of every MoE block (one value each: a layer that
    disagrees is a MeasureError)."""
    seen: dict = {"experts": set(), "top_k": set(), "expert_inter": set()}
    for _i, _b, ex, router in blocks(model):
        seen["experts"].add(int(ex.num_experts))
        seen["top_k"].add(int(router.top_k))
        seen["expert_inter"].add(expert_inter(ex))
    if any(len(v) != 1 for v in seen.values()):
        raise MeasureError(f"the MoE blocks disagree on their shapes ({seen})")
    return {k: v.pop() for k, v in seen.items()}


# ====================================================================== criteria


class ExpertStats:
    """``with ExpertStats(model) as st: <forwards>``: per MoE block, the tokens each expert was
    routed to (``counts[j]``, [E]) and each expert's channel scores (``scores[j]``, [E, I]:
    Σ over its tokens of |act(gate)·up|, times the norm of the channel's down column)."""

    def __init__(self, model, channels: bool = True):
        self.blocks = blocks(model)
        self.channels = channels
        self.counts: list = [None] * len(self.blocks)
        self.scores: list = [None] * len(self.blocks)
        self.tokens = 0
        self._handles: list = []

    def __enter__(self) -> "ExpertStats":
        from .routing_record import _takes_top_k_index

        for j, (_i, _b, ex, _r) in enumerate(self.blocks):
            pos = _takes_top_k_index(ex)
            if pos is None:
                raise MeasureError(f"{type(ex).__name__}: its forward takes no top_k_index")
            self._handles.append(ex.register_forward_pre_hook(self._hook(j, pos), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, j: int, pos: int):
        def hook(mod, args, kwargs):
            hs = args[0] if args else kwargs["hidden_states"]
            idx = kwargs["top_k_index"] if "top_k_index" in kwargs else args[pos]
            self._add(j, mod, hs, idx)
            return None
        return hook

    def _add(self, j: int, ex, hs, idx) -> None:
        import torch

        E = int(ex.num_experts)
        idx = idx.reshape(hs.shape[0], -1)
        if j == 0:
            self.tokens += int(hs.shape[0])
        c = torch.bincount(idx.reshape(-1).clamp(0, E), minlength=E + 1)[:E].cpu()
        self.counts[j] = c if self.counts[j] is None else self.counts[j] + c
        if not self.channels:
            return
        gu_name, up_name, down_name, tr = _weights(ex)
        gu, down = getattr(ex, up_name), getattr(ex, down_name)
        s = torch.zeros(E, expert_inter(ex), dtype=torch.float64)
        x = hs.detach().float()
        for e in torch.nonzero(c).flatten().tolist():
            tok = (idx == e).any(dim=-1).nonzero().flatten()
            w = gu[e].float()
            out = x[tok] @ (w if tr else w.t())
            h = ex._apply_gate(out) if gu_name else ex.act_fn(out)
            d = down[e].float()
            dn = d.norm(dim=1) if tr else d.norm(dim=0)  # the channel's down column
            s[e] = (h.abs().sum(0) * dn).double().cpu()
        self.scores[j] = s if self.scores[j] is None else self.scores[j] + s

    def kept_experts(self, keep: int) -> list:
        """Per block, the ``keep`` experts the calibration routed most tokens to (ties by
        index): :func:`pis_tui.model.moe.kept_experts`, the prediction's rule."""
        from ..model.moe import kept_experts

        if any(c is None for c in self.counts):
            raise MeasureError("a MoE layer routed no calibration token: no expert counts")
        return [kept_experts([float(v) for v in c.tolist()], keep) for c in self.counts]

    def kept_channels(self, model, keep: int) -> list:
        """Per block of ``model`` (the calibrated model or a copy of it), [E, keep] channel
        ids (ascending) each expert keeps."""
        import torch

        found = blocks(model)
        if len(found) != len(self.scores):
            raise MeasureError(f"the calibration saw {len(self.scores)} MoE layers, the model "
                               f"has {len(found)}")
        out = []
        for j, (_i, _b, ex, _r) in enumerate(found):
            s = self.scores[j]
            w = weight_scores(ex)
            if s is None:
                s = w
            else:
                s = s.clone()
                dead = s.sum(dim=1) == 0
                s[dead] = w[dead]
            out.append(torch.sort(torch.topk(s, keep, dim=1).indices, dim=1).values)
        return out


def weight_scores(ex):
    """[E, I]: ‖gate_c‖·‖up_c‖·‖down_c‖ of each expert's channels (no calibration)."""
    gu_name, up_name, down_name, tr = _weights(ex)
    w = getattr(ex, up_name).detach().float()
    d = getattr(ex, down_name).detach().float()
    inter = expert_inter(ex)
    if tr:  # [E, H, 2I], [E, I, H]
        rows = w.norm(dim=1)
        dn = d.norm(dim=2)
    else:  # [E, 2I, H], [E, H, I]
        rows = w.norm(dim=2)
        dn = d.norm(dim=1)
    s = rows[:, :inter] * rows[:, inter:] if gu_name else rows
    return (s * dn).double().cpu()


def calibration_ids(vocab: int, seed: int, tokens: int = VALIDATE_CAL_TOKENS):
    """[1, tokens] ids drawn as validate's timed prefill draws its own (seeded, uniform)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, tokens), generator=g)


def collect(model, ids, channels: bool = True) -> ExpertStats:
    """:class:`ExpertStats` of one prefill forward over ``ids``."""
    import torch

    st = ExpertStats(model, channels=channels)
    dev = next(model.parameters()).device
    with st, torch.inference_mode():
        model(input_ids=ids.to(dev), use_cache=False)
    return st


def calibrate_experts(model, windows, *, cal, on_progress=None, cancel=None):
    """``cal`` (a :class:`pis_tui.hf.calibration.Calibration`) with its ``experts`` statistics
    from one pass over the calibration ``windows``: what the expert-level families read.  A
    transformers MoE class's layers lack the Llama layout the other statistics (Block
    Influence, the linears' inputs) are taken from: they are left empty, and the families that
    need them refuse such a model with their own one line (the layout check)."""
    from .perplexity import run_windows

    st = ExpertStats(model)
    with st:
        run_windows(model, windows, cal, on_progress=on_progress, cancel=cancel)
    if cal.n_tokens == 0:
        raise UserError("no calibration tokens")
    cal.experts = st
    return cal


# ====================================================================== the surgery


def _param(t, like):
    import torch

    return torch.nn.Parameter(t.contiguous(), requires_grad=like.requires_grad)


def slice_experts(model, kept: Sequence[Sequence[int]]) -> None:
    """Each MoE block keeps the expert ids ``kept[j]`` (ascending; the same count for all):
    router rows and expert tensors together, E updated on the experts, the router, the block
    and the config."""
    import torch

    found = blocks(model)
    if len(kept) != len(found) or len({len(k) for k in kept}) != 1:
        raise MeasureError("slice_experts: one kept list per MoE block, all the same length")
    E2 = len(kept[0])
    dense_e = int(found[0][2].num_experts)
    with torch.no_grad():
        for (_i, block, ex, router), ids in zip(found, kept):
            E = int(ex.num_experts)
            idx = torch.as_tensor(list(ids), dtype=torch.long)
            if E2 < 1 or int(idx.min()) < 0 or int(idx.max()) >= E or len(set(ids)) != E2:
                raise MeasureError(f"slice_experts: kept ids {list(ids)} are not distinct ids "
                                   f"within 0…{E - 1}")
            prev = getattr(ex, "pis_kept_experts", None)
            for name, p in list(ex.named_parameters(recurse=False)):
                if p.dim() >= 1 and p.shape[0] == E:
                    setattr(ex, name, _param(p.data[idx.to(p.device)], p))
            for name, b in list(ex.named_buffers(recurse=False)):
                if b.dim() >= 1 and b.shape[0] == E:
                    setattr(ex, name, b[idx.to(b.device)].contiguous())
            for name, p in list(router.named_parameters(recurse=False)):
                if p.dim() >= 1 and p.shape[0] == E:
                    setattr(router, name, _param(p.data[idx.to(p.device)], p))
            for name, b in list(router.named_buffers(recurse=False)):
                if b.dim() >= 1 and b.shape[0] == E:
                    setattr(router, name, b[idx.to(b.device)].contiguous())
            for obj in (ex, router, block):
                for attr in ("num_experts", "num_local_experts", "out_features"):
                    if isinstance(getattr(obj, attr, None), int) and getattr(obj, attr) == E:
                        setattr(obj, attr, E2)
            ex.pis_kept_experts = [prev[i] for i in ids] if prev else [int(i) for i in ids]
    if not getattr(model, "pis_dense_experts", None):
        model.pis_dense_experts = dense_e
    key = _config_key(model.config, E_KEYS)
    if key:
        setattr(model.config, key, E2)


def set_top_k(model, k2: int) -> None:
    """Every router (and the block, and the config) routes each token to ``k2`` experts."""
    found = blocks(model)
    for _i, block, ex, router in found:
        if not 1 <= k2 <= int(ex.num_experts):
            raise UserError(f"top-k {k2} is outside 1…{int(ex.num_experts)} (the experts)")
        for obj in (router, block):
            if isinstance(getattr(obj, "top_k", None), int):
                obj.top_k = k2
    key = _config_key(model.config, K_KEYS)
    if key:
        setattr(model.config, key, k2)


def slim_experts(model, channels: Sequence) -> None:
    """Each expert of MoE block j keeps the channels ``channels[j][e]`` ([E, I′] ids): the gate
    and up rows of ``gate_up_proj`` the same ones, ``down_proj`` its K; I′ updated on the
    experts and in the config."""
    import torch

    found = blocks(model)
    i2 = {int(c.shape[1]) for c in channels}
    if len(channels) != len(found) or len(i2) != 1:
        raise MeasureError("slim_experts: one [E, I′] channel table per MoE block, one I′")
    i2 = i2.pop()
    with torch.no_grad():
        for (_i, _block, ex, _r), ch in zip(found, channels):
            gu_name, up_name, down_name, tr = _weights(ex)
            inter = expert_inter(ex)
            w = getattr(ex, up_name)
            ch = ch.to(w.device).long()
            rows = torch.cat([ch, ch + inter], dim=1) if gu_name else ch  # gate, then up
            d = getattr(ex, down_name)
            if tr:  # [E, H, 2I] / [E, I, H]
                nw = torch.gather(w.data, 2, rows[:, None, :].expand(-1, w.shape[1], -1))
                nd = torch.gather(d.data, 1, ch[:, :, None].expand(-1, -1, d.shape[2]))
            else:  # [E, 2I, H] / [E, H, I]
                nw = torch.gather(w.data, 1, rows[:, :, None].expand(-1, -1, w.shape[2]))
                nd = torch.gather(d.data, 2, ch[:, None, :].expand(-1, d.shape[1], -1))
            setattr(ex, up_name, _param(nw, w))
            setattr(ex, down_name, _param(nd, d))
            for bias, idx in ((f"{up_name}_bias", rows), ("down_proj_bias", None)):
                b = getattr(ex, bias, None)
                if b is not None and idx is not None:
                    setattr(ex, bias, _param(torch.gather(b.data, 1, idx), b))
            if isinstance(getattr(ex, "intermediate_dim", None), int):
                ex.intermediate_dim = i2
    setattr(model.config, _inter_key(model.config), i2)


# ====================================================================== dynamic top-k


class SkipRouter:
    """Built by :func:`skip_experts` (a torch ``nn.Module`` subclass made there, so importing
    this module imports no torch)."""


def _skip_router_class():
    import torch
    import torch.nn as nn

    class _SkipRouter(nn.Module, SkipRouter):
        """The router, then each token's lower-weighted slots dropped: the token keeps k_lo of
        its k experts, or k_hi with probability ``p_hi`` (a seeded stream of draws, advanced
        each call); a dropped slot's id is E (skipped by ``grouped_mm``), its weight 0; the kept
        weights renormalised where the router normalises its top-k (``renorm``).  ``full``
        (recording the router's own routing) passes the router's output through."""

        def __init__(self, inner, experts: int, k_lo: int, k_hi: int, p_hi: float, seed: int,
                     renorm: bool):
            super().__init__()
            self.inner = inner
            self.experts, self.k_lo, self.k_hi, self.p_hi = experts, k_lo, k_hi, p_hi
            self.renorm, self.full = renorm, False
            self.seed, self.offset = seed, 0
            self.draws = torch.empty(0)
            self._u(0, inner.weight.device)  # drawn now, not inside a CUDA graph's capture

        # attributes the block or the recorder read from the router
        @property
        def top_k(self):
            return self.inner.top_k

        @property
        def weight(self):
            return self.inner.weight

        def _u(self, n: int, device):
            if self.draws.numel() < n + 1 or self.draws.device != device:
                size = max(1 << 16, 2 * n)
                g = torch.Generator().manual_seed(self.seed)
                self.draws = torch.rand(size, generator=g).to(device)
                self.offset = 0
            if self.offset + n > self.draws.numel():
                self.offset = 0
            u = self.draws[self.offset:self.offset + n]
            self.offset += n
            return u

        def forward(self, hidden_states):
            logits, w, idx = self.inner(hidden_states)
            if self.full:
                return logits, w, idx
            T, k = idx.shape
            k_t = torch.where(self._u(T, idx.device) < self.p_hi, self.k_hi, self.k_lo)
            # the five classes' routers take torch.topk (sorted): a token's first slots are its
            # highest-weighted experts
            keep = torch.arange(k, device=idx.device)[None, :] < k_t[:, None]
            w = torch.where(keep, w, torch.zeros_like(w))
            if self.renorm:
                w = w / w.sum(dim=-1, keepdim=True)
            idx = torch.where(keep, idx, torch.full_like(idx, self.experts))
            return logits, w, idx

    return _SkipRouter


def skip_experts(model, k_dist: Sequence, seed: int) -> None:
    """Wrap every router so each token takes its own number of experts: ``k_dist`` is
    ((k_lo, p), (k_hi, p_hi)) or ((k, 1.0),) (:func:`pis_tui.families.dynamic_topk.
    k_distribution`)."""
    cls = _skip_router_class()
    ks = [int(a) for a, _ in k_dist]
    p_hi = float(k_dist[-1][1]) if len(k_dist) > 1 else 0.0
    k_lo, k_hi = ks[0], ks[-1]
    for j, (_i, block, ex, router) in enumerate(blocks(model)):
        if isinstance(router, SkipRouter):
            raise MeasureError("the routers already skip experts")
        if not 1 <= k_lo <= k_hi <= int(router.top_k):
            raise UserError(f"dynamic top-k: {k_lo}…{k_hi} experts per token is outside "
                            f"1…{int(router.top_k)} (the router's k)")
        renorm = bool(getattr(router, "norm_topk_prob", True))
        wrapped = cls(router, int(ex.num_experts), k_lo, k_hi, p_hi, seed * 1009 + j, renorm)
        name = next(n for n, c in block.named_children() if c is router)
        setattr(block, name, wrapped)
        # a dropped slot's id E: the experts mask it (transformers' expert-parallel sentinel
        # path), grouped_mm never computes its row
        ex._is_expert_parallel = True


class full_routing:
    """``with full_routing(model):`` the skipping routers pass every token's k experts through
    (recording the router's own routing, whose shares the prediction prices with the family's
    distribution of k)."""

    def __init__(self, model):
        self.routers = [m for m in model.modules() if isinstance(m, SkipRouter)]

    def __enter__(self):
        for r in self.routers:
            r.full = True
        return self

    def __exit__(self, *exc):
        for r in self.routers:
            r.full = False


def dense_counts(model, counts: list) -> tuple:
    """(counts at the dense model's expert ids, E of the dense model) for a per-block list of
    counts recorded from ``model``: a block whose experts were sliced puts its counts at their
    original ids, zeros at the removed ones (the prediction's ``pruned_routing`` then keeps
    exactly the kept experts).  Unchanged for a model whose experts were not sliced."""
    from .routing_record import moe_blocks

    bl = moe_blocks(model)
    kept = [getattr(b.experts, "pis_kept_experts", None) for _i, b in bl]
    if not any(kept):
        return counts, None
    E = int(getattr(model, "pis_dense_experts", 0))
    out = []
    for c, k in zip(counts, kept):
        full = [0] * E
        for pos, orig in enumerate(k):
            full[orig] = int(c[pos])
        out.append(full)
    return out, E


def achieved(before: float, model) -> float:
    """1 − the decoder's weights now over ``before``."""
    after = decoder_weights(model)
    return 1.0 - after / before if before else 0.0


def decoder_weights(model) -> float:
    """Weights of the decoder layers (2-D linears and 3-D experts; norms and the embedding,
    the head left out): what the families' parameter share counts."""
    from .routing_record import _decoder_layers

    layers = _decoder_layers(model)
    return float(sum(p.numel() for p in layers.parameters() if p.dim() >= 2))


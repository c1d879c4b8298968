"""Importance statistics from one pass of the dense model over calibration windows: Block
Influence per layer and sublayer, input sums of squares per decoder linear."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from .layout import decoder_layers, decoder_linears, first_tensor

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
    #: a mixture of experts: the tokens each routed expert got and its channels' activation
    #: scores (:class:`pis_tui.hf.experts.ExpertStats`); None for a dense model
    experts: object = None

    def in_norm(self, name: str):
        """‖X_j‖₂ over calibration tokens for the input channels of linear ``name``."""
        return self.in_sqsum[name].sqrt()


def calibrate(model, windows, *, on_progress=None, cancel=None) -> Calibration:
    """Run the dense model over ``windows`` (LongTensor [n, T] or list of 1-D token lists) and
    collect Block Influence per layer and sublayer and input sum of squares per decoder linear."""
    import torch

    from .perplexity import run_windows
    from .routing_record import moe_blocks

    if moe_blocks(model):
        try:
            decoder_layers(model)
        except UserError:  # transformers' MoE classes: the experts' statistics only
            from .experts import calibrate_experts

            return calibrate_experts(model, windows, cal=Calibration(), on_progress=on_progress,
                                     cancel=cancel)
    layers = decoder_layers(model)
    lins = decoder_linears(model)
    n = len(layers)
    cal = Calibration(layer_bi=[0.0] * n, attn_bi=[0.0] * n, mlp_bi=[0.0] * n)
    sq = {name: None for name in lins}
    state: dict = {}
    hooks = []

    def lin_hook(name):
        def h(mod, args, kwargs=None):
            x = first_tensor(args).detach().float()
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
            state[i]["attn"] = first_tensor(out).detach()
        return h

    def layer_post(i):
        def h(mod, args, kwargs, out):
            y = first_tensor(out).detach()
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
        run_windows(model, windows, cal, on_progress=on_progress, cancel=cancel)
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

"""The model layout real pruning works on: the decoder layers and linears of a Llama-layout
Hugging Face model."""

from __future__ import annotations

from typing import Any

from ..errors import UserError

ATTN_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
#: every decoder linear a family prunes or a built model carries, in the order a layer runs them
PROJ_NAMES = ATTN_LINEARS + MLP_LINEARS

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


def head_dim_of(attn, cfg) -> int:
    hd = getattr(attn, "head_dim", None) or getattr(cfg, "head_dim", None)
    return int(hd or cfg.hidden_size // cfg.num_attention_heads)


def first_tensor(x):
    return x[0] if isinstance(x, (tuple, list)) else x

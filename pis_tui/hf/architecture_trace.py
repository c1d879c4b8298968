"""Trace a decoder's own modules into an architecture template (the op list of its layers).

transformers builds the model class for a config on the meta device (no weights, no memory,
no download); one prefill and one decode forward run under a TorchDispatchMode while module
hooks keep the stack of modules running, and ``F.scaled_dot_product_attention`` is wrapped
so the attention kernel is one leaf (on meta it would decompose into its math).  The events of
decoder layer 0 and of the model around the layers are then mapped onto pis-tui's op
vocabulary (:mod:`pis_tui.model.architecture`): every linear (``nn.Linear`` or GPT-2's
``Conv1D``) with its role, found from its name and checked against its weight's shape;
every normalisation module (RMSNorm or LayerNorm, by what it runs); the rotary embedding
(the ``neg`` of rotate-half inside attention); attention (SDPA, or the eager softmax path
with or without logit soft-capping); the activation (gated or not, and which function); the
residual adds; learned positions, embedding scaling and the final logit soft-cap around
the layers; a mixture-of-experts block (the module holding ``experts``) as one ``moe`` op
whose kernels go to the ops it expands into (:func:`_moe_op`).  What each op runs is kept as
its eager kernels (aten op, tensors as multiples of the op's size, dtypes), the way
:mod:`pis_tui.validation.kernel_trace` records Llama's.  The meta device takes transformers'
non-CPU (CUDA) branches; a model with an MoE block is traced again on fake CPU tensors
(:func:`fake_cpu`), and its MoE ops' CPU kernels are kept apart (``device_kernels.cpu``:
transformers' experts ``histc`` float ids on a CPU, int32 ones on a GPU).

Anything the mapping cannot place (a module it does not know, a linear whose name has no
role, a shape that is not its role's) raises :class:`~pis_tui.errors.UserError` naming it:
such a model is refused, never priced as something else.

``python -m pis_tui.hf.architecture_trace`` regenerates ``profiles/architectures/*.json``
(the shipped templates) from each architecture's default config; a test checks a fresh
trace against them.  torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

from ..errors import UserError
from ..model import architecture as A
from ..shipped import profile_path
from .dispatch import NO_KERNEL, dtype_name, tensors

SDPA = "<sdpa>"
BATCH, PREFILL_LEN = 2, 24  # the traced forward: 2 sequences of 24 tokens, then one step
GEMM_ATEN = ("mm", "addmm", "linear", "matmul", "bmm", "baddbmm")

#: the shipped architectures and the extra fields their default configs need to build small
SHIPPED = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "opt", "gpt2",
           "gpt_neox", "qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "granitemoe")


class _Event:
    __slots__ = ("path", "cls", "aten", "ins", "outs", "phase")

    def __init__(self, path, cls, aten, ins, outs, phase):
        self.path, self.cls, self.aten, self.ins, self.outs, self.phase = path, cls, aten, ins, outs, phase


def build_meta_model(cfg: dict):
    """transformers' class for ``cfg`` (a config dict), on the meta device, eval mode, bf16."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(cfg)
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise UserError("config has no model_type: cannot find the class to trace")
    for k in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
              "quantization_config", "auto_map"):
        cfg.pop(k, None)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    vocab = cfg.get("vocab_size")
    for k in ("pad_token_id", "bos_token_id", "eos_token_id"):
        v = cfg.get(k)
        if isinstance(vocab, int) and isinstance(v, int) and not 0 <= v < vocab:
            cfg[k] = None  # a token id outside the table: irrelevant to the ops, refused by some
    try:
        config = AutoConfig.for_model(model_type, **cfg)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"transformers {_tf_version()} has no config class for model_type "
                        f"{model_type!r} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    except (ValueError, KeyError, TypeError, AttributeError, ImportError) as e:
        raise UserError(f"transformers {_tf_version()} cannot build a causal LM for model_type "
                        f"{model_type!r} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return model.eval(), config


def _tf_version() -> str:
    import transformers

    return transformers.__version__


def record(model, fake=None) -> list:
    """Events of one prefill (BATCH × PREFILL_LEN) and one decode step, on the meta device
    (``fake``: under that FakeTensorMode, on the device its fake tensors report)."""
    import contextlib

    import torch
    import torch.nn.functional as F
    from torch.utils._python_dispatch import TorchDispatchMode

    stack: list = []
    events: list = []
    phase = ["prefill"]
    handles = []
    for name, mod in model.named_modules():
        handles.append(mod.register_forward_pre_hook(
            lambda m, a, _n=name or "<model>": (stack.append((_n, type(m).__name__)), None)[1]))
        handles.append(mod.register_forward_hook(lambda m, a, o: (stack.pop(), None)[1]))
    real_sdpa = F.scaled_dot_product_attention

    inside = [0]

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            aten = func.overloadpacket.__name__
            if aten not in NO_KERNEL and func.namespace != "prim" and not inside[0]:
                path, cls = stack[-1] if stack else ("-", "")
                events.append(_Event(path, cls, aten, tensors(args) + tensors(kwargs or {}),
                                     tensors(out), phase[0]))
            return out

    def sdpa(*args, **kwargs):
        # one leaf, as on a device (on meta it would run its math decomposition)
        inside[0] += 1
        try:
            out = real_sdpa(*args, **kwargs)
        finally:
            inside[0] -= 1
        path = (stack[-1][0] if stack else "-") + "." + SDPA
        events.append(_Event(path, SDPA, "scaled_dot_product_attention", tensors(args[:3]), [out],
                             phase[0]))
        return out

    F.scaled_dot_product_attention = sdpa
    try:
        device = next(model.parameters()).device
        with fake if fake is not None else contextlib.nullcontext():
            ids = torch.zeros(BATCH, PREFILL_LEN, dtype=torch.long, device=device)
            step = torch.zeros(BATCH, 1, dtype=torch.long, device=device)
        with torch.no_grad(), fake if fake is not None else contextlib.nullcontext(), Recorder():
            out = model(input_ids=ids, use_cache=True)
            phase[0] = "decode"
            model(input_ids=step, past_key_values=out.past_key_values, use_cache=True)
    except (RuntimeError, NotImplementedError, ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{type(model).__name__}: its forward cannot be traced on the meta device "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    finally:
        F.scaled_dot_product_attention = real_sdpa
        for h in handles:
            h.remove()
    return events


def fake_cpu(model):
    """Move a meta model onto fake CPU tensors (no memory: FakeTensorMode), so its forward takes
    the branches transformers runs on a CPU; returns the mode to trace under."""
    import torch
    import torch.nn as nn
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake = FakeTensorMode()
    with fake:
        for mod in model.modules():
            for n, p in list(mod._parameters.items()):
                if p is not None:
                    mod._parameters[n] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="cpu"),
                                                      requires_grad=False)
            for n, b in list(mod._buffers.items()):
                if b is not None:
                    mod._buffers[n] = torch.zeros(b.shape, dtype=b.dtype, device="cpu")
    return fake


def _layers_path(model, num_layers: int) -> str:
    import torch.nn as nn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == num_layers and num_layers > 0:
            return name
    raise UserError(f"{type(model).__name__}: no list of {num_layers} decoder layers found")


def _is_linear(mod) -> bool:
    w = getattr(mod, "weight", None)
    return w is not None and getattr(w, "dim", lambda: 0)() == 2 and type(mod).__name__ in (
        "Linear", "Conv1D") and not type(mod).__name__.endswith("Embedding")


def _weight_nk(mod) -> tuple[int, int]:
    w = mod.weight
    if type(mod).__name__ == "Conv1D":  # GPT-2: weight [in, out]
        return int(w.shape[1]), int(w.shape[0])
    return int(w.shape[0]), int(w.shape[1])


def _norm_kind(cls: str, atens: list) -> Optional[str]:
    if "native_layer_norm" in atens or "layer_norm" in atens:
        return "layernorm"
    if "rsqrt" in atens and ("mean" in atens or "pow" in atens):
        return "rmsnorm"
    if "Norm" in cls:
        return "rmsnorm" if "RMS" in cls else "layernorm"
    return None


def _activation(atens: list, cfg_act: str) -> str:
    """The activation function an MLP ran, from its kernels (checked against the config's)."""
    if "silu" in atens:
        return "silu"
    if "relu" in atens:
        return "relu"
    if "gelu" in atens:
        return "gelu_tanh" if "tanh" in cfg_act else "gelu"
    if "tanh" in atens and "pow" in atens:
        return "gelu_tanh"  # GPT-2's NewGELU / gelu_new: the tanh approximation, spelled out
    if "sigmoid" in atens:
        return "quick_gelu" if "quick" in cfg_act else "sigmoid"
    raise UserError(f"the MLP's activation ({', '.join(dict.fromkeys(atens)) or 'none'}) is not "
                    "one pis-tui prices (SiLU, ReLU, GELU, GELU-tanh)")


def derive(model, config, events: list) -> dict:
    """The template of ``model`` from its recorded events (see the module doc)."""
    widths = A.widths_of_config(config.to_dict())
    layers_path = _layers_path(model, widths["num_layers"])
    modules = dict(model.named_modules())
    l0 = layers_path + ".0"
    layer_evs = {ph: [e for e in events if e.phase == ph and (e.path == l0 or e.path.startswith(l0 + "."))]
                 for ph in ("prefill", "decode")}
    outer = {ph: [e for e in events if e.phase == ph and not e.path.startswith(layers_path + ".")]
             for ph in ("prefill", "decode")}
    attn_mod = None
    for name, mod in modules.items():
        if name.startswith(l0 + ".") and name.count(".") == l0.count(".") + 1 and "Attention" in type(mod).__name__:
            attn_mod = name
            break
    if attn_mod is None:
        raise UserError(f"{type(model).__name__}: its decoder layer has no attention module")
    cfg_act = str(widths.get("activation") or "")
    kernels: dict = {"prefill": {}, "decode": {}}
    moe_mod = _moe_block(modules, l0)
    # ---- decoder layer 0, prefill: the op list, each op where its first kernel runs
    state = {"attn_done": False, "o_done": False, "mlp_started": False, "adds": 0, "moe": moe_mod}
    entries: dict = {}
    for e in layer_evs["prefill"]:
        name, entry = _classify(e, l0, attn_mod, modules, widths, state, cfg_act)
        if name is None or (entry.get("glue") and name not in entries):
            continue  # glue of an op not reached yet: its kernels only (the op sits at its kernel)
        entry = {k: v for k, v in entry.items() if k != "glue"}
        name = entry["name"] if entry["op"] == "moe" else name  # one op: its parts' kernels apart
        entries[name] = _merge(entries[name], entry) if name in entries else entry
    # ---- the blocks: attention up to the first residual add after the o-projection (or, with
    # no add before the MLP's first linear, up to the o-projection: a parallel residual)
    names = list(entries)
    o_idx = max(i for i, n in enumerate(names) if entries[n].get("role") in A.ATTN_OUT_ROLES)
    in_idx = min((i for i, n in enumerate(names) if entries[n].get("role") in A.MLP_IN_ROLES
                  or entries[n]["op"] == "moe"), default=None)
    if in_idx is None:
        raise UserError(f"{type(model).__name__}: no MLP input projection found in its layer")
    cut = o_idx + 1
    for i in range(o_idx + 1, in_idx):
        if entries[names[i]]["op"] == "residual":
            cut = i + 1
            break
    parallel = not any(entries[names[i]]["op"] == "residual" for i in range(o_idx + 1, in_idx))
    gated_mlp = any(entries[n].get("role") in ("gate", "gate_up") for n in names)
    act_name = None
    for n in names:
        if entries[n]["op"] == "act":
            entries[n] = _finish_act(entries[n], cfg_act, gated_mlp)
            act_name = entries[n]["name"]
    attention = [entries[n] for n in names[:cut]]
    mlp = [entries[n] for n in names[cut:]]
    # kv_write: decode's cache update inside attention (kernels recorded below)
    if any(e.path == attn_mod and e.aten in ("cat", "index_copy_", "index_copy", "copy_")
           for e in layer_evs["decode"]):
        pos = next(i for i, x in enumerate(attention) if x["op"] == "attention")
        attention.insert(pos, {"op": "kv_write", "name": "kv_write", "phases": ["decode"]})
    # ---- around the layers
    model_ops = _model_level(outer["prefill"], modules, widths, layers_path)
    # ---- kernels per op, both phases
    for ph in ("prefill", "decode"):
        st = {"attn_done": False, "o_done": False, "mlp_started": False, "adds": 0, "moe": moe_mod}
        for e in layer_evs[ph]:
            name, _ = _classify(e, l0, attn_mod, modules, widths, st, cfg_act)
            if ph == "decode" and e.path == attn_mod and e.aten in ("cat", "index_copy_", "index_copy") \
                    and not st["attn_done"]:
                name = "kv_write"
            if name is None:
                continue
            if name == "act" and act_name:
                name = act_name
            kernels[ph].setdefault(name, []).append(_kernel(e))
        for e in outer[ph]:
            name = _outer_name(e, modules, layers_path, model_ops)
            if name:
                kernels[ph].setdefault(name, []).append(_kernel(e))
        att = kernels[ph].get("attention", [])
        bmms = [i for i, k in enumerate(att) if k["aten"] in ("bmm", "matmul")]
        if len(bmms) >= 2 and bmms[1] > bmms[0] + 1:
            # eager attention's score path (scale, soft-cap, mask, softmax): its tensors are
            # B·H·q·kv, not a multiple of the queries, so the estimator prices those passes
            # itself (Estimator._price_windowed); the two GEMMs stay, as the attention's leaves
            kernels[ph]["attention"] = att[:bmms[0] + 1] + att[bmms[1]:]
    return {
        "format": A.FORMAT,
        "model_type": widths["model_type"],
        "class": type(model).__name__,
        "attention_implementation": getattr(config, "_attn_implementation", None) or "sdpa",
        "structure": A.structure_of(config.to_dict()),
        "parallel_residual": parallel,
        "before_layers": model_ops["before"],
        "attention": attention,
        "mlp": mlp,
        "after_layers": model_ops["after"],
        "kernels": kernels,
    }


def _moe_block(modules: dict, l0: str) -> Optional[str]:
    """The decoder layer's mixture-of-experts block: a child module holding ``experts`` (3-D
    expert weights) beside a router (``mlp`` in Qwen-MoE, Mixtral, OLMoE; ``block_sparse_moe`` in
    Granite-MoE), or None."""
    for name, mod in modules.items():
        if name.startswith(l0 + ".") and name.count(".") == l0.count(".") + 1 \
                and hasattr(mod, "experts"):
            return name
    return None


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    if b.get("softcap"):
        out["softcap"] = True
    if a.get("op") == "act":
        out["atens"] = list(a.get("atens", [])) + list(b.get("atens", []))
        out["gated"] = bool(a.get("gated") or b.get("gated"))
    return out


def _finish_act(entry: dict, cfg_act: str, gated_mlp: bool) -> dict:
    """An activation entry named by its kind: ``silu_mul`` (SiLU·mul, gated), ``act_mul``
    (another gated activation), ``act`` (ungated), with the function it runs."""
    fn = _activation(entry.get("atens", []), cfg_act)
    kind = ("silu_mul" if fn == "silu" else "act_mul") if gated_mlp else "act"
    return {"op": "act", "name": kind, "kind": kind, "activation": fn}


def _classify(e, l0: str, attn_mod: str, modules: dict, widths: dict, state: dict, cfg_act: str):
    """(op name, template entry) for one event of decoder layer 0 (name None: no op)."""
    path = e.path
    rel = path[len(l0) + 1:] if path.startswith(l0 + ".") else ""
    mod = modules.get(path)
    moe = state.get("moe")
    if moe and (path == moe or path.startswith(moe + ".")):
        # the mixture-of-experts block (router, experts, shared experts): one template op,
        # expanded from the config's experts by pis_tui.model.layer; its kernels go to the
        # expanded ops (:func:`_moe_op`)
        state["mlp_started"] = True
        return _moe_op(e, moe, modules, state), {"op": "moe", "name": "moe",
                                                 "module": moe[len(l0) + 1:]}
    # a linear (any depth): its GEMM and bias
    if mod is not None and _is_linear(mod):
        leaf = rel.split(".")[-1]
        role = A.role_of(leaf, rel)
        if role is None:
            raise UserError(f"linear {rel!r} has no role pis-tui knows (q, k, v, qkv, o, gate, up, "
                            "gate_up, in, down)")
        n, k = _weight_nk(mod)
        want = A.role_nk(role, widths)
        if (n, k) != want:
            raise UserError(f"linear {rel!r} is {n}×{k}, not its role {role!r}'s {want[0]}×{want[1]}")
        if role in A.ATTN_OUT_ROLES:
            state["o_done"] = True
        if role in A.MLP_IN_ROLES:
            state["mlp_started"] = True
        name = A.op_name_of(widths["model_type"], leaf, role)
        if leaf in ("c_proj", "dense"):  # the same name in both blocks: say which
            name = ("attn_" if role == "o" else "mlp_") + leaf
        return name, {"op": "linear", "name": name, "module": rel, "role": role,
                      "bias": getattr(mod, "bias", None) is not None}
    if SDPA in path:
        state["attn_done"] = True
        return "attention", {"op": "attention", "name": "attention"}
    # a normalisation module
    if mod is not None and ("Norm" in type(mod).__name__):
        kind = _norm_kind(type(mod).__name__, [e.aten])
        leaf = rel.split(".")[-1]
        if path.startswith(attn_mod + "."):
            return "qk_norm", {"op": "qk_norm", "name": "qk_norm", "kind": kind or "rmsnorm",
                               "module": rel}
        name = A.op_name_of(widths["model_type"], leaf, "norm")
        return name, {"op": "norm", "name": name, "kind": kind or "rmsnorm", "module": rel}
    if path == attn_mod:
        if not state["attn_done"]:
            if e.aten in ("bmm", "matmul", "baddbmm") and len(e.ins) >= 2 and e.ins[0].dim() >= 3:
                state["eager_attention"] = True
            if state.get("eager_attention"):
                return "attention", {"op": "attention", "name": "attention",
                                     "softcap": e.aten == "tanh"}
            if e.aten == "neg" or state.get("rotary"):
                if e.aten == "neg":
                    state["rotary"] = True
                if e.aten in ("mul", "neg", "cat", "add"):
                    return "rotary", {"op": "rotary", "name": "rotary"}
            return "attention", {"op": "attention", "name": "attention", "glue": True}  # before it
        return "attention", {"op": "attention", "name": "attention", "glue": True}  # reshapes after
    # the activation (its module, or the MLP's own product of gate and up)
    if state["mlp_started"] and not path == l0:
        gated = e.aten == "mul" and len([t for t in e.ins if t.dim() >= 2]) == 2
        return "act", {"op": "act", "name": "act", "atens": [e.aten], "gated": gated}
    if path == l0:
        if e.aten == "add":
            state["adds"] += 1
            name = "attn_residual" if not state["mlp_started"] else (
                "mlp_residual" if "mlp_residual_seen" not in state else "mlp_residual_2")
            if state["mlp_started"]:
                state["mlp_residual_seen"] = True
            return name, {"op": "residual", "name": name}
        return None, None  # the layer's own glue (dropout in eval mode is none)
    if mod is not None and not state["mlp_started"] and not state["o_done"]:
        return "attention", {"op": "attention", "name": "attention", "glue": True}
    return None, None


#: the ops an MoE block expands into (pis_tui.model.layer._moe_mlp), which its kernels go to
MOE_OPS = ("moe_router", "moe_topk", "moe_dispatch", "experts_gate_up", "experts_act",
           "experts_down", "moe_combine", "shared_gate_up", "shared_act", "shared_down",
           "shared_expert_gate", "shared_gate_mul")
#: the experts' GEMM kernels (transformers' grouped_mm; its batched_mm path runs bmm)
EXPERT_GEMMS = ("_grouped_mm", "grouped_mm", "bmm", "baddbmm", "mm")


def _moe_op(e, moe: str, modules: dict, state: dict) -> str:
    """The MoE op one kernel of the block belongs to (see docs/moe.md):

    * the router module (``gate``/``router``, a ``…Router``): its GEMM is ``moe_router``; its
      casts, softmax, top-k and renormalisation are ``moe_topk``;
    * the experts module, by its place around the two grouped GEMMs: before the first (sort
      of the expert ids, ``// k``, the gathers of the rows and weights, histc's input cast,
      histc, cumsum: the rows sorted and counted per expert) ``moe_dispatch``; the first
      ``experts_gate_up``; between them (SiLU, mul) ``experts_act``; the second
      ``experts_down``; after it (× routing weight, the inverse permutation: arange,
      index_put_, the gather back, the sum over k, a cast) ``moe_combine``;
    * a shared expert's linears ``shared_gate_up`` / ``shared_down``, its other kernels
      ``shared_act``; Qwen2-MoE's ``shared_expert_gate`` linear; at the block itself, the add
      of the shared and routed outputs ``moe_combine``, the rest (sigmoid, × the shared output)
      ``shared_gate_mul``."""
    sub = e.path[len(moe) + 1:] if e.path != moe else ""
    head = sub.split(".")[0]
    head_mod = modules.get(moe + "." + head) if head else None
    if head_mod is not None and (head in ("gate", "router") or "Router" in type(head_mod).__name__):
        return "moe_router" if e.aten in GEMM_ATEN else "moe_topk"
    if head == "experts":
        seen = state.get("expert_gemms", 0)
        if e.aten in EXPERT_GEMMS:
            state["expert_gemms"] = seen + 1
            return "experts_gate_up" if seen == 0 else "experts_down"
        return ("moe_dispatch", "experts_act")[seen] if seen < 2 else "moe_combine"
    if head == "shared_expert_gate":
        return "shared_expert_gate"
    if head.startswith("shared_expert"):
        mod = modules.get(e.path)
        if mod is not None and _is_linear(mod):
            role = A.role_of(e.path.split(".")[-1], sub)
            return "shared_down" if role == "down" else "shared_gate_up"
        return "shared_act"
    if sub == "":
        if e.aten == "add" or not any(n.startswith(moe + ".shared_expert_gate") for n in modules):
            return "moe_combine"
        return "shared_gate_mul"
    raise UserError(f"the MoE block's module {sub!r} ({e.aten}) is not one pis-tui prices "
                    "(router, experts, shared experts)")


def _model_level(evs: list, modules: dict, widths: dict, layers_path: str) -> dict:
    before, after = [], []
    embeds = [e.path for e in evs if e.aten == "embedding"]
    tok = embeds[0] if embeds else None
    pos = next((p for p in embeds if p != tok), None)
    before.append({"op": "embedding", "name": "embedding", "module": tok})
    if pos:
        before.append({"op": "pos_embedding", "name": "pos_embedding", "module": pos})
        before.append({"op": "residual", "name": "pos_add"})
    if any(e.path == tok and e.aten == "mul" for e in evs):
        before.append({"op": "scale", "name": "embed_scale", "module": tok})
    final = None
    for name, mod in modules.items():
        if "Norm" in type(mod).__name__ and not name.startswith(layers_path + ".") and not name.startswith(
                layers_path) and name.count(".") <= 2 and not any(
                    x in name for x in ("vision", "audio")):
            final = name
    if final is None:
        raise UserError("no final normalisation found after the decoder layers")
    kind = _norm_kind(type(modules[final]).__name__, [e.aten for e in evs if e.path == final])
    after.append({"op": "norm", "name": "final_norm", "kind": kind or "rmsnorm", "module": final})
    after.append({"op": "linear", "name": "lm_head", "role": "lm_head", "module": "lm_head"})
    lm_seen = False
    for e in evs:
        if e.path == "lm_head":
            lm_seen = True
        elif lm_seen and e.path == "<model>" and e.aten == "tanh":
            after.append({"op": "scale", "name": "logit_softcap", "module": "<model>"})
            break
    return {"before": before, "after": after}


def _outer_name(e, modules: dict, layers_path: str, model_ops: dict) -> Optional[str]:
    by_module = {}
    for x in model_ops["before"] + model_ops["after"]:
        by_module.setdefault(x.get("module"), []).append(x["name"])
    names = by_module.get(e.path)
    if e.path == "lm_head":
        return "lm_head"
    if names:
        if "embed_scale" in names and e.aten == "mul":
            return "embed_scale"
        return names[0]
    if e.path == "<model>":
        return "logit_softcap" if any(x["name"] == "logit_softcap" for x in model_ops["after"]) \
            and e.aten in ("div", "tanh", "mul") else None
    if e.path in ("-",):
        return None
    # the model's own glue (positions, masks, rotary tables): once per forward
    if e.aten == "add" and any(x["name"] == "pos_embedding" for x in model_ops["before"]) \
            and len(e.outs) == 1 and e.outs[0].dim() == 3:
        return "pos_add"
    return "embedding"


def _kernel(e) -> dict:
    import torch

    act = torch.bfloat16
    return {"aten": e.aten,
            "in": [[int(t.numel()), dtype_name(t.dtype, act)] for t in e.ins if t.numel()],
            "out": [[int(t.numel()), dtype_name(t.dtype, act)] for t in e.outs if t.numel()]}


def trace_config(cfg: dict) -> dict:
    """The architecture template of a config dict (traced on the meta device), with the
    versions it came from and its kernels as multiples of each op's size."""
    import torch

    model, config = build_meta_model(cfg)
    events = record(model)
    t = derive(model, config, events)
    widths = A.widths_of_config(config.to_dict())
    t["kernels"] = A.kernels_as_units(t, widths, BATCH, PREFILL_LEN)
    t["traced_with"] = {"transformers": _tf_version(), "torch": torch.__version__.split("+")[0],
                        "device": "meta", "dtype": "bf16", "batch": BATCH, "prompt_len": PREFILL_LEN}
    if any(d["op"] == "moe" for d in t["mlp"]):
        # transformers' experts branch on the device (histc of float ids on the CPU, of int
        # ids elsewhere): the meta trace took the CUDA branch; the CPU's is traced again on
        # fake CPU tensors and kept for the MoE block's ops
        cpu_model, _ = build_meta_model(cfg)
        fake = fake_cpu(cpu_model)
        cpu = derive(cpu_model, config, record(cpu_model, fake))
        cpu["kernels"] = {ph: {n: ks for n, ks in by_op.items() if n in MOE_OPS}
                          for ph, by_op in cpu["kernels"].items()}
        t["device_kernels"] = {"cpu": A.kernels_as_units(cpu, widths, BATCH, PREFILL_LEN)}
        t["traced_with"]["device_kernels"] = {"cpu": "fake CPU tensors (FakeTensorMode)"}
    A.check_template(t)
    return t


def default_config(model_type: str) -> dict:
    """The config transformers gives ``model_type`` by default, at a small size to trace (the
    structure, not the widths, is what a template keeps)."""
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(model_type).to_dict()
    small = {"num_hidden_layers": 2, "n_layer": 2, "hidden_size": 256, "n_embd": 256,
             "intermediate_size": 704, "ffn_dim": 704, "n_inner": 704, "num_attention_heads": 8,
             "n_head": 8, "num_key_value_heads": 2, "head_dim": 48, "vocab_size": 1024,
             "max_position_embeddings": 512, "n_positions": 512, "word_embed_proj_dim": 256}
    for k, v in small.items():
        if k in cfg:  # only the type's own keys (GPT-2 says n_layer, not num_hidden_layers)
            cfg[k] = v
    if model_type in ("opt", "gpt2", "gpt_neox"):
        cfg.pop("head_dim", None)
        cfg.pop("num_key_value_heads", None)
    if "layer_types" in cfg:
        cfg.pop("layer_types")
    cfg["model_type"] = model_type
    return cfg


def write_shipped(types=SHIPPED) -> list:
    out = []
    for mt in types:
        t = trace_config(default_config(mt))
        path = profile_path("architectures", f"{mt}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(t, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        out.append(path)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--config":  # trace one config (first use): template JSON on stdout
        try:
            with open(argv[1], encoding="utf-8") as f:
                cfg = json.load(f)
            print(json.dumps(trace_config(cfg), sort_keys=True))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    for p in write_shipped(tuple(argv) or SHIPPED):
        print(f"wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Diagnosis: where the time of a forward goes, per model part, predicted and measured."""

from __future__ import annotations

import time

from .build import BuiltModel
from .run import PhaseRun, sync

# ============================================================== diagnosis

#: op name → the part of the model it belongs to (for comparing predicted and measured parts)
PART_OF_OP = {
    "embedding": "embedding", "final_norm": "final_norm", "lm_head": "lm_head",
    "input_norm": "norms", "post_attn_norm": "norms",
    "q_proj": "attention", "k_proj": "attention", "v_proj": "attention", "o_proj": "attention",
    "qkv_bias": "attention", "qk_norm": "attention", "rotary": "attention",
    "kv_write": "attention", "attention": "attention", "block_pool": "attention",
    "block_score": "attention", "block_topk": "attention",
    "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp", "silu_mul": "mlp",
    "attn_residual": "residual", "mlp_residual": "residual", "residual_map": "residual",
}
PARTS = ("embedding", "norms", "attention", "mlp", "residual", "routing", "final_norm", "lm_head",
         "other")


def part_of(op_name: str) -> str:
    base = op_name.split(".")[0]
    if base in PART_OF_OP:
        return PART_OF_OP[base]
    if base.startswith(("attn_", "mlp_")) and base.split("_", 1)[1] in (
            "router", "topk", "gather", "scatter", "pos_gather", "kv_gather"):
        return "routing"
    return "other"


def predicted_parts(estimate) -> dict:
    """ms per model part of a PhaseEstimate."""
    out = {p: 0.0 for p in PARTS}
    for p in estimate.ops:
        out[part_of(p.op.name)] += p.total_ms
    return out


def measured_parts(built: BuiltModel, phase: str, batch: int, length: int, repeats: int = 3) -> dict:
    """ms per model part of one forward, timed with module hooks (CPU: exact wall time of each
    module call; on CUDA each hook synchronises, so only use it to diagnose).  ``other`` is the
    rest of the forward: Python and framework overhead, rotary tables, residual adds inside
    transformers' layers, routing glue."""
    import torch

    m = built.model
    parts: dict = {p: 0.0 for p in PARTS}
    stack: list = []
    handles = []
    cuda = str(built.device).startswith("cuda")

    def add(mod, part):
        def pre(*_a, **_k):
            if cuda:
                torch.cuda.synchronize()
            stack.append(time.perf_counter())

        def post(*_a, **_k):
            if cuda:
                torch.cuda.synchronize()
            parts[part] += (time.perf_counter() - stack.pop()) * 1e3
        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))

    add(m.model.embed_tokens, "embedding")
    add(m.model.norm, "final_norm")
    add(m.lm_head, "lm_head")
    for name, mod in m.model.layers.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "self_attn":
            add(mod, "attention")
        elif leaf == "mlp":
            add(mod, "mlp")
        elif leaf in ("input_layernorm", "post_attention_layernorm"):
            add(mod, "norms")
        elif leaf in ("attn_router", "mlp_router"):
            add(mod, "routing")
        elif leaf in ("attn_map", "mlp_map"):
            add(mod, "residual")
    run = PhaseRun(built, phase, batch, length, cuda_graph=False)
    run.prepare()
    totals = []
    snapshots = []
    try:
        with torch.inference_mode():
            run._fn()  # warm
            for _ in range(repeats):
                for k in parts:
                    parts[k] = 0.0
                t0 = time.perf_counter()
                run._fn()
                sync(built.device)
                totals.append((time.perf_counter() - t0) * 1e3)
                snapshots.append(dict(parts))
    finally:
        for h in handles:
            h.remove()
        run.close()
    i = sorted(range(len(totals)), key=lambda j: totals[j])[len(totals) // 2]
    out = snapshots[i]
    out["other"] = max(0.0, totals[i] - sum(v for k, v in out.items() if k != "other"))
    out["total"] = totals[i]
    return out

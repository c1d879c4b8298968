"""Which kernels transformers' eager modules really launch, per op of pis-tui's op list.

The eager engine (:mod:`pis_tui.pricing.engines`) prices an op as the kernels the
framework launches for it: an RMSNorm is an fp32 up-cast, a square, a mean, an add, an
rsqrt, two multiplies and a down-cast, not one kernel.  Those sequences are not typed by
hand: :func:`trace` builds, per family, the model ``pis-tui validate`` builds (transformers'
own classes and pis-tui's wrappers; a tiny Llama-3.1-8B-shaped config, bf16 on the CPU), runs
one prefill and one decode forward under a TorchDispatchMode and records every aten op that
runs a kernel (views dropped: they launch none), with the module it ran in.  Each kernel is
attributed to an op of the taxonomy's op list by that module (and, inside attention and the
routing wrappers, by what it does), and its tensors are recorded as multiples of that op's
size (elements of an Elementwise op's [rows, width], of a GEMM's output, of attention's
queries), so the same sequence prices any model.  Attention itself is a leaf: its kernel
depends on the device (on the CPU one fused call; on a GPU flash or efficient attention).

``python -m pis_tui.validation.kernel_trace`` writes ``profiles/kernels/eager.json`` (with the
transformers and torch versions it came from); a test checks that a fresh trace still gives
the committed sequences.  torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

from ..pricing.engines import unit
from ..hf.dispatch import NO_KERNEL, dtype_name, tensors
from ..shipped import profile_path

#: attention kernels (leaves)
ATTENTION_LEAVES = ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention")
PHASES = ("prefill", "decode")
#: the traced model: Llama-3.1-8B's layout and head ratio, tiny widths (a quick CPU trace)
TINY = dict(num_hidden_layers=2, hidden_size=256, intermediate_size=512, num_attention_heads=8,
            num_key_value_heads=2, head_dim=32, vocab_size=512, bos_token_id=1, eos_token_id=2)
BATCH, LENGTH = {"prefill": 2, "decode": 4}, {"prefill": 128, "decode": 128}
DTYPE = "bf16"
OUT = profile_path("kernels", "eager.json")


def _normalise(path: str) -> str:
    """'model.layers.0.inner.self_attn.q_proj.A' → 'self_attn.q_proj.A'; model level kept."""
    parts = path.split(".")
    if len(parts) >= 3 and parts[0] == "model" and parts[1] == "layers":
        rest = [p for p in parts[3:] if p not in ("inner",)]
        return ".".join(rest) if rest else "<layer>"
    return path


class _Attributor:
    """Maps (module path, aten op, whether it writes floats) to an op of the op list,
    statefully: inside attention the position (before or after the attention kernel, after a
    rotary ``neg``) decides; inside a routing wrapper, the last router seen."""

    PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __init__(self) -> None:
        self.seen_attention = False
        self.layer_adds = 0
        self.sub = "attn"
        self.gathers = 0
        self.last = ""

    def name(self, path: str, aten: str, float_out: bool) -> Optional[str]:
        last, self.last = self.last, aten
        p = _normalise(path)
        if p == "-":
            return None  # outside the forward (the timing harness's own bookkeeping)
        if p in ("<model>", "model", "model.embed_tokens", "model.rotary_emb"):
            return "embedding"  # the forward's own kernels: once per forward, like the embedding
        if p == "model.norm":
            return "final_norm"
        if p == "lm_head":
            return "lm_head"
        leaf = p.split(".")
        if leaf[0] in ("attn_router", "mlp_router"):
            self.sub = leaf[0].split("_")[0]
            self.gathers = 0
            return leaf[0]
        if leaf[0] in ("attn_map", "mlp_map"):
            return "residual_map"
        if leaf[0] == "input_layernorm":
            return "input_norm"
        if leaf[0] == "post_attention_layernorm":
            return "post_attn_norm"
        if leaf[0] in ("self_attn", "mlp") and len(leaf) >= 2 and leaf[1] in self.PROJ:
            return ".".join(leaf[1:3]) if len(leaf) > 2 and leaf[2] in ("A", "B") else leaf[1]
        if leaf[0] == "self_attn" and len(leaf) >= 2 and leaf[1] in ("q_norm", "k_norm"):
            return "qk_norm"
        if leaf[0] == "mlp":
            return "silu_mul"
        if leaf[0] == "self_attn":
            if any(s in aten for s in ATTENTION_LEAVES):
                self.seen_attention = True
                return "attention"
            dsa = _dsa_name(aten)  # block selection (rotary never pools, scores or ranks)
            if dsa:
                return dsa
            if self.seen_attention:
                return "attention"  # glue after (or between) attention kernels
            if aten in ("index_copy_", "index_copy", "copy_") or (aten == "cat" and last != "neg"):
                return "kv_write"  # the cache update (a DynamicCache's cat in prefill)
            if not float_out:
                # cache positions are int64 bookkeeping; a block mask's are the attention's
                return "kv_write" if aten in ("arange", "add", "add_") else "attention"
            return "rotary"
        # the layer itself, or a routing wrapper around it: residual adds, routing glue
        if aten in ("add", "add_") and float_out:
            self.layer_adds += 1
            return "attn_residual" if self.layer_adds == 1 else "mlp_residual"
        if aten in ("index_copy_", "index_copy", "index_put_", "scatter_", "index_add_"):
            return f"{self.sub}_scatter"
        if aten in ("index_select", "gather") and float_out:
            self.gathers += 1
            return f"{self.sub}_gather" if self.gathers == 1 else "attn_pos_gather"
        return f"{self.sub}_topk"  # top-k, sort, index building


def _dsa_name(aten: str) -> Optional[str]:
    """Block-sparse attention's selection: pooling, block scores, top-k, the block gathers."""
    return {"mean": "block_pool", "sum": "block_pool", "bmm": "block_score",
            "topk": "block_topk", "sort": "block_topk", "gather": "attention"}.get(aten)


def trace_family(family: str, phase: str) -> dict:
    """{op name: [kernel, ...]} of one decoder layer (layer 0) plus the forward's own ops, for
    one call of each op, sizes relative to the op (see the module docs)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from ..families.phase_ops import build_phase_ops
    from ..families.strategy import Strategy
    from .. import validation as v
    from ..hf.config import raw_config
    from ..model.spec import load_preset_config
    from ..model.scenario import Scenario

    cfg = {k: val for k, val in load_preset_config("llama-3.1-8b").items() if not k.startswith("_")}
    cfg.update(TINY)
    raw, spec = raw_config(cfg)
    strat = Strategy(family, 0.5, align=8)
    built = v.build_from_spec(raw, spec, strat, dtype=DTYPE)
    batch, length = BATCH[phase], LENGTH[phase]
    scen = Scenario(prefill_batch=batch, prompt_len=length, decode_batch=batch,
                    context_len=length, dtype=DTYPE)
    units = {}
    for o in build_phase_ops(spec, strat, scen, phase).ops:
        if o.op_type != "overhead":
            units.setdefault(o.name, unit(o))
    act = torch.bfloat16
    stack: list = []
    records: list = []
    attributor = _Attributor()
    handles = []
    for name, mod in built.model.named_modules():
        handles.append(mod.register_forward_pre_hook(
            lambda m, a, _n=name or "<model>": (stack.append(_n), None)[1]))
        handles.append(mod.register_forward_hook(lambda m, a, o: (stack.pop(), None)[1]))

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            aten = func.overloadpacket.__name__
            if aten not in NO_KERNEL:
                records.append((stack[-1] if stack else "-", aten, tensors(args), tensors(out)))
            return out

    run = v.PhaseRun(built, phase, batch, length, cuda_graph=False)
    run.prepare()
    try:
        with torch.no_grad(), Recorder():
            run._fn()
    finally:
        run.close()
        for h in handles:
            h.remove()
    out: dict = {}
    unpriced: dict = {}
    for path, aten, ins, outs in records:
        if ".layers." in path and not path.startswith("model.layers.0"):
            continue  # layer 0 stands for every layer
        float_out = any(t.is_floating_point() for t in outs) if outs else True
        op = attributor.name(path, aten, float_out)
        if op is not None and op not in units:
            fb = _fallback(op, units)
            if fb is None:  # an op the prediction does not price (e.g. prefill's cache write)
                unpriced.setdefault(op, []).append(aten)
                continue
            op = fb
        if op is None:
            continue
        size_of = units[op]

        def sizes(ts):
            return [[round(t.numel() / size_of, 4), dtype_name(t.dtype, act)] for t in ts if t.numel()]
        out.setdefault(op, []).append({"aten": aten, "in": sizes(ins), "out": sizes(outs)})
    if unpriced:
        out["_unpriced"] = [{"op": k, "aten": v} for k, v in unpriced.items()]
    return out


def _fallback(op: Optional[str], units: dict) -> Optional[str]:
    """A kernel attributed to an op this family's list does not have: glue of the nearest one."""
    if op is None:
        return None
    for cand in (op.split(".")[0], "attention" if op.startswith("block_") else None):
        if cand in units:
            return cand
    return None


def trace(families: Optional[tuple] = None) -> dict:
    """Every registered family's kernels (``families``: a subset), both phases."""
    import torch
    import transformers

    from .. import families as registry

    families = tuple(families or registry.names())
    return {"format": "pis-tui-kernels/1", "engine": "eager",
            "traced_with": {"transformers": transformers.__version__, "torch": torch.__version__,
                            "model": "llama-3.1-8b layout, tiny widths " + json.dumps(TINY),
                            "dtype": DTYPE, "device": "cpu",
                            "batch": BATCH, "length": LENGTH},
            "doc": __doc__.split("\n\n")[0],
            "families": {f: {ph: trace_family(f, ph) for ph in PHASES} for f in families}}


#: top-level blocks of ``eager.json`` written by hand, not traced (the kernels assumed for
#: quantized GEMMs, each with its source): a re-trace keeps them
HAND_WRITTEN = ("quantized",)


def main(argv=None) -> int:
    data = trace()
    if OUT.exists():
        old = json.loads(OUT.read_text(encoding="utf-8"))
        data.update({k: old[k] for k in HAND_WRITTEN if k in old})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

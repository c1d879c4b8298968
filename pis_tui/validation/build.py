"""Building the pruned model: on the meta device, structurally changed by the family's hooks,
materialised with a fast tiled random fill, masks applied where the family says."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .. import families
from ..families.strategy import Strategy
from ..model.spec import ModelSpec
from ..errors import MeasureError
from ..hf.attention import ATTN_IMPL, register_attention
from ..hf.config import PrunedDims, check_buildable, hf_config, raw_config, torch_dtype

# ============================================================== building


@dataclass
class BuiltModel:
    """A model ready to time, with what was done to it."""

    model: Any
    spec: ModelSpec
    strategy: Strategy
    dims: PrunedDims
    device: str
    dtype: str
    notes: list = field(default_factory=list)
    sparse_kernel: Optional[bool] = None  # 2:4: True when a sparse kernel really runs
    state: dict = field(default_factory=dict)  # runtime state shared with the wrappers
    #: the served precision its linears were quantized to ("" unquantized) and what
    #: :func:`pis_tui.hf.quantize.quantize_model` did (None unquantized)
    precision: str = ""
    quantized: Optional[dict] = None

    @property
    def config(self):
        return self.model.config

    def attention_modules(self) -> list:
        """The decoder layers' attention modules (each holds its layer's index in the cache)."""
        return [m for m in self.model.modules()
                if type(m).__name__.endswith("Attention") and hasattr(m, "layer_idx")]

    def describe(self) -> dict:
        d = self.dims.to_dict()
        d.update(family=self.strategy.family, sparsity=self.strategy.sparsity,
                 decoder_layers=len(layer_list(self.model)), notes=list(self.notes))
        return d


def layer_list(model):
    """The ModuleList of decoder layers (``model.layers``, OPT's ``model.decoder.layers``, GPT-2's
    ``transformer.h``, GPT-NeoX's ``gpt_neox.layers``)."""
    import torch.nn as nn

    for name in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise MeasureError(f"{type(model).__name__}: no decoder layer list found")


def build_model(model: str | dict, strategy: Strategy, *, device: str = "cpu",
                dtype: str = "fp32", seed: int = 0, precision: str = "") -> BuiltModel:
    """Build ``model`` (a preset, config path, cached id or raw config dict) pruned by
    ``strategy`` with random weights, on ``device``, ready for :func:`time_phase`."""
    raw, spec = raw_config(model)
    return build_from_spec(raw, spec, strategy, device=device, dtype=dtype, seed=seed,
                           precision=precision)


def build_from_spec(raw: dict, spec: ModelSpec, strategy: Strategy, *, device: str = "cpu",
                    dtype: str = "fp32", seed: int = 0, tp: int = 1, rank: int = 0,
                    precision: str = "") -> BuiltModel:
    """``tp`` > 1: the model of tensor-parallel rank ``rank`` (its shards, explicitly: see
    :func:`pis_tui.hf.modules.tensor_parallel`; a torch.distributed group of ``tp``
    ranks must be initialised).  ``precision`` (a quantized format's canonical name:
    ``int4-g128``, ``fp8-row``…): the pruned widths aligned as the op list at that precision
    aligns them, then every linear the op list quantizes replaced by one running the
    quantized kernel (:func:`pis_tui.hf.quantize.quantize_model`); "" unquantized."""
    import torch
    from transformers import AutoModelForCausalLM

    check_buildable(spec, strategy.family, getattr(strategy, "granularity", "layer"))
    tdt = torch_dtype(dtype)
    dims = pruned_dims(spec, strategy, tp, precision)
    config = hf_config(raw, spec, dims)
    register_attention()
    state: dict = {"decode_pos": None}
    built = BuiltModel(None, spec, strategy, dims, device, dtype, state=state,
                       precision=precision)
    fam = families.get(strategy.family)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(config, dtype=tdt)
        fam.validate_transform(m, built, seed)  # structural changes before memory is allocated
    m.to_empty(device=device)
    _fast_init(m, seed)
    _rebuild_rotary(m, device)
    if spec.tie_embeddings:
        m.tie_weights()
    m.eval()
    built.model = m
    if not any(e.softcap for e in (spec.architecture.attention if spec.architecture else ())):
        m.config._attn_implementation = ATTN_IMPL
    # else: a soft-capped model keeps transformers' eager attention, which SDPA cannot replace
    fam.validate_finish(built, seed)  # masks, another attention implementation
    if spec.moe is not None:
        _check_experts(built)
    if tp > 1:
        from ..hf.modules import tensor_parallel

        tensor_parallel(built, rank, tp)
    if precision:
        _quantize(built)
    return built


def _quantize(built: BuiltModel) -> None:
    """The materialised model's linears quantized to ``built.precision`` (the lm_head, the
    embeddings and routers kept), and a note of what was done."""
    from ..hf.quantize import quantize_model

    q = quantize_model(built.model, built.precision)
    built.quantized = q
    kept = sorted({why.split(" (")[0] for why in q["skipped"].values()})
    built.notes.append(f"{q['precision']}: {len(q['quantized'])} linears through {q['kernel']} "
                       f"({q['bytes_before'] / 2**20:.1f} → {q['bytes_after'] / 2**20:.1f} MiB, "
                       f"scales included); kept in {built.dtype}: {', '.join(kept) or 'none'}")


#: the names transformers' MoE blocks give their router (Qwen-MoE, Mixtral, OLMoE: gate;
#: Granite-MoE: router)
ROUTER_NAMES = ("gate", "router")


def _check_experts(built: BuiltModel) -> None:
    """An MoE model runs its experts through ``grouped_mm`` (never ``batched_mm``, which copies
    each token's expert weights, nor the per-expert loop the prediction does not price)."""
    from ..hf.config import EXPERTS_IMPL

    impl = getattr(built.model.config, "_experts_implementation", None)
    if impl != EXPERTS_IMPL:
        raise MeasureError(f"{built.spec.name}: transformers runs its experts with {impl!r}, "
                           f"not {EXPERTS_IMPL!r}: the timing would not be of the priced kernels")
    built.notes.append(f"experts: transformers' {EXPERTS_IMPL} (torch.nn.functional.grouped_mm)")
    if families.get(built.strategy.family).moe_only:
        _check_expert_shape(built)


def _check_expert_shape(built: BuiltModel) -> None:
    """A model whose routed experts were pruned holds what the prediction prices: the experts
    per layer, k and the experts' width of the op list's grouped GEMM (and, skipping experts,
    its distribution of k)."""
    from ..families.phase_ops import build_phase_ops
    from ..hf.experts import SkipRouter, shape_of
    from ..model.scenario import Scenario

    scen = Scenario(prefill_batch=1, prompt_len=16, decode_batch=1, context_len=16,
                    dtype=built.dtype)
    ops = build_phase_ops(built.spec, built.strategy, scen, "prefill").ops
    gg = next(o for o in ops if type(o).__name__ == "GroupedGemm" and o.name == "experts_gate_up")
    want = {"experts": gg.experts, "top_k": gg.top_k, "expert_inter": gg.n // 2}
    have = shape_of(built.model)
    skips = [m for m in built.model.modules() if isinstance(m, SkipRouter)]
    if skips:
        want["k_dist"] = tuple((int(a), round(float(p), 6)) for a, p in gg.k_dist)
        r = skips[0]
        have["k_dist"] = (((r.k_lo, round(1.0 - r.p_hi, 6)), (r.k_hi, round(r.p_hi, 6)))
                          if r.p_hi > 0 else ((r.k_lo, 1.0),))
    if have != want:
        raise MeasureError(f"{built.spec.name}: the built {built.strategy.token} model holds "
                           f"{have}, the prediction prices {want}")


def _fast_init(m, seed: int) -> None:
    """Fill every parameter from a small random pool, tiled (a memory-speed copy, not an RNG
    pass over billions of values); norms get 1, biases 0."""
    import torch

    pool_n = 1 << 16
    g = torch.Generator().manual_seed(seed)
    by_dtype: dict = {}
    with torch.no_grad():
        for mod_name, mod in m.named_modules():
            is_norm = type(mod).__name__.endswith("RMSNorm") or "norm" in mod_name.rsplit(".", 1)[-1]
            for pname, p in mod.named_parameters(recurse=False):
                if is_norm:
                    p.fill_(1.0)
                    continue
                if pname == "bias":
                    p.zero_()
                    continue
                if mod_name.rsplit(".", 1)[-1] in ROUTER_NAMES and p.dim() == 2:
                    # an MoE router: drawn for real (it is small), so no two experts share a
                    # row of scores, as the tiled pool would give every pool_n / H rows
                    p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.dtype))
                    continue
                key = (p.dtype, p.device)
                if key not in by_dtype:
                    by_dtype[key] = (torch.randn(pool_n, generator=g) * 0.02).to(p.dtype).to(p.device)
                pool = by_dtype[key]
                flat = p.view(-1)
                k = flat.numel() // pool_n
                if k:
                    flat[: k * pool_n].view(k, pool_n).copy_(pool.expand(k, pool_n))
                r = flat.numel() - k * pool_n
                if r:
                    flat[k * pool_n:].copy_(pool[:r])
        for mod in m.modules():  # wrapper buffers materialised empty
            for bname, b in mod.named_buffers(recurse=False):
                if b.is_floating_point() and not bname.startswith(("inv_freq", "original_inv_freq")):
                    b.zero_()


def _rebuild_rotary(m, device: str) -> None:
    """``to_empty`` leaves the rotary ``inv_freq`` buffers uninitialised: build them again."""
    import torch

    for name, rot in list(m.named_modules()):
        if not name.endswith("rotary_emb"):
            continue
        parent = m.get_submodule(name.rsplit(".", 1)[0]) if "." in name else m
        with torch.device(device):
            setattr(parent, name.rsplit(".", 1)[-1], type(rot)(config=m.config))


def pruned_dims(spec: ModelSpec, strategy: Strategy, tp: int = 1,
                precision: str = "") -> PrunedDims:
    """The dense dims, changed by the family's ``validate_dims`` hook (which sees ``tp`` in
    the dict: widths a family keeps must split over the ranks, as the taxonomy rounds them;
    and ``k_align``: the K alignment of the ``precision`` the model is quantized to, its
    widths rounded as the op list at that precision rounds them)."""
    from ..model.precision import k_alignment

    L = spec.num_layers
    d = dict(num_layers=L, attn_layers=L, mlp_layers=L, hidden_size=spec.hidden_size,
             num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
             intermediate_size=spec.intermediate_size, tp=tp, k_align=k_alignment(precision))
    families.get(strategy.family).validate_dims(spec, strategy, d)
    return PrunedDims(**d)



"""Building the pruned model: on the meta device, structurally changed by the family's hooks,
materialised with a fast tiled random fill, masks applied where the family says."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .. import families
from .. import taxonomy as tx
from ..model_spec import ModelSpec
from .attention import ATTN_IMPL, register_attention
from .config import PROJ_NAMES, PrunedDims, check_buildable, hf_config, pruned_dims, raw_config, torch_dtype

# ============================================================== building


@dataclass
class BuiltModel:
    """A model ready to time, with what was done to it."""

    model: Any
    spec: ModelSpec
    strategy: tx.Strategy
    dims: PrunedDims
    device: str
    dtype: str
    notes: list = field(default_factory=list)
    sparse_kernel: Optional[bool] = None  # 2:4: True when a sparse kernel really runs
    state: dict = field(default_factory=dict)  # runtime state shared with the wrappers

    @property
    def config(self):
        return self.model.config

    def attention_modules(self) -> list:
        return [m for m in self.model.modules() if hasattr(m, "q_proj") and hasattr(m, "o_proj")]

    def describe(self) -> dict:
        d = self.dims.to_dict()
        d.update(family=self.strategy.family, sparsity=self.strategy.sparsity,
                 decoder_layers=len(self.model.model.layers), notes=list(self.notes))
        return d


def build_model(model: str | dict, strategy: tx.Strategy, *, device: str = "cpu",
                dtype: str = "fp32", seed: int = 0) -> BuiltModel:
    """Build ``model`` (a preset, config path, cached id or raw config dict) pruned by
    ``strategy`` with random weights, on ``device``, ready for :func:`time_phase`."""
    raw, spec = raw_config(model)
    return build_from_spec(raw, spec, strategy, device=device, dtype=dtype, seed=seed)


def build_from_spec(raw: dict, spec: ModelSpec, strategy: tx.Strategy, *, device: str = "cpu",
                    dtype: str = "fp32", seed: int = 0, tp: int = 1, rank: int = 0) -> BuiltModel:
    """``tp`` > 1: the model of tensor-parallel rank ``rank`` (its shards, explicitly: see
    :func:`pis_tui.validation.modules.tensor_parallel`; a torch.distributed group of ``tp``
    ranks must be initialised)."""
    import torch
    from transformers import AutoModelForCausalLM

    check_buildable(spec)
    tdt = torch_dtype(dtype)
    dims = pruned_dims(spec, strategy, tp)
    config = hf_config(raw, spec, dims)
    register_attention()
    state: dict = {"decode_pos": None}
    built = BuiltModel(None, spec, strategy, dims, device, dtype, state=state)
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
    m.config._attn_implementation = ATTN_IMPL
    fam.validate_finish(built, seed)  # masks, another attention implementation
    if tp > 1:
        from .modules import tensor_parallel

        tensor_parallel(built, rank, tp)
    return built


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

    rot = getattr(m.model, "rotary_emb", None)
    if rot is None:
        return
    with torch.device(device):
        m.model.rotary_emb = type(rot)(config=m.config)


def apply_masks(built: BuiltModel, seed: int) -> None:
    """unstructured: zero a share s of each decoder weight; 2:4: keep 2 of every 4 along K
    (and switch to the semi-structured sparse kernel where this device has one)."""
    import torch

    fam, s = built.strategy.family, built.strategy.effective_sparsity
    g = torch.Generator().manual_seed(seed + 1)
    pool_n = 1 << 16
    if fam == "unstructured":
        pool = torch.rand(pool_n, generator=g) >= s
    else:
        patterns = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1],
                                 [0, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]], dtype=torch.bool)
        pool = patterns[torch.randint(0, 6, (pool_n // 4,), generator=g)].reshape(-1)
    pool = pool.to(built.device)
    linears = decoder_linears(built.model)
    with torch.no_grad():
        for _, lin in linears:
            w = lin.weight
            flat = w.view(-1)
            k, r = flat.numel() // pool_n, flat.numel() % pool_n
            if k:
                flat[: k * pool_n].view(k, pool_n).mul_(pool.expand(k, pool_n).to(w.dtype))
            if r:
                flat[k * pool_n:].mul_(pool[:r].to(w.dtype))
    if fam != "semi_structured_24":
        built.notes.append(f"unstructured: {s:.0%} of decoder weights zeroed; dense kernels run")
        return
    ok, why = _semi_structured_supported(built)
    if ok:
        from torch.sparse import to_sparse_semi_structured

        try:
            for _, lin in linears:
                lin.weight = torch.nn.Parameter(to_sparse_semi_structured(lin.weight.detach()),
                                                requires_grad=False)
            built.sparse_kernel = True
            built.notes.append("2:4: torch semi-structured sparse kernels")
            return
        except (RuntimeError, ValueError, TypeError) as e:  # pragma: no cover - GPU only
            why = f"to_sparse_semi_structured failed ({str(e).splitlines()[0][:120]})"
    built.sparse_kernel = False
    built.notes.append(f"2:4 unsupported on this device: runs dense ({why})")


def _semi_structured_supported(built: BuiltModel) -> tuple[bool, str]:
    import torch

    if not str(built.device).startswith("cuda") or not torch.cuda.is_available():
        return False, "no CUDA device"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return False, "needs compute capability 8.0+"
    if built.dtype not in ("bf16", "fp16"):
        return False, "2:4 kernels need bf16/fp16"
    return True, ""


def decoder_linears(m) -> list:
    import torch

    out = []
    for name, mod in m.model.layers.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in PROJ_NAMES:
            out.append((name, mod))
    return out

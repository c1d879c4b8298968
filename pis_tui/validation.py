"""End-to-end validation: build the pruned model for real and time it.

pis-tui predicts a phase's latency by summing measured op times (the taxonomy's op list priced
by the estimator).  This module checks those predictions against the real thing: it builds the
pruned model with transformers' own model classes (so the non-GEMM work is what users really
run), random weights, and times

* **TTFT**: one prefill forward over ``batch × prompt`` tokens (``use_cache=True``, logits of the
  last token only, as ``generate`` does);
* **TPOT**: one decode step of ``batch`` sequences over a KV cache of ``context`` tokens (a
  ``StaticCache`` filled to that length; on CUDA the step is captured in a CUDA graph).

Dense and pruned runs are interleaved and repeated and the medians are compared with the
prediction.  How each family is built (the dims come from :mod:`pis_tui.taxonomy`, so the model
has exactly the shapes the prediction priced):

* ``static_depth``: fewer decoder layers; ``granularity="sublayer"`` keeps only the attention or
  only the MLP half of a layer (its norm and residual add go with it).
* ``static_width``: fewer (GQA groups of) heads and a smaller ``intermediate_size`` in the config
  (``head_dim`` kept explicit).
* ``static_width_hidden``: a smaller ``hidden_size`` everywhere plus an H'×H' ``Linear`` on each
  residual branch (SliceGPT's residual mapping).
* ``low_rank``: every decoder linear ``W[N,K]`` becomes ``Linear(K,r)`` → ``Linear(r,N)``.
* ``semi_structured_24``: a 2:4 weight mask; on a CUDA GPU with 2:4 kernels the weights are
  converted with ``torch.sparse.to_sparse_semi_structured``; elsewhere it runs dense (and says so).
* ``unstructured``: dense weights with a share ``s`` zeroed (same dense kernels).
* ``dynamic_depth``: each decoder layer is wrapped; per sublayer a router ``Linear(H,1)`` scores
  the tokens, top-k keeps ``1−s`` of them (per sequence in prefill, across the batch in decode),
  they are gathered, normed, run through the sublayer (attention among the kept tokens with their
  own positions), added to their residual and scattered back.  At decode batch 1 a sublayer runs
  or not: a seeded plan runs ``round((1−s)·L)`` of the attention and of the MLP sublayers (the
  router still runs for every one), so each step costs the expectation.
* ``dynamic_sparse_attention``: a registered attention implementation that keeps ``1−s`` of the
  64-token key blocks per query block (the diagonal always), chosen by mean-pooled block scores,
  and runs SDPA over the gathered blocks.  This is a gather-based approximation of a fused
  block-sparse kernel (SeerAttention-like), labelled as such in the results.

Models are built on the ``meta`` device and materialised with ``to_empty`` and a fast tiled random
fill (never transformers' slow default init), so a big model is ready in the time it takes to
touch its memory.  torch and transformers are imported inside the functions only.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from . import families
from . import taxonomy as tx
from .errors import MeasureError, UserError
from .layer_ops import ATTN_BLOCK, overhead_phase
from .model_spec import ModelSpec, load_model_spec, load_preset_config, preset_names
from .scenario import Scenario

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
ATTN_IMPL = "pis_sdpa"  # SDPA without transformers' mask construction (see _register_attention)
BLOCK_SPARSE_IMPL = "pis_block_sparse"
BLOCK = ATTN_BLOCK
PROJ_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

STANDARD_SPARSITIES = (0.25, 0.5)


def standard_families() -> tuple[str, ...]:
    """The standard set of ``validate --all`` and the accuracy benchmark (the registry's
    ``validate_standard`` families), in the registry's order."""
    return tuple(f.name for f in families.all_families() if f.validate_standard)


def extra_families() -> tuple[str, ...]:
    """The other pruned families (``validate --all`` without ``--core-only``)."""
    return tuple(f.name for f in families.all_families()
                 if not f.validate_standard and not f.is_baseline)


# ============================================================== configs


def raw_config(model: str | dict) -> tuple[dict, ModelSpec]:
    """The raw HF config dict and the spec of a preset, config path/dir, cached id or dict."""
    if isinstance(model, dict):
        from .model_spec import spec_from_config

        cfg = dict(model)
        return cfg, spec_from_config(cfg, str(cfg.get("_name", cfg.get("model_type", "config"))))
    spec = load_model_spec(model)
    ref = str(model).strip()
    if ref in preset_names():
        cfg = load_preset_config(ref)
    else:
        p = Path(ref).expanduser()
        if p.is_dir():
            p = p / "config.json"
        if p.is_file():
            with open(p, encoding="utf-8") as f:
                cfg = json.load(f)
        else:
            from .model_spec import _autoconfig_dict

            cfg = _autoconfig_dict(ref)
    if isinstance(cfg.get("text_config"), dict):
        outer = cfg
        cfg = dict(cfg["text_config"])
        cfg.setdefault("tie_word_embeddings", outer.get("tie_word_embeddings", False))
    return cfg, spec


def check_buildable(spec: ModelSpec) -> None:
    if spec.model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(f"{spec.name}: validate builds {', '.join(SUPPORTED_MODEL_TYPES)} models; "
                        f"this one is {spec.model_type!r}")


@dataclass(frozen=True)
class PrunedDims:
    """The shapes the pruned model must have (exactly the taxonomy's rounding)."""

    num_layers: int
    attn_layers: int  # layers that keep their attention block
    mlp_layers: int  # layers that keep their MLP block
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    ranks: dict = field(default_factory=dict, hash=False)  # proj name → rank (low_rank)
    residual_map: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def pruned_dims(spec: ModelSpec, strategy: tx.Strategy) -> PrunedDims:
    """The dense dims, changed by the family's ``validate_dims`` hook."""
    L = spec.num_layers
    d = dict(num_layers=L, attn_layers=L, mlp_layers=L, hidden_size=spec.hidden_size,
             num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
             intermediate_size=spec.intermediate_size)
    families.get(strategy.family).validate_dims(spec, strategy, d)
    return PrunedDims(**d)


def proj_shapes(d: dict) -> dict:
    """(N, K) of each decoder linear for a dict of :class:`PrunedDims` fields."""
    q, kv = d["num_heads"] * d["head_dim"], d["num_kv_heads"] * d["head_dim"]
    h, i = d["hidden_size"], d["intermediate_size"]
    return {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
            "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}


def hf_config(raw: dict, spec: ModelSpec, dims: PrunedDims):
    """A transformers config for the pruned model (the preset's config with changed dims)."""
    from transformers import CONFIG_MAPPING

    check_buildable(spec)
    cfg = {k: v for k, v in raw.items() if not k.startswith("_") and k not in (
        "model_type", "architectures", "transformers_version", "torch_dtype", "dtype",
        "layer_types", "max_window_layers", "auto_map", "quantization_config")}
    cfg.update(num_hidden_layers=dims.num_layers, hidden_size=dims.hidden_size,
               num_attention_heads=dims.num_heads, num_key_value_heads=dims.num_kv_heads,
               head_dim=dims.head_dim, intermediate_size=dims.intermediate_size,
               use_cache=True, tie_word_embeddings=spec.tie_embeddings)
    if spec.model_type in ("qwen2", "qwen3"):
        cfg["use_sliding_window"] = False
        cfg["max_window_layers"] = dims.num_layers
    if spec.model_type == "mistral":
        cfg["sliding_window"] = None
    try:
        config = CONFIG_MAPPING[spec.model_type](**cfg)
    except (TypeError, ValueError) as e:
        raise UserError(f"{spec.name}: cannot build a {spec.model_type} config ({e})") from None
    config._attn_implementation = "sdpa"
    return config


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


def torch_dtype(name: str):
    import torch

    if name not in TORCH_DTYPES:
        raise UserError(f"validate runs fp32, bf16 or fp16 models, not {name!r}")
    return getattr(torch, TORCH_DTYPES[name])


def build_model(model: str | dict, strategy: tx.Strategy, *, device: str = "cpu",
                dtype: str = "fp32", seed: int = 0) -> BuiltModel:
    """Build ``model`` (a preset, config path, cached id or raw config dict) pruned by
    ``strategy`` with random weights, on ``device``, ready for :func:`time_phase`."""
    raw, spec = raw_config(model)
    return build_from_spec(raw, spec, strategy, device=device, dtype=dtype, seed=seed)


def build_from_spec(raw: dict, spec: ModelSpec, strategy: tx.Strategy, *, device: str = "cpu",
                    dtype: str = "fp32", seed: int = 0) -> BuiltModel:
    import torch
    from transformers import AutoModelForCausalLM

    check_buildable(spec)
    tdt = torch_dtype(dtype)
    dims = pruned_dims(spec, strategy)
    config = hf_config(raw, spec, dims)
    _register_attention()
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


def _apply_masks(built: BuiltModel, seed: int) -> None:
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
    linears = _decoder_linears(built.model)
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


def _decoder_linears(m) -> list:
    import torch

    out = []
    for name, mod in m.model.layers.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in PROJ_NAMES:
            out.append((name, mod))
    return out


# ------------------------------------------------------------------ wrapper modules
# torch.nn is imported lazily: the classes are created on first use.

_CLASSES: dict = {}


def _nn():
    import torch

    return torch.nn


def _cache_kw_name(attn_module) -> str:
    """The KV-cache keyword of an attention forward: ``cache`` (transformers ≥ 5.2x) or
    ``past_key_values`` (earlier 5.x)."""
    params = inspect.signature(type(attn_module).forward).parameters
    for name in ("cache", "past_key_values", "past_key_value"):
        if name in params:
            return name
    return "past_key_values"


def _get_cache(kw: dict):
    for name in ("cache", "past_key_values", "past_key_value"):
        if kw.get(name) is not None:
            return name, kw[name]
    return None, None


def _make_classes() -> None:
    if _CLASSES:
        return
    import torch

    from .families.dynamic_depth import kept_tokens as _kept_tokens

    nn = torch.nn

    class LowRank(nn.Module):
        """W[N,K] → B[N,r]·A[r,K]: two GEMMs through rank r (bias kept on the second)."""

        def __init__(self, lin, rank: int):
            super().__init__()
            self.A = nn.Linear(lin.in_features, rank, bias=False)
            self.B = nn.Linear(rank, lin.out_features, bias=lin.bias is not None)
            self.rank = rank
            self.in_features, self.out_features = lin.in_features, lin.out_features

        def forward(self, x):
            return self.B(self.A(x))

    class HalfLayer(nn.Module):
        """A decoder layer of which only the attention or only the MLP block is kept."""

        def __init__(self, layer, keep_attn: bool, keep_mlp: bool):
            super().__init__()
            self.keep_attn, self.keep_mlp = keep_attn, keep_mlp
            self.self_attn = layer.self_attn if keep_attn else None
            self.input_layernorm = layer.input_layernorm if keep_attn else None
            self.mlp = layer.mlp if keep_mlp else None
            self.post_attention_layernorm = layer.post_attention_layernorm if keep_mlp else None

        def forward(self, hidden_states, **kw):
            x = hidden_states
            if self.keep_attn:
                a, _ = self.self_attn(hidden_states=self.input_layernorm(x), **kw)
                x = x + a
            if self.keep_mlp:
                x = x + self.mlp(self.post_attention_layernorm(x))
            return x

    class MappedLayer(nn.Module):
        """SliceGPT-like layer: the residual of each sublayer goes through an H'×H' mapping."""

        def __init__(self, layer, hidden: int):
            super().__init__()
            self.inner = layer
            self.attn_map = nn.Linear(hidden, hidden, bias=False)
            self.mlp_map = nn.Linear(hidden, hidden, bias=False)

        def forward(self, hidden_states, **kw):
            inner = self.inner
            x = hidden_states
            a, _ = inner.self_attn(hidden_states=inner.input_layernorm(x), **kw)
            x = self.attn_map(x) + a
            return self.mlp_map(x) + inner.mlp(inner.post_attention_layernorm(x))

    class RowCache:
        """Stands in for the KV cache while a routed subset of the batch decodes: writes the
        kept rows' new K/V at the decode position and returns those rows' caches."""

        def __init__(self, cache, rows, pos: int):
            self.cache, self.rows, self.pos = cache, rows, pos

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            layer = self.cache.layers[layer_idx]
            layer.keys[self.rows, :, self.pos] = key_states[:, :, 0]
            layer.values[self.rows, :, self.pos] = value_states[:, :, 0]
            return layer.keys.index_select(0, self.rows), layer.values.index_select(0, self.rows)

    class RoutedLayer(nn.Module):
        """Dynamic depth (mixture-of-depths-like token routing) around a decoder layer."""

        def __init__(self, layer, hidden: int, s: float, state: dict, run_attn: bool, run_mlp: bool):
            super().__init__()
            self.inner = layer
            self.s = s
            self.state = state
            self.attn_router = nn.Linear(hidden, 1, bias=False)
            self.mlp_router = nn.Linear(hidden, 1, bias=False)
            self.plan = {"attn": run_attn, "mlp": run_mlp}
            self.kept_share: dict = {}  # last routing: sublayer → share of tokens kept

        def _attn(self, x, kw, pe=None, pos=None, cache=None, cache_name=None):
            kw = dict(kw)
            if pe is not None:
                kw["position_embeddings"] = pe
            if pos is not None:
                kw["position_ids"] = pos
            if cache_name is not None:
                kw[cache_name] = cache
            kw["attention_mask"] = None
            a, _ = self.inner.self_attn(hidden_states=self.inner.input_layernorm(x), **kw)
            return a

        def _mlp(self, x):
            return self.inner.mlp(self.inner.post_attention_layernorm(x))

        def forward(self, hidden_states, **kw):
            x = hidden_states.contiguous()
            x = self._route(x, "attn", kw)
            return self._route(x, "mlp", kw)

        def _route(self, x, sub: str, kw):
            B, S, H = x.shape
            router = self.attn_router if sub == "attn" else self.mlp_router
            score = router(x).view(B, S)
            if S > 1:  # prefill: per sequence, top-k over its tokens (kept in order)
                k = _kept_tokens(S, self.s)
                idx = torch.topk(score, k, dim=1, sorted=False).indices.sort(dim=1).values
                flat = (idx + torch.arange(B, device=x.device).unsqueeze(1) * S).reshape(-1)
                xs = x.view(B * S, H).index_select(0, flat).view(B, k, H)
                if sub == "attn":
                    cos, sin = kw["position_embeddings"]

                    def pick(t):
                        t = t.expand(B, S, t.shape[-1]).reshape(B * S, -1)
                        return t.index_select(0, flat).view(B, k, -1)
                    pos = kw.get("position_ids")
                    pos = pos.expand(B, S).gather(1, idx) if pos is not None else None
                    y = xs + self._attn(xs, kw, pe=(pick(cos), pick(sin)), pos=pos)
                else:
                    y = xs + self._mlp(xs)
                x.view(B * S, H).index_copy_(0, flat, y.view(B * k, H))
                self.kept_share[sub] = k / S
                return x
            if B > 1:  # decode: route across the batch
                k = _kept_tokens(B, self.s)
                rows = torch.topk(score.view(B), k, sorted=False).indices
                xs = x.index_select(0, rows)
                if sub == "attn":
                    cos, sin = kw["position_embeddings"]
                    if cos.shape[0] == B:
                        cos, sin = cos.index_select(0, rows), sin.index_select(0, rows)
                    pos = kw.get("position_ids")
                    if pos is not None and pos.shape[0] == B:
                        pos = pos.index_select(0, rows)
                    name, cache = _get_cache(kw)
                    if cache is not None:
                        cache = RowCache(cache, rows, self.state["decode_pos"])
                    y = xs + self._attn(xs, kw, pe=(cos, sin), pos=pos, cache=cache,
                                        cache_name=name)
                else:
                    y = xs + self._mlp(xs)
                x.index_copy_(0, rows, y)
                self.kept_share[sub] = k / B
                return x
            # decode batch 1: the router decides run or skip; a seeded plan fixes which
            torch.topk(score.view(1, 1), 1)
            self.kept_share[sub] = 1.0 if self.plan[sub] else 0.0
            if not self.plan[sub]:
                return x
            if sub == "attn":
                return x + self._attn(x, kw)
            return x + self._mlp(x)

    _CLASSES.update(LowRank=LowRank, HalfLayer=HalfLayer, MappedLayer=MappedLayer,
                    RoutedLayer=RoutedLayer, RowCache=RowCache)


def _LowRank(lin, rank):  # noqa: N802 - class factories
    _make_classes()
    return _CLASSES["LowRank"](lin, rank)


def _HalfLayer(layer, keep_attn, keep_mlp):  # noqa: N802
    _make_classes()
    return _CLASSES["HalfLayer"](layer, keep_attn, keep_mlp)


def _MappedLayer(layer, hidden):  # noqa: N802
    _make_classes()
    return _CLASSES["MappedLayer"](layer, hidden)


def _RoutedLayer(layer, hidden, s, state, run_attn, run_mlp):  # noqa: N802
    _make_classes()
    return _CLASSES["RoutedLayer"](layer, hidden, s, state, run_attn, run_mlp)


# ------------------------------------------------------------------ attention implementations

_REGISTERED = False


def _register_attention() -> None:
    """Register two attention implementations with transformers' ``AttentionInterface``:

    * ``pis_sdpa``: transformers' own SDPA function.  Being unknown to the mask interface, it
      makes transformers skip building masks: prefill runs SDPA's causal kernel (what the default
      path does without padding) and a decode step attends to its whole, exactly full cache.
    * ``pis_block_sparse``: block-sparse attention (see :func:`_block_sparse_attention`).
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register(ATTN_IMPL, sdpa_attention_forward)
    AttentionInterface.register(BLOCK_SPARSE_IMPL, _block_sparse_attention)
    _REGISTERED = True


def _block_sparse_attention(module, query, key, value, attention_mask, dropout=0.0,
                            scaling=None, **kwargs):
    """Keep ``module.pis_keep`` of the causal 64-token key blocks of each query block.

    Block scores are the dot products of mean-pooled query and key blocks (summed over the
    query heads of a GQA group); each query block keeps its diagonal block plus the best others,
    ``max(1, ceil(keep × visible))`` in all (the taxonomy's count).  The kept key/value blocks
    are gathered and SDPA runs over them.  In decode the pooled keys of a cache are computed once
    and reused (a real implementation keeps them beside the cache).
    """
    import torch
    import torch.nn.functional as F

    keep = float(getattr(module, "pis_keep", 1.0))
    B, Hq, Sq, D = query.shape
    Hkv, Skv = key.shape[1], key.shape[2]
    group = Hq // Hkv
    if keep >= 1.0:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout,
                                      scaling=scaling, **kwargs)
    nk = math.ceil(Skv / BLOCK)
    pad = nk * BLOCK - Skv
    qg = query.view(B, Hkv, group, Sq, D)

    def pooled_keys():
        cache_key = (key.data_ptr(), tuple(key.shape))
        hit = getattr(module, "_pis_pooled", None)
        if Sq == 1 and hit is not None and hit[0] == cache_key:
            return hit[1]
        kp = F.pad(key, (0, 0, 0, pad)) if pad else key
        pk = kp.view(B, Hkv, nk, BLOCK, D).mean(dim=3)  # [B,Hkv,nk,D]
        if Sq == 1:
            module._pis_pooled = (cache_key, pk)
        return pk

    pk = pooled_keys()
    tok = torch.arange(BLOCK, device=query.device)
    if Sq == 1:
        n_keep = max(1, math.ceil(keep * nk - 1e-9))
        scores = torch.einsum("bhgd,bhnd->bhn", qg[:, :, :, 0], pk)  # block_score
        blocks = torch.topk(scores, n_keep, dim=-1).indices  # [B,Hkv,n_keep]
        pos = (blocks.unsqueeze(-1) * BLOCK + tok).reshape(B, Hkv, -1)
        valid = pos < Skv
        pos = pos.clamp_max(Skv - 1)
        idx = pos.unsqueeze(-1).expand(-1, -1, -1, D)
        ks, vs = key.gather(2, idx), value.gather(2, idx)
        mask = valid.unsqueeze(2)  # [B,Hkv,1,T]
        out = F.scaled_dot_product_attention(query, ks, vs, attn_mask=mask.repeat_interleave(group, 1),
                                             scale=scaling, enable_gqa=group > 1)
        return out.transpose(1, 2).contiguous(), None
    # prefill: loop over query blocks
    nq = math.ceil(Sq / BLOCK)
    off = nk - nq
    qpad = nq * BLOCK - Sq
    qp = F.pad(qg, (0, 0, 0, qpad)) if qpad else qg
    pq = qp.view(B, Hkv, group, nq, BLOCK, D).mean(dim=(2, 4))  # [B,Hkv,nq,D] block_pool
    scores = torch.einsum("bhqd,bhkd->bhqk", pq, pk)  # block_score
    outs = []
    for i in range(nq):
        visible = min(nk, off + i + 1)
        n_keep = max(1, math.ceil(keep * visible - 1e-9))
        diag = off + i
        q_i = query[:, :, i * BLOCK:min(Sq, (i + 1) * BLOCK)]
        if n_keep > 1:
            others = torch.topk(scores[:, :, i, :diag], n_keep - 1, dim=-1).indices
            blocks = torch.cat([others, torch.full_like(others[..., :1], diag)], dim=-1)
        else:
            blocks = torch.full((B, Hkv, 1), diag, device=query.device, dtype=torch.long)
        pos = (blocks.unsqueeze(-1) * BLOCK + tok).reshape(B, Hkv, -1)
        qpos = (diag * BLOCK + torch.arange(q_i.shape[2], device=query.device)) - (off * BLOCK) \
            + (Skv - Sq)
        allowed = (pos.unsqueeze(2) <= qpos.view(1, 1, -1, 1)) & (pos.unsqueeze(2) < Skv)
        pos = pos.clamp_max(Skv - 1)
        idx = pos.unsqueeze(-1).expand(-1, -1, -1, D)
        ks, vs = key.gather(2, idx), value.gather(2, idx)
        o = F.scaled_dot_product_attention(q_i, ks, vs, attn_mask=allowed.repeat_interleave(group, 1),
                                           scale=scaling, enable_gqa=group > 1)
        outs.append(o)
    out = torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


# ============================================================== timing


def local_torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and not os.environ.get("PIS_TUI_NO_CUDA") else "cpu"


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _forward_cache_kw(model) -> str:
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class PhaseRun:
    """One model, one phase, one shape, prepared for timing: ``sample()`` returns the time of
    one forward in ms (the mean over ``inner`` back-to-back calls)."""

    def __init__(self, built: BuiltModel, phase: str, batch: int, length: int, *, seed: int = 0,
                 cuda_graph: bool = True):
        self.built, self.phase, self.batch, self.length = built, phase, batch, length
        self.seed = seed
        self.device = built.device
        self.cuda = str(self.device).startswith("cuda")
        self.use_graph = cuda_graph and self.cuda and phase == "decode"
        self.inner = 1
        self.graph = None
        self.notes: list[str] = []
        self._fn: Optional[Callable] = None

    # ---------------------------------------------------------------- setup
    def prepare(self) -> None:
        import torch

        m = self.built.model
        cfg = m.config
        g = torch.Generator().manual_seed(self.seed)
        B = self.batch
        cache_kw = _forward_cache_kw(m)
        if self.phase == "prefill":
            S = self.length
            self.ids = torch.randint(0, cfg.vocab_size, (B, S), generator=g).to(self.device)
            self.pos = torch.arange(S, device=self.device).unsqueeze(0)
            from transformers import DynamicCache

            dyn_kw = {"config": cfg} if "config" in inspect.signature(DynamicCache.__init__).parameters else {}

            def fn():
                return m(input_ids=self.ids, position_ids=self.pos, use_cache=True,
                         logits_to_keep=1, **{cache_kw: DynamicCache(**dyn_kw)})
            self._fn = fn
            return
        # decode: a StaticCache filled to `length` tokens, one new token per sequence
        L = self.length
        self.cache = self._static_cache(L)
        self.built.state["decode_pos"] = L
        self.ids = torch.randint(0, cfg.vocab_size, (B, 1), generator=g).to(self.device)
        self.pos = torch.full((1, 1), L, device=self.device, dtype=torch.long)
        layers = self._cache_layers

        def fn():
            out = m(input_ids=self.ids, position_ids=self.pos, use_cache=True,
                    **{cache_kw: self.cache})
            for layer in layers:  # back to `length` cached tokens for the next step
                layer.cumulative_length.fill_(L)
            return out
        self._fn = fn
        if self.use_graph:
            self._capture()

    def _static_cache(self, L: int):
        import torch
        from transformers import StaticCache

        m = self.built.model
        cache = StaticCache(config=m.config, max_cache_len=L + 1)
        tdt = torch_dtype(self.built.dtype)
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 7)
        used = []
        for a in self.built.attention_modules():
            idx = a.layer_idx
            layer = cache.layers[idx]
            kvh = a.k_proj.out_features if hasattr(a.k_proj, "out_features") else None
            hd = a.head_dim
            kvh = (kvh or self.built.dims.num_kv_heads * hd) // hd
            dummy = torch.zeros(self.batch, kvh, 1, hd, dtype=tdt, device=self.device)
            layer.lazy_initialization(dummy, dummy)
            layer.keys.normal_(0, 1, generator=gen)
            layer.values.normal_(0, 1, generator=gen)
            if not isinstance(layer.cumulative_length, torch.Tensor):  # pragma: no cover
                raise MeasureError("this transformers version's StaticCache has no tensor length")
            layer.cumulative_length.fill_(L)
            layer.is_initialized = True
            used.append(layer)
        self._cache_layers = used
        return cache

    def _capture(self) -> None:  # pragma: no cover - CUDA only
        import torch

        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s), torch.inference_mode():
                for _ in range(3):
                    self._fn()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g), torch.inference_mode():
                self._out = self._fn()
            self.graph = g
            self.notes.append("decode step captured in a CUDA graph")
        except Exception as e:  # capture is an optimisation: fall back to eager, say so
            self.graph = None
            torch.cuda.synchronize()
            self.notes.append(f"CUDA graph capture failed, eager decode ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:100] if str(e) else ''})")

    # ---------------------------------------------------------------- timing
    def _call(self) -> None:
        if self.graph is not None:  # pragma: no cover - CUDA only
            self.graph.replay()
        else:
            self._fn()

    def sample(self) -> float:
        import torch

        with torch.inference_mode():
            if self.cuda:  # pragma: no cover - CUDA only
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(self.inner):
                    self._call()
                end.record()
                end.synchronize()
                return start.elapsed_time(end) / self.inner
            t0 = time.perf_counter()
            for _ in range(self.inner):
                self._call()
            return (time.perf_counter() - t0) * 1e3 / self.inner

    def calibrate(self, target_ms: float) -> None:
        t = self.sample()
        self.inner = max(1, min(50, int(math.ceil(target_ms / max(t, 1e-3)))))

    def close(self) -> None:
        self.graph = None
        self._fn = None
        self.cache = None


@dataclass
class Timing:
    median_ms: float
    samples: list
    spread: float  # (p75 − p25) / median


def _summary(samples: list) -> Timing:
    med = statistics.median(samples)
    if len(samples) >= 4:
        q = statistics.quantiles(samples, n=4)
        spread = (q[2] - q[0]) / med if med else 0.0
    else:
        spread = (max(samples) - min(samples)) / med if med else 0.0
    return Timing(med, list(samples), spread)


def measure_interleaved(runs: list, repeats: int = 5, warmup: int = 1,
                        target_ms: Optional[float] = None) -> list:
    """Time several prepared :class:`PhaseRun` s alternately (ABAB…, reversed every other round)
    so that drifts of a shared, noisy machine hit them alike; returns a :class:`Timing` each."""
    import torch

    if repeats < 1:
        raise UserError("repeats must be at least 1")
    cpu = not any(r.cuda for r in runs)
    if target_ms is None:
        target_ms = 150.0 if cpu else 30.0
    with torch.inference_mode():
        for r in runs:
            for _ in range(max(0, warmup)):
                r.sample()
            r.calibrate(target_ms)
    samples = [[] for _ in runs]
    for i in range(repeats):
        order = list(range(len(runs)))
        if i % 2:
            order.reverse()
        for j in order:
            samples[j].append(runs[j].sample())
    return [_summary(s) for s in samples]


def time_phase(built: BuiltModel, phase: str, batch: int, length: int, *, repeats: int = 5,
               warmup: int = 1) -> Timing:
    """Median time of one prefill forward (length = prompt) or decode step (length = context)."""
    run = PhaseRun(built, phase, batch, length)
    run.prepare()
    try:
        return measure_interleaved([run], repeats, warmup)[0]
    finally:
        run.close()


# ============================================================== prediction


class OpTimes:
    """Measured op times on the local device, for the estimator.

    Uses the profiling helper (``pis_tui.profiling``) and the DuckDB cache when they are
    available, so a validate run measures exactly the ops of the phases it compares (and
    only those not measured yet); else times them here with ``pis_tui.timing``.
    """

    def __init__(self, dtype: str, cache=None, on_progress: Optional[Callable[[str], None]] = None,
                 repeats: Optional[int] = None):
        self.dtype = dtype
        self.repeats = repeats
        self.cache = cache
        self.on_progress = on_progress
        self._mem: dict = {}  # key → Measurement
        self._ctx = None

    def ensure(self, ops) -> None:
        """Measure every op of ``ops`` not measured yet."""
        from .estimator import _kernel_key

        want = {}
        for o in ops:
            if isinstance(o, _ops().Overhead):  # priced from the dispatch probe (if run)
                continue
            if isinstance(o, _ops().Gemm) and o.kind == "unstructured":
                from dataclasses import replace

                o = replace(o, kind="dense", density=1.0)
            k = _kernel_key(o)
            if k not in self._mem and k not in want:
                want[k] = replace_count(o)
        if self.cache is not None:
            for rec in self.cache.get_measurements(self._fingerprint(), self.dtype):
                key = rec.get("key") if isinstance(rec, dict) else getattr(rec, "key", None)
                if key in want:
                    self._mem[key] = rec
                    want.pop(key)
                elif str(key).startswith("ovh:") and key not in self._mem:
                    self._mem[key] = rec
        if not want:
            return
        profiling = _profiling()
        if profiling is not None and self.cache is not None:
            done = profiling.measure_ops(list(want.values()), cache=self.cache, dtype=self.dtype,
                                         on_progress=self.on_progress, repeats=self.repeats)
            for m in done:
                self._mem[m.key] = m
            return
        from . import timing

        if self._ctx is None:
            self._ctx = timing.open_device("local")
        for i, op in enumerate(want.values()):
            if self.on_progress:
                self.on_progress(f"measuring op {i + 1}/{len(want)}: {op.key()}")
            m = timing.measure_op(op, self._ctx, repeats=self.repeats)
            self._mem[m.key] = m

    def add(self, measurements) -> None:
        """Measurements taken elsewhere (the dispatch probe's overhead ops)."""
        for m in measurements:
            self._mem[m.key] = m

    def _fingerprint(self) -> str:
        from .hardware import local_device

        return local_device().fingerprint

    def records(self) -> list:
        out = []
        for m in self._mem.values():
            if isinstance(m, dict):
                out.append(m)
            else:
                out.append({"key": m.key, "op": m.op, "ms": m.ms, "status": m.status})
        return out

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.free()
            self._ctx = None


def _ops():
    from . import ops

    return ops


def replace_count(op):
    from dataclasses import replace

    return replace(op, count=1.0)


def _profiling():
    try:
        from . import profiling  # noqa: F401
    except ImportError:
        return None
    return profiling if hasattr(profiling, "measure_ops") else None


def predict(spec: ModelSpec, strategy: tx.Strategy, scenario: Scenario, phase: str,
            times: OpTimes):
    """pis-tui's estimate of one phase on the local device from measured op times."""
    from .estimator import Estimator
    from .hardware import local_device

    po = tx.build_phase_ops(spec, strategy, scenario, phase)
    times.ensure(po.ops)
    est = Estimator(local_device(), times.records())
    return est.estimate(po)


# ============================================================== validate


@dataclass
class ValidationRow:
    strategy: str
    sparsity: float
    achieved_sparsity: float
    phase: str
    batch: int
    length: int  # prompt length (prefill) or context length (decode)
    predicted_ms: float
    measured_ms: float
    dense_predicted_ms: float
    dense_measured_ms: float
    predicted_speedup: float
    measured_speedup: float
    error: float  # predicted_speedup / measured_speedup − 1
    flops_speedup: float = 1.0
    flops_error: float = 0.0  # the naive predictor's error (FLOPs ratio vs measured)
    timing_source: str = "measured"
    measured_spread: float = 0.0  # IQR / median of the pruned model's samples
    dense_spread: float = 0.0
    repeats: int = 0
    granularity: str = "layer"
    notes: tuple = ()

    def to_dict(self, full: bool = False) -> dict:
        keys = ("strategy", "sparsity", "achieved_sparsity", "phase", "batch", "length",
                "predicted_ms", "measured_ms", "dense_predicted_ms", "dense_measured_ms",
                "predicted_speedup", "measured_speedup", "error")
        d = {k: _round(getattr(self, k)) for k in keys}
        if full:
            for k in ("flops_speedup", "flops_error", "timing_source", "measured_spread",
                      "dense_spread", "repeats", "granularity"):
                d[k] = _round(getattr(self, k))
            d["notes"] = list(self.notes)
        return d


def _round(x):
    return round(x, 6) if isinstance(x, float) else x


@dataclass
class Case:
    """One strategy × phase × batch to validate."""

    strategy: tx.Strategy
    phase: str
    batch: int
    length: int


def standard_strategies(extra: bool = True, sparsities=STANDARD_SPARSITIES,
                        device: str = "cpu") -> list:
    fams = standard_families() + (extra_families() if extra else ())
    return [tx.Strategy(f, s) for f in fams for s in families.get(f).sparsity_grid(sparsities)]


def validate(model: str | dict, strategies: list, phases=("prefill", "decode"), *,
             prefill_batch: int = 1, prompt_len: int = 128, decode_batches=(1, 16),
             context_len: int = 256, dtype: Optional[str] = None, repeats: int = 5,
             warmup: int = 1, cache=None, device: Optional[str] = None, seed: int = 0,
             op_repeats: Optional[int] = None,
             on_progress: Optional[Callable[[str], None]] = None,
             on_row: Optional[Callable[[ValidationRow], None]] = None,
             probe_overhead: bool = True, probes: Optional[dict] = None) -> list:
    """Build each pruned model, time it against the dense one (interleaved), and compare the
    measured speedups with pis-tui's predictions.  Returns one :class:`ValidationRow` per
    strategy × phase × batch.

    On the CPU the eager framework overhead is measured first (:func:`dispatch_probe`, once per
    code path, unless the cache already holds it) so the predictions include it; ``probes``
    (a dict) receives each probe's result by code path."""
    import gc

    import torch

    say = on_progress or (lambda msg: None)
    raw, spec = raw_config(model)
    check_buildable(spec)
    device = device or local_torch_device()
    dtype = dtype or ("fp32" if device == "cpu" else "bf16")
    torch_dtype(dtype)
    if device == "cpu":
        from .hardware import cpu_threads

        torch.set_num_threads(cpu_threads())
    cases = []
    for ph in phases:
        batches = (prefill_batch,) if ph == "prefill" else tuple(decode_batches)
        for b in batches:
            cases.append((ph, b, prompt_len if ph == "prefill" else context_len))
    times = OpTimes(dtype, cache, on_progress=say, repeats=op_repeats)
    if device == "cpu" and probe_overhead:
        from .ops import Overhead

        have = set()
        if cache is not None:
            have = {m.key for m in cache.get_measurements(times._fingerprint(), dtype)
                    if m.key.startswith("ovh:")}
        for ph, b, length in cases:
            path = overhead_phase(ph, b)
            if Overhead("x", "forward", path, 1.0, dtype).key() in have or \
                    (probes is not None and path in probes):
                continue
            say(f"measuring the framework overhead ({path}) with tiny clones")
            res = dispatch_probe(raw, spec, ph, b, length, times, cache=cache)
            have.add(Overhead("x", "forward", path, 1.0, dtype).key())
            if probes is not None:
                probes[path] = res
    # every op the comparisons need, measured in one go: on the CPU an op's rounds then lie
    # far apart in time (a slow spell of the machine spoils rounds, not ops)
    say("measuring the ops of every prediction")
    every = []
    for strat in [tx.Strategy("dense")] + list(strategies):
        for ph, b, length in cases:
            scen = Scenario(prefill_batch=b if ph == "prefill" else 1,
                            prompt_len=length if ph == "prefill" else 1,
                            decode_batch=b if ph == "decode" else 1,
                            context_len=length if ph == "decode" else 1, dtype=dtype)
            every += tx.build_phase_ops(spec, strat, scen, ph).ops
    times.ensure(every)
    rows: list = []
    say(f"building dense {spec.name} ({dtype}, {device})")
    dense = build_from_spec(raw, spec, tx.Strategy("dense"), device=device, dtype=dtype, seed=seed)
    dense_pred: dict = {}
    try:
        for strat in strategies:
            say(f"building {strat.family} s={strat.sparsity:g}")
            pruned = build_from_spec(raw, spec, strat, device=device, dtype=dtype, seed=seed)
            try:
                for ph, b, length in cases:
                    scen = Scenario(prefill_batch=b if ph == "prefill" else 1,
                                    prompt_len=length if ph == "prefill" else 1,
                                    decode_batch=b if ph == "decode" else 1,
                                    context_len=length if ph == "decode" else 1, dtype=dtype)
                    say(f"{strat.family} s={strat.sparsity:g} {ph} batch {b}: predicting")
                    if (ph, b, length) not in dense_pred:
                        dense_pred[(ph, b, length)] = predict(spec, tx.Strategy("dense"), scen, ph, times)
                    pe = predict(spec, strat, scen, ph, times)
                    de = dense_pred[(ph, b, length)]
                    say(f"{strat.family} s={strat.sparsity:g} {ph} batch {b}: timing end to end")
                    runs = [PhaseRun(dense, ph, b, length, seed=seed),
                            PhaseRun(pruned, ph, b, length, seed=seed)]
                    try:
                        for r in runs:
                            r.prepare()
                        td, tp = measure_interleaved(runs, repeats, warmup)
                    except (RuntimeError, NotImplementedError) as e:
                        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                        raise MeasureError(f"{strat.family} s={strat.sparsity:g} {ph} batch {b}: "
                                           f"the model failed to run ({msg})") from None
                    finally:
                        for r in runs:
                            r.close()
                    ps = de.latency_ms / pe.latency_ms
                    ms_ = td.median_ms / tp.median_ms
                    fs = de.flops / pe.flops if pe.flops else 1.0
                    notes = tuple(pruned.notes) + tuple(runs[1].notes)
                    row = ValidationRow(
                        strat.family, strat.sparsity, pe.achieved_sparsity, ph, b, length,
                        pe.latency_ms, tp.median_ms, de.latency_ms, td.median_ms, ps, ms_,
                        ps / ms_ - 1.0, fs, fs / ms_ - 1.0, pe.timing_source, tp.spread,
                        td.spread, repeats, strat.granularity, notes)
                    rows.append(row)
                    if on_row:
                        on_row(row)
            finally:
                del pruned
                gc.collect()
    finally:
        times.close()
        del dense
        gc.collect()
    if cache is not None and rows and hasattr(cache, "put_validation"):
        cache.put_validation([validation_record(r, spec, dtype, device) for r in rows])
    return rows


def validation_record(row: ValidationRow, spec: ModelSpec, dtype: str, device: str) -> dict:
    from .hardware import local_device

    d = row.to_dict(full=True)
    d.update(model=spec.name, dtype=dtype, device=local_device().fingerprint,
             fingerprint=local_device().fingerprint, torch_device=device,
             measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return d


def accuracy_summary(rows: list) -> dict:
    """Median and worst |error| of the predicted speedups (and of the FLOPs ratio)."""
    if not rows:
        return {"n": 0}
    errs = [abs(r.error) for r in rows]
    ferrs = [abs(r.flops_error) for r in rows]
    worst = max(rows, key=lambda r: abs(r.error))
    return {"n": len(rows), "median_abs_error": statistics.median(errs),
            "worst_abs_error": max(errs),
            "worst": f"{worst.strategy} {worst.sparsity:g} {worst.phase} b{worst.batch}",
            "flops_median_abs_error": statistics.median(ferrs),
            "flops_worst_abs_error": max(ferrs)}


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
                _sync(built.device)
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


def tiny_clone(raw: dict, spec: ModelSpec) -> tuple[dict, ModelSpec]:
    """The same architecture (layers, GQA ratio, biases, tying) with every width tiny: its
    forward time is almost all framework overhead (Python, module calls, dispatch, glue ops)."""
    from .model_spec import spec_from_config

    cfg = dict(raw)
    group = spec.gqa_group
    cfg.update(hidden_size=64, intermediate_size=64, num_attention_heads=2 * group,
               num_key_value_heads=2, head_dim=16, vocab_size=64)
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        cfg.pop(k, None)
    return cfg, spec_from_config(cfg, spec.name + "-tiny")


def overhead_probe(raw: dict, spec: ModelSpec, strategy: tx.Strategy, phase: str, batch: int,
                   length: int, times: "OpTimes", repeats: int = 7) -> dict:
    """Framework overhead of one forward that the sum of ops does not see: the tiny clone's
    measured time minus its own prediction (ops measured the same way)."""
    traw, tspec = tiny_clone(raw, spec)
    built = build_from_spec(traw, tspec, tx.Strategy(strategy.family, strategy.sparsity,
                                                      strategy.granularity, align=8),
                            dtype=times.dtype)
    scen = Scenario(prefill_batch=batch, prompt_len=length if phase == "prefill" else 1,
                    decode_batch=batch, context_len=length if phase == "decode" else 1,
                    dtype=times.dtype)
    pe = predict(tspec, tx.Strategy(strategy.family, strategy.sparsity, strategy.granularity,
                                    align=8), scen, phase, times)
    run = PhaseRun(built, phase, batch, length)
    run.prepare()
    try:
        t = measure_interleaved([run], repeats, warmup=2, target_ms=50)[0]
    finally:
        run.close()
    return {"measured_ms": t.median_ms, "predicted_ms": pe.latency_ms,
            "overhead_ms": max(0.0, t.median_ms - pe.latency_ms)}


# ============================================================== dispatch (framework) overhead

#: tiny clones timed by :func:`dispatch_probe`: their overhead counts (per forward, per block,
#: per linear, per routed sublayer) differ enough to solve for each kind's cost
PROBE_STRATEGIES = (("dense", 0.0), ("static_depth", 0.5), ("low_rank", 0.5),
                    ("dynamic_depth", 0.5))


def _solve(a: list, b: list) -> list:
    """Least squares a·x ≈ b (normal equations, Gaussian elimination with pivoting)."""
    n = len(a[0])
    ata = [[sum(r[i] * r[j] for r in a) for j in range(n)] for i in range(n)]
    atb = [sum(r[i] * y for r, y in zip(a, b)) for i in range(n)]
    m = [row + [v] for row, v in zip(ata, atb)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        if abs(m[p][c]) < 1e-12:
            raise MeasureError("dispatch probe: the tiny clones' overhead counts are degenerate")
        m[c], m[p] = m[p], m[c]
        for r in range(n):
            if r != c:
                f = m[r][c] / m[c][c]
                m[r] = [x - f * y for x, y in zip(m[r], m[c])]
    return [m[i][n] / m[i][i] for i in range(n)]


def dispatch_probe(raw: dict, spec: ModelSpec, phase: str, batch: int, length: int,
                   times: "OpTimes", *, cache=None, repeats: int = 9) -> dict:
    """Measure the eager framework overhead of this device (CPU) for one code path.

    Tiny clones of the model (same layers, wrappers and Python; every width tiny, so their
    kernels cost little) are built dense, at half depth, low-rank (twice the linears) and
    dynamic-depth (routed sublayers), timed end to end (interleaved), and their own kernel ops
    (the taxonomy's op list, measured like any op) are subtracted.  What is left is
    ``F + blocks·B + linears·Lin + routed·R``; solving the four clones gives the cost of each
    :class:`~pis_tui.ops.Overhead` kind, stored as measurements (keys ``ovh:<kind>:<path>:<dtype>``)
    so the estimator prices the overhead ops of every strategy with them.  Returns
    {"path", "ms": {kind: ms per call}, "clones": [...]}.
    """
    from dataclasses import asdict

    from .estimator import Estimator
    from .hardware import local_device
    from .measured_table import METHOD_VERSIONS, Measurement, now_iso, software_versions
    from .ops import OVERHEAD_KINDS, Overhead

    traw, tspec = tiny_clone(raw, spec)
    dtype = times.dtype
    scen = Scenario(prefill_batch=batch, prompt_len=length if phase == "prefill" else 1,
                    decode_batch=batch, context_len=length if phase == "decode" else 1,
                    dtype=dtype)
    path = overhead_phase(phase, batch)
    clones, runs, builts = [], [], []
    pos = [tx.build_phase_ops(tspec, tx.Strategy(fam, s, align=8), scen, phase)
           for fam, s in PROBE_STRATEGIES]
    times.ensure([o for po in pos for o in po.ops if not isinstance(o, Overhead)])
    est = Estimator(local_device(), [r for r in times.records()
                                     if not str(r.get("key", "")).startswith("ovh:")])
    try:
        for (fam, s), po in zip(PROBE_STRATEGIES, pos):
            strat = tx.Strategy(fam, s, align=8)
            kernel_ops = [o for o in po.ops if not isinstance(o, Overhead)]
            pred = sum(est.price(o).total_ms for o in kernel_ops)
            counts = {k: 0.0 for k in OVERHEAD_KINDS}
            for o in po.ops:
                if isinstance(o, Overhead):
                    counts[o.kind] += o.count
            built = build_from_spec(traw, tspec, strat, dtype=dtype)
            run = PhaseRun(built, phase, batch, length)
            run.prepare()
            builts.append(built)
            runs.append(run)
            clones.append({"strategy": fam, "sparsity": s, "counts": counts, "kernels_ms": pred})
        timed = measure_interleaved(runs, repeats, warmup=2, target_ms=60)
    finally:
        for r in runs:
            r.close()
    for c, t in zip(clones, timed):
        c["measured_ms"] = t.median_ms
        c["residual_ms"] = t.median_ms - c["kernels_ms"]
    kinds = [k for k in OVERHEAD_KINDS if any(c["counts"][k] for c in clones)]
    coef = _solve([[c["counts"][k] for k in kinds] for c in clones],
                  [c["residual_ms"] for c in clones])
    ms = {k: max(1e-6, v) for k, v in zip(kinds, coef)}
    fp = local_device().fingerprint
    sw = software_versions()
    out = []
    for k, v in ms.items():
        op = Overhead(f"{k}_overhead", k, path, 1.0, dtype)
        out.append(Measurement(
            key=op.key(), op=asdict(op), ms=v, eager_ms=v, spread=None, repeats=repeats,
            status="ok", method="cpu-wall", method_version=METHOD_VERSIONS["cpu-wall"],
            fingerprint=fp, software=sw, measured_at=now_iso(),
            note=(f"dispatch probe: tiny clones of {spec.name} ({', '.join(f for f, _ in PROBE_STRATEGIES)}), "
                  f"{phase} batch {batch} × {length}; measured − kernel ops, solved per kind")))
    times.add(out)
    if cache is not None:
        cache.put_measurements(out)
    return {"path": path, "ms": ms, "clones": clones}

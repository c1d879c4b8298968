"""The pruned model's configuration: the raw Hugging Face config of a preset, path or cached id,
the dims the pruned model must have (the family's ``validate_dims`` hook, exactly the
taxonomy's rounding), and the transformers config built from them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..errors import UserError
from ..model.spec import ModelSpec, load_model_spec, load_preset_config, preset_names

#: what validate builds with transformers' own classes, and the families it can build each with
#: (None: every family).  Beyond the Llama layout and Gemma 3, a family is offered only where the
#: model's config can say the pruned shape (its layer count; Phi-3's heads and channels) or a
#: wrapper runs the block as the layer's own forward does.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gemma3_text", "gemma2", "phi3",
                         "opt", "gpt2", "gpt_neox") + ("qwen3_moe", "qwen2_moe", "mixtral", "olmoe",
                                                        "granitemoe")
#: the mixture-of-experts model types validate builds (transformers' own classes, their experts
#: run through ``grouped_mm``): the families that act on their attention, their layers, their
#: shared experts and dense layers, and the four that act on the routed experts
#: (:mod:`pis_tui.hf.experts`: experts sliced, k set, channels sliced, tokens' slots skipped)
MOE_MODEL_TYPES = ("qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "granitemoe")
_MOE_FAMILIES = ("dense", "static_depth", "static_width", "low_rank", "dynamic_depth",
                 "semi_structured_24", "unstructured", "dynamic_sparse_attention",
                 "expert_pruning", "topk_reduction", "dynamic_topk", "expert_slimming")
VALIDATE_FAMILIES = {
    **{t: _MOE_FAMILIES for t in MOE_MODEL_TYPES},
    # Qwen2-MoE's shared expert is a gate_proj/up_proj pair the prediction prices as one fused
    # gate_up GEMM: a low-rank factor of the pair is not the factor of the fused one
    "qwen2_moe": tuple(f for f in _MOE_FAMILIES if f != "low_rank"),
    "gemma2": ("dense", "static_depth", "static_width", "low_rank", "dynamic_depth",
               "semi_structured_24", "unstructured"),
    "phi3": ("dense", "static_depth", "static_width"),
    "opt": ("dense", "static_depth"),
    "gpt2": ("dense", "static_depth"),
    "gpt_neox": ("dense", "static_depth"),
}
#: the config keys of each dim, per model type (default: the Llama layout's)
CONFIG_KEYS = {
    "opt": {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
            "inter": "ffn_dim"},
    "gpt2": {"layers": "n_layer", "hidden": "n_embd", "heads": "n_head", "inter": "n_inner"},
    "gpt_neox": {"layers": "num_hidden_layers", "hidden": "hidden_size",
                 "heads": "num_attention_heads", "inter": "intermediate_size"},
    # intermediate_size is these models' routed experts' width, which expert_slimming slices
    # after building (hf/experts.py): the pruned MLP width has no key (their MoE layers have no
    # dense or shared MLP to cut)
    **{t: {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
           "kv": "num_key_value_heads", "head_dim": "head_dim"}
       for t in ("mixtral", "olmoe", "granitemoe")},
}
#: why a family cannot act on an MoE model validate builds (the one line it is refused with)
MOE_REFUSED = {
    "static_width_hidden": "the hidden size runs through every routed expert and the router, "
                           "which validate does not slice",
    "low_rank": "its shared expert's gate and up projections are priced as one fused GEMM, "
                "whose low-rank factor is not theirs",
}
_LLAMA_KEYS = {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
               "kv": "num_key_value_heads", "head_dim": "head_dim", "inter": "intermediate_size"}
#: our dtype names → torch's (tf32 is fp32 storage with TF32 matmuls: measured, never validated)
TORCH_DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}
#: the dtypes validate builds a pruned model in
VALIDATE_DTYPES = ("fp32", "bf16", "fp16")





# ============================================================== configs


def raw_config(model: str | dict) -> tuple[dict, ModelSpec]:
    """The raw HF config dict and the spec of a preset, config path/dir, cached id or dict."""
    if isinstance(model, dict):
        from ..model.spec import spec_from_config

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
            from ..model.spec import _autoconfig_dict

            cfg = _autoconfig_dict(ref)
    if isinstance(cfg.get("text_config"), dict):
        outer = cfg
        cfg = dict(cfg["text_config"])
        cfg.setdefault("tie_word_embeddings", outer.get("tie_word_embeddings", False))
    return cfg, spec


def check_buildable(spec: ModelSpec, family: Optional[str] = None, granularity: str = "layer") -> None:
    if spec.model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(f"{spec.name}: validate builds {', '.join(SUPPORTED_MODEL_TYPES)} models; "
                        f"this one is {spec.model_type!r}")
    allowed = VALIDATE_FAMILIES.get(spec.model_type)
    if granularity == "sublayer" and spec.model_type in ("opt", "gpt2", "gpt_neox"):
        raise UserError(f"{spec.name}: validate drops whole {spec.model_type} layers only "
                        "(--granularity layer)")
    if family is not None and allowed is not None:
        parts = family.split("+")
        bad = [f for f in parts if f not in allowed]
        if bad and spec.model_type in MOE_MODEL_TYPES:
            why = MOE_REFUSED.get(bad[0], "it has no build for mixture-of-experts models")
            raise UserError(f"{spec.name}: validate cannot build a {spec.model_type} model pruned "
                            f"by {bad[0]}: {why} (it builds {', '.join(allowed[1:])})")
        if bad:
            raise UserError(f"{spec.name}: validate builds {spec.model_type} models pruned by "
                            f"{', '.join(allowed[1:])} only, not {bad[0]} (its estimate stands "
                            "unvalidated)")


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
    #: tensor parallelism: the model is one rank's of this many (heads, KV heads, MLP channels
    #: and vocabulary split; the fields above are the whole pruned model's, ``ranks`` a shard's)
    tp: int = 1
    #: the served precision's K alignment (an int4 group; 1 unquantized): the widths a family
    #: cuts are rounded to lcm(its alignment, this), as the op list at that precision rounds
    #: them (:attr:`pis_tui.families.base.PhaseContext.width_align`)
    k_align: int = 1

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def rank_widths(d: dict) -> tuple[int, int, int]:
    """(query heads, KV heads, MLP channels) one rank holds, for a dict of :class:`PrunedDims`
    fields (the whole model's at tp = 1)."""
    from ..model.tensor_parallel import rank_heads

    tp = d.get("tp", 1)
    q, kv, _ = rank_heads(d["num_heads"], d["num_kv_heads"], tp)
    return q, kv, d["intermediate_size"] // tp


def proj_shapes(d: dict) -> dict:
    """(N, K) of each decoder linear for a dict of :class:`PrunedDims` fields (one rank's
    shards under tensor parallelism: column-parallel N and row-parallel K split)."""
    qh, kvh, i = rank_widths(d)
    q, kv = qh * d["head_dim"], kvh * d["head_dim"]
    h = d["hidden_size"]
    return {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
            "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}


def hf_config(raw: dict, spec: ModelSpec, dims: PrunedDims):
    """A transformers config for the pruned model (the preset's config with changed dims)."""
    from transformers import CONFIG_MAPPING

    check_buildable(spec)
    cfg = {k: v for k, v in raw.items() if not k.startswith("_") and k not in (
        "model_type", "architectures", "transformers_version", "torch_dtype", "dtype",
        "layer_types", "max_window_layers", "auto_map", "quantization_config")}
    keys = CONFIG_KEYS.get(spec.model_type, _LLAMA_KEYS)
    vals = {"layers": dims.num_layers, "hidden": dims.hidden_size, "heads": dims.num_heads,
            "kv": dims.num_kv_heads, "head_dim": dims.head_dim, "inter": dims.intermediate_size}
    if "head_dim" not in keys and dims.head_dim * dims.num_heads != dims.hidden_size:
        raise UserError(f"{spec.name}: a {spec.model_type} config cannot hold {dims.num_heads} heads of "
                        f"{dims.head_dim} in a hidden size of {dims.hidden_size}")
    cfg.update({keys[k]: v for k, v in vals.items() if k in keys})
    cfg.update(use_cache=True, tie_word_embeddings=spec.tie_embeddings)
    if dims.tp > 1:  # one rank's model: its heads, KV heads, channels and rows of the vocabulary
        from ..model.tensor_parallel import vocab_per_rank

        qh, kvh, inter = rank_widths(dims.to_dict())
        cfg.update(num_attention_heads=qh, num_key_value_heads=kvh, intermediate_size=inter,
                   vocab_size=vocab_per_rank(spec.vocab_size, dims.tp))
    if spec.model_type in ("qwen2", "qwen3", "qwen3_moe", "qwen2_moe"):
        cfg["use_sliding_window"] = False
        cfg["max_window_layers"] = dims.num_layers
    if spec.model_type in ("mistral", "mixtral"):
        cfg["sliding_window"] = None
    if spec.model_type in MOE_MODEL_TYPES:
        _moe_config(cfg, spec, dims)
    vocab = cfg.get("vocab_size")
    for k in ("pad_token_id", "bos_token_id", "eos_token_id"):
        v = cfg.get(k)
        if isinstance(vocab, int) and isinstance(v, int) and not 0 <= v < vocab:
            cfg[k] = None  # outside a reduced table (no op depends on it)
    try:
        config = CONFIG_MAPPING[spec.model_type](**cfg)
    except (TypeError, ValueError) as e:
        raise UserError(f"{spec.name}: cannot build a {spec.model_type} config ({e})") from None
    # a soft-capped model (Gemma 2) runs transformers' eager attention: SDPA cannot soft-cap
    config._attn_implementation = "eager" if cfg.get("attn_logit_softcapping") else "sdpa"
    if spec.model_type in MOE_MODEL_TYPES:
        # the experts as one grouped GEMM per projection (torch.nn.functional.grouped_mm over
        # the experts that got tokens), as the prediction prices them; never batched_mm, which
        # copies every token's expert weights.  Asked for by name, transformers raises where
        # grouped_mm cannot run instead of falling back to its loop
        config._experts_implementation = EXPERTS_IMPL
    if dims.tp > 1:
        config.pis_full_vocab = spec.vocab_size  # the ids a rank's inputs are drawn from
    return config


#: how validate's MoE models run their experts (transformers' ``experts_implementation``)
EXPERTS_IMPL = "grouped_mm"


def _moe_config(cfg: dict, spec: ModelSpec, dims: PrunedDims) -> None:
    """An MoE config's keys for the pruned dims: a static-depth model's dense layers
    (``mlp_only_layers``) kept where they fall, Qwen2-MoE's shared expert cut by the share of
    the dense MLP width kept (as the prediction prices it); the routed experts are untouched."""
    only = cfg.get("mlp_only_layers")
    if isinstance(only, list):
        cfg["mlp_only_layers"] = [i for i in only if isinstance(i, int) and i < dims.num_layers]
    shared = cfg.get("shared_expert_intermediate_size")
    if isinstance(shared, int) and shared > 0 and spec.intermediate_size:
        cfg["shared_expert_intermediate_size"] = max(
            1, round(shared * dims.intermediate_size / spec.intermediate_size))


def config_at_depth(ref, layers: Optional[int] = None):
    """(raw config, spec, what to build: ``ref`` itself, or the reduced raw config) of a model
    reference at its first ``layers`` decoder layers (None: whole); one line for a bad one."""
    raw, spec = raw_config(ref)
    if layers is None:
        return raw, spec, ref
    raw = reduce_layers(raw, spec, layers)
    raw, spec = raw_config(raw)
    return raw, spec, raw


def reduce_layers(raw: dict, spec: ModelSpec, layers: int) -> dict:
    """The raw config of ``spec`` with only its first ``layers`` decoder layers (its real
    widths, experts and vocabulary): what ``validate --layers`` builds for a model too big to
    hold whole.  Named ``<model>-<layers>L``; one-line errors for a count outside 1…L."""
    L = spec.num_layers
    if not isinstance(layers, int) or isinstance(layers, bool) or not 1 <= layers <= L:
        raise UserError(f"--layers {layers!r}: {spec.name} has {L} decoder layers (give 1…{L})")
    cfg = dict(raw)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in cfg:
            cfg[key] = layers
    if "num_hidden_layers" not in cfg and "n_layer" not in cfg and "num_layers" not in cfg:
        cfg["num_hidden_layers"] = layers
    for key in ("layer_types",):
        if isinstance(cfg.get(key), list):
            cfg[key] = cfg[key][:layers]
    if isinstance(cfg.get("mlp_only_layers"), list):
        cfg["mlp_only_layers"] = [i for i in cfg["mlp_only_layers"] if isinstance(i, int) and i < layers]
    if isinstance(cfg.get("max_window_layers"), int):
        cfg["max_window_layers"] = min(cfg["max_window_layers"], layers)
    cfg["_name"] = f"{spec.name}-{layers}L" if layers < L else spec.name
    return cfg


def torch_dtype(name: str, unknown: Optional[Callable[[str], Exception]] = None):
    """torch's dtype for one of our dtype names.

    By default validate's: a pruned model is built in fp32, bf16 or fp16 (a UserError for
    another name).  With ``unknown`` (the measuring side's), any name of :data:`TORCH_DTYPES`,
    tf32 included, and ``unknown(name)`` is raised for another."""
    import torch

    if unknown is None and name not in VALIDATE_DTYPES:
        raise UserError(f"validate runs fp32, bf16 or fp16 models, not {name!r}")
    if name not in TORCH_DTYPES:
        raise unknown(name)
    return getattr(torch, TORCH_DTYPES[name])

"""Model specs: the shapes of a decoder-only transformer, read from a Hugging Face config.

Sources, in order: a preset shipped in ``profiles/models/<name>.json`` (plain JSON, no
transformers import), a directory holding ``config.json``, a path to a config file, or a
model id already in the local Hugging Face cache (transformers ``AutoConfig`` with
``local_files_only=True``: the network is never touched).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from typing import Optional

from ..errors import UserError
from ..shipped import list_names, profile_path
from .architecture import Architecture, architecture_for, role_nk, rotary_dim, widths_of_config
from .moe import MoEConfig, moe_config

_NON_DECODER_TYPES = {"bert", "roberta", "t5", "mt5", "bart", "mbart", "deberta", "deberta-v2",
                      "electra", "distilbert", "albert", "whisper", "vit", "clip", "xlm-roberta",
                      "marian", "pegasus", "longt5", "umt5", "encoder-decoder"}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_embeddings: bool
    activation: str
    attention_bias: bool = False
    qk_norm: bool = False
    source: str = ""
    #: what a layer runs, traced from the model's own class (:mod:`pis_tui.model.architecture`)
    architecture: Optional[Architecture] = None
    rotary_dim: int = 0        # rotated width per head (0: no rotary embedding)
    sliding_window: int = 0    # keys a sliding-window layer sees (0: none)
    sliding_layers: int = 0    # how many of the layers use it
    max_positions: int = 0     # learned position table rows (OPT, GPT-2; 0: none)
    #: a mixture-of-experts model's experts (None: dense); ``intermediate_size`` is then the
    #: dense layers' MLP width (Mixtral: the experts')
    moe: Optional[MoEConfig] = None

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def gqa_group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def widths(self) -> dict:
        return {"hidden": self.hidden_size, "q_dim": self.q_dim, "kv_dim": self.kv_dim,
                "inter": self.intermediate_size, "vocab": self.vocab_size}

    def layer_params(self) -> int:
        return self.attn_params() + self.mlp_params()

    def attn_params(self) -> int:
        """Weights of one layer's attention projections (q/k/v or qkv, and o)."""
        return self._params(("q", "k", "v", "qkv", "o"))

    def mlp_params(self) -> int:
        """Weights of one layer's MLP projections (three gated, two ungated); for an MoE model
        the mean over its layers of every expert (all resident), the router and the shared
        experts, and the dense layers' MLPs."""
        if self.moe is None:
            return self._params(("gate", "up", "gate_up", "in", "down"))
        h, e = self.hidden_size, self.moe
        moe_layer = (e.experts * e.expert_params(h) + h * e.experts + 3 * h * e.shared_inter
                     + (h if e.shared_gate else 0))
        dense_layer = 3 * h * self.intermediate_size
        n = max(self.num_layers, 1)
        return round((e.moe_layers * moe_layer + (n - e.moe_layers) * dense_layer) / n)

    def _params(self, roles: tuple) -> int:
        if self.architecture is None:  # the Llama layout
            h, i = self.hidden_size, self.intermediate_size
            return (h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h) if "q" in roles else 3 * h * i
        w = self.widths
        return sum(n * k for n, k in (role_nk(e.role, w) for e in self.architecture.linears()
                                      if e.role in roles))

    @property
    def arch_name(self) -> str:
        return self.architecture.model_class if self.architecture else "Llama layout"

    def total_params(self) -> int:
        emb = self.vocab_size * self.hidden_size
        return self.num_layers * self.layer_params() + emb * (1 if self.tie_embeddings else 2)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params"] = self.total_params()
        d["architecture"] = self.architecture.summary() if self.architecture else None
        return d


def spec_from_config(cfg: dict, name: str, source: str = "", *, allow_trace: bool = True,
                     with_architecture: bool = True) -> ModelSpec:
    """Extract a ModelSpec from a config dict (the text config of a multimodal one), with the
    architecture template its model type runs (shipped, cached, or traced now where
    ``allow_trace``)."""
    if not isinstance(cfg, dict):
        raise UserError(f"{name}: config is not a JSON object")
    if isinstance(cfg.get("text_config"), dict):
        outer = cfg
        cfg = dict(cfg["text_config"])
        cfg.setdefault("tie_word_embeddings", outer.get("tie_word_embeddings", False))
    model_type = str(cfg.get("model_type", "unknown"))
    archs = cfg.get("architectures") or []
    if cfg.get("kv_lora_rank") or cfg.get("q_lora_rank"):
        raise UserError(f"{name}: multi-head latent attention ({model_type}: DeepSeek V2/V3, Kimi "
                        "K2) is not priced yet: its compressed KV and absorbed projections are "
                        "not in pis-tui's op vocabulary")
    if model_type == "gpt_oss":
        raise UserError(f"{name}: gpt-oss is not priced yet (attention sinks on alternating "
                        "sliding windows, biased experts and MXFP4 expert weights)")
    moe = moe_config(cfg, name)
    if cfg.get("is_encoder_decoder") or model_type in _NON_DECODER_TYPES or (
            archs and not any(s in a for a in archs
                              for s in ("CausalLM", "LMHeadModel", "ForConditionalGeneration"))):
        what = ", ".join(archs) if archs else model_type
        raise UserError(f"{name}: only decoder-only language models are supported (this is {what})")

    def need(*keys: str) -> int:
        for k in keys:
            v = cfg.get(k)
            if v is not None:
                if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                    raise UserError(f"{name}: config field {k}={v!r} is not a positive integer")
                return v
        raise UserError(f"{name}: config lacks {keys[0]}: is this a decoder-only transformer config?")

    layers = need("num_hidden_layers", "n_layer", "num_layers")
    hidden = need("hidden_size", "n_embd", "d_model")
    heads = need("num_attention_heads", "n_head")
    if model_type == "gpt2" and cfg.get("n_inner") is None:
        inter = 4 * hidden  # GPT-2: n_inner null means 4 × n_embd
    elif moe is not None and cfg.get("intermediate_size") is None:
        inter = moe.expert_inter  # no dense layers' width given: the experts'
    else:
        inter = need("intermediate_size", "ffn_dim", "n_inner")
    proj = cfg.get("word_embed_proj_dim")
    if model_type == "opt" and proj not in (None, hidden):
        raise UserError(f"{name}: OPT with word_embed_proj_dim={proj} ≠ hidden_size={hidden} "
                        "(project_in/out around the layers) is not supported")
    kv = cfg.get("num_key_value_heads") or heads
    if not isinstance(kv, int) or kv <= 0 or heads % kv:
        raise UserError(f"{name}: num_key_value_heads={kv!r} does not divide num_attention_heads={heads}")
    head_dim = cfg.get("head_dim")
    if head_dim is None:  # absent (or null): the usual hidden / heads; a given 0 is no width
        head_dim = hidden // heads
    if not isinstance(head_dim, int) or head_dim <= 0:
        raise UserError(f"{name}: head_dim={head_dim!r} is not a positive integer")
    vocab = need("vocab_size")
    arch = architecture_for(cfg, name, allow_trace=allow_trace) if with_architecture else None
    if arch is not None and arch.moe != (moe is not None):
        raise UserError(f"{name}: the config {'has' if moe else 'has no'} experts but "
                        f"{arch.model_class}'s layer {'has no' if moe else 'has a'} "
                        "mixture-of-experts block")
    w = widths_of_config(cfg)
    w.update(head_dim=head_dim)
    rot = rotary_dim(w) if arch is None or arch.rotary() else 0
    window, windowed = _sliding(cfg, layers)
    return ModelSpec(
        name=name, model_type=model_type, num_layers=layers, hidden_size=hidden,
        intermediate_size=inter, num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
        vocab_size=vocab, tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        activation=str(cfg.get("hidden_activation") or cfg.get("hidden_act")
                       or cfg.get("activation_function") or "silu"),
        attention_bias=bool(cfg.get("attention_bias", model_type == "qwen2")) and model_type in _QKV_BIAS_OP,
        qk_norm=(any(e.op == "qk_norm" for e in arch.attention) if arch else model_type == "qwen3"),
        source=source,
        architecture=arch, rotary_dim=rot, sliding_window=window, sliding_layers=windowed,
        max_positions=int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 0)
        if arch is not None and any(e.op == "pos_embedding" for e in arch.before_layers) else 0,
        moe=moe,
    )


#: model types whose q/k/v bias is priced as its own op (``qkv_bias``), as pis-tui always has
#: for them; elsewhere a linear's bias runs inside its GEMM (addmm), as the trace shows
_QKV_BIAS_OP = ("llama", "mistral", "qwen2", "qwen3")


def _sliding(cfg: dict, layers: int) -> tuple[int, int]:
    """(window, layers using it) from a config: ``layer_types`` where given, else Gemma's
    ``sliding_window_pattern`` (every n-th layer global), else Gemma 2's alternation, else a
    window on every layer (Mistral-style, unless ``use_sliding_window`` is false)."""
    w = cfg.get("sliding_window")
    if not isinstance(w, int) or isinstance(w, bool) or w <= 0 or cfg.get("use_sliding_window") is False:
        return 0, 0
    types = cfg.get("layer_types")
    if isinstance(types, list) and types:
        n = sum(1 for t in types[:layers] if "sliding" in str(t))
        return (w, n) if n else (0, 0)
    pattern = cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern")
    if isinstance(pattern, int) and pattern > 1:
        return w, layers - layers // pattern
    if cfg.get("model_type") == "gemma2":
        return w, (layers + 1) // 2  # even layers slide, odd ones are global
    return w, layers


def preset_names() -> list[str]:
    return list_names("models")


def load_preset_config(name: str) -> dict:
    with open(profile_path("models", name + ".json"), encoding="utf-8") as f:
        return json.load(f)


MAX_CONFIG_BYTES = 4 << 20  # a config.json is a few KB; weights or a database are not one


def _read_json_file(path: Path, name: str) -> dict:
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise UserError(f"{path}: {size / 2**20:.0f} MiB is not a model config (a config.json "
                            "is a few KB; give the model's config.json or its directory)")
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (a model config is JSON: give the model's "
                        "config.json or its directory)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def hf_hub_cache() -> Path:
    """The local Hugging Face hub cache folder (same rules as huggingface_hub)."""
    return Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
                or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")


def hf_cache_models() -> list[str]:
    """Model ids with a config.json in the local Hugging Face hub cache (no network)."""
    root = hf_hub_cache()
    out = []
    if root.is_dir():
        for d in sorted(root.glob("models--*")):
            if any(d.glob("snapshots/*/config.json")):
                out.append(d.name[len("models--"):].replace("--", "/"))
    return out


def _autoconfig_dict(target: str) -> dict:
    """Read a config through transformers, offline.  Imported only here (it is slow)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoConfig
    except ImportError:  # pragma: no cover - transformers is a dependency
        raise UserError("reading a non-preset model needs transformers installed") from None
    try:
        kw = {} if Path(target).exists() else {"cache_dir": str(hf_hub_cache())}
        cfg = AutoConfig.from_pretrained(target, local_files_only=True, **kw)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{target}: cannot load config offline ({first})") from None
    return cfg.to_dict()


def load_model_spec(ref: str, *, allow_transformers: bool = True) -> ModelSpec:
    """Load a spec from a preset name, a config path or directory, or a cached HF id.

    With ``allow_transformers=False`` configs are read as plain JSON only (the explorer: a
    transformers import would stall its screen); a config that omits fields transformers would
    default is then an error naming the field."""
    if not ref or not str(ref).strip():
        raise UserError("no model given")
    ref = str(ref).strip()
    if ref in preset_names():
        cfg = load_preset_config(ref)
        return spec_from_config(cfg, ref, source=cfg.get("_source", "preset"),
                                allow_trace=allow_transformers)
    path = Path(ref).expanduser()
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise UserError(f"{path}: no config.json in this directory")
        raw = _read_json_file(cfg_path, ref)
        cfg = _maybe_autoconfig(str(path), raw) if allow_transformers else raw
        return spec_from_config(cfg, path.name, source=str(cfg_path), allow_trace=allow_transformers)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        raw = _read_json_file(path, ref)
        return spec_from_config(raw, path.stem if path.name != "config.json" else path.parent.name,
                                source=str(path), allow_trace=allow_transformers)
    if "/" in ref and not ref.startswith((".", "/", "~")):
        if ref not in hf_cache_models():
            raise UserError(f"{ref}: not a preset and not in the local Hugging Face cache "
                            f"(presets: {', '.join(preset_names())})")
        if not allow_transformers:
            repo = hf_hub_cache() / ("models--" + ref.replace("/", "--"))
            newest = max(repo.glob("snapshots/*/config.json"), key=lambda p: p.stat().st_mtime)
            return spec_from_config(_read_json_file(newest, ref), ref, source=f"hf-cache:{ref}",
                                    allow_trace=False)
        return spec_from_config(_autoconfig_dict(ref), ref, source=f"hf-cache:{ref}")
    raise UserError(f"unknown model {ref!r}: not a preset ({', '.join(preset_names())}), "
                    "a config path or a cached Hugging Face id")


def _maybe_autoconfig(target: str, raw: dict) -> dict:
    """Validate the raw checks first (clear MoE/decoder errors), then let transformers fill
    defaults for keys the file omits; fall back to the raw dict if its type is unknown."""
    spec_from_config(raw, target, with_architecture=False)  # raises the clear one-line errors
    if all(k in raw for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                              "num_attention_heads", "vocab_size")):
        return raw
    return _autoconfig_dict(target)

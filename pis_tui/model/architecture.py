"""Architecture templates: what a decoder layer of each model type runs, as pis-tui's ops.

A template is data traced from the model's own transformers class
(:mod:`pis_tui.hf.architecture_trace`, on the meta device) and shipped in
``profiles/architectures/<model_type>.json`` with the transformers and torch versions it came
from.  It lists, in call order, the ops of the attention block and of the MLP block of one
decoder layer and the ops around the layers, each with the role the pruning families act on:

* ``linear``: a GEMM with its ``role`` — ``q``, ``k``, ``v``, ``qkv`` (fused, N = q + 2·kv),
  ``o``; ``gate``, ``up``, ``gate_up`` (fused, N = 2·I), ``in`` (an ungated MLP's first
  matrix), ``down`` — whose N and K follow from the layer's widths (:func:`role_nk`);
* ``norm`` (``rmsnorm`` or ``layernorm``), ``qk_norm``, ``rotary``, ``kv_write`` (decode),
  ``attention``, ``act`` (``silu_mul``, ``act_mul``: another gated activation, ``act``:
  ungated), ``residual``; ``embedding``, ``pos_embedding`` (learned positions), ``scale``
  (Gemma's embedding scale, the final logit soft-cap) around the layers.

Each op's eager kernels are kept per phase (``kernels``, the meta device's trace: transformers'
CUDA branches) and, for the ops whose modules branch on the device, per device kind
(``device_kernels.cpu``: an MoE block's ops traced on fake CPU tensors); see
:func:`template_kernels`.

The estimating paths read templates as JSON: no torch, no transformers.  A model type with no
shipped template is traced once on first use (in a subprocess, so the caller never imports
torch) and cached under the user's cache folder, keyed by model type and the config's
structural fields (:func:`structure_of`); one that cannot be traced is refused with one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..shipped import profile_path

FORMAT = "pis-tui-architecture/1"

#: linear names → role (``c_proj`` and ``dense`` depend on the block: see :func:`role_of`)
ROLE_NAMES = {
    "q_proj": "q", "query": "q", "k_proj": "k", "key": "k", "v_proj": "v", "value": "v",
    "qkv_proj": "qkv", "c_attn": "qkv", "query_key_value": "qkv", "Wqkv": "qkv",
    "o_proj": "o", "out_proj": "o",
    "gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up", "gate_up_proj": "gate_up",
    "fc1": "in", "c_fc": "in", "dense_h_to_4h": "in", "fc_in": "in",
    "down_proj": "down", "fc2": "down", "dense_4h_to_h": "down", "fc_out": "down", "w2": "down",
}
ATTN_ROLES = ("q", "k", "v", "qkv", "o")
ATTN_OUT_ROLES = ("o",)
MLP_IN_ROLES = ("gate", "up", "gate_up", "in")
MLP_ROLES = MLP_IN_ROLES + ("down",)
#: activation functions an ``act`` op can run (the op's ``extra`` is the index)
ACTIVATIONS = ("silu", "relu", "gelu", "gelu_tanh", "quick_gelu", "sigmoid")
#: model types whose op names are pis-tui's historical Llama names (their caches, kernel
#: traces and docs use them): input_norm, post_attn_norm, silu_mul
LLAMA_NAMES = {"input_layernorm": "input_norm", "post_attention_layernorm": "post_attn_norm"}
LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3")
#: config fields that change which ops a layer runs (not its widths): a user's config whose
#: values differ from the template's is traced anew
STRUCTURAL_KEYS = ("hidden_act", "activation_function", "hidden_activation", "attention_bias",
                   "mlp_bias", "bias", "use_parallel_residual", "attn_logit_softcapping",
                   "final_logit_softcapping", "do_layer_norm_before", "qk_layernorm",
                   "use_qk_norm", "scale_attn_weights",
                   "position_embedding_type", "rotary_pct", "partial_rotary_factor")


def role_of(leaf: str, rel: str = "") -> Optional[str]:
    """The role of a linear from its name (and, for ``c_proj``/``dense``, its block)."""
    if leaf in ("c_proj", "dense"):
        return "o" if any(s in rel for s in ("attn", "attention")) else "down"
    return ROLE_NAMES.get(leaf)


def role_nk(role: str, w: dict) -> tuple[int, int]:
    """(N, K) of a linear of ``role`` for widths ``w`` (hidden, q_dim, kv_dim, inter)."""
    h, q, kv, i = w["hidden"], w["q_dim"], w["kv_dim"], w["inter"]
    return {"q": (q, h), "k": (kv, h), "v": (kv, h), "qkv": (q + 2 * kv, h), "o": (h, q),
            "gate": (i, h), "up": (i, h), "in": (i, h), "gate_up": (2 * i, h), "down": (h, i),
            "lm_head": (w.get("vocab", 0), h)}[role]


def op_name_of(model_type: str, leaf: str, role: str) -> str:
    if role == "norm" and model_type in LLAMA_TYPES:
        return LLAMA_NAMES.get(leaf, leaf)
    return leaf


def _first(cfg: dict, *keys):
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return None


def widths_of_config(cfg: dict) -> dict:
    """The widths of a config dict under the names every architecture uses (no checks: the
    spec does them)."""
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
    heads = _first(cfg, "num_attention_heads", "n_head")
    inter = _first(cfg, "intermediate_size", "ffn_dim", "n_inner")
    if inter is None and isinstance(hidden, int):
        inter = 4 * hidden  # GPT-2's n_inner=None: 4 × n_embd
    kv = _first(cfg, "num_key_value_heads") or heads
    hd = cfg.get("head_dim")
    if hd is None and isinstance(hidden, int) and isinstance(heads, int) and heads:
        hd = hidden // heads
    rope = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    frac = _first(cfg, "partial_rotary_factor", "rotary_pct")
    if frac is None:  # transformers 5 keeps it with the other rope parameters
        frac = rope.get("partial_rotary_factor")
    out = {"model_type": str(cfg.get("model_type", "unknown")),
           "num_layers": _first(cfg, "num_hidden_layers", "n_layer", "num_layers"),
           "hidden": hidden, "heads": heads, "kv_heads": kv, "head_dim": hd, "inter": inter,
           "vocab": cfg.get("vocab_size"),
           "activation": str(_first(cfg, "hidden_activation", "hidden_act", "activation_function") or ""),
           "rotary_fraction": float(frac) if isinstance(frac, (int, float)) else 1.0}
    experts = _first(cfg, "num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
    if isinstance(experts, int) and experts > 1:  # an MoE block's widths (pis_tui.model.moe)
        out.update(experts=experts, top_k=_first(cfg, "num_experts_per_tok", "moe_top_k", "top_k"),
                   expert_inter=_first(cfg, "moe_intermediate_size", "expert_intermediate_size",
                                       "intermediate_size"),
                   shared_inter=cfg.get("shared_expert_intermediate_size") or 0)
    if all(isinstance(out[k], int) for k in ("heads", "kv_heads", "head_dim")):
        out["q_dim"] = out["heads"] * out["head_dim"]
        out["kv_dim"] = out["kv_heads"] * out["head_dim"]
    return out


def structure_of(cfg: dict) -> dict:
    """The config's structural fields (see :data:`STRUCTURAL_KEYS`): soft-cap values count only
    as present or not."""
    out = {}
    for k in STRUCTURAL_KEYS:
        if k in cfg:
            v = cfg[k]
            if k.endswith("softcapping"):
                v = bool(v)
            elif k in ("rotary_pct", "partial_rotary_factor"):
                v = bool(v) and float(v) < 1.0
            out[k] = v
    return out


@dataclass(frozen=True)
class Entry:
    """One op of a template (see the module doc)."""

    op: str
    name: str
    role: str = ""
    kind: str = ""
    bias: bool = False
    softcap: bool = False
    gated: bool = False
    activation: str = ""
    decode_only: bool = False


@dataclass(frozen=True)
class Architecture:
    model_type: str
    model_class: str
    attention_implementation: str
    parallel_residual: bool
    before_layers: tuple
    attention: tuple
    mlp: tuple
    after_layers: tuple
    source: str  # "shipped" or the cache file it was traced into
    traced_with: str
    key: str = ""  # the model type (shipped) or the cache key: what its eager kernels are under

    @property
    def norm_kind(self) -> str:
        for e in self.attention + self.mlp:
            if e.op == "norm":
                return e.kind
        return "rmsnorm"

    @property
    def gated(self) -> bool:
        return any(e.role in ("gate", "gate_up") for e in self.mlp)

    @property
    def fused_qkv(self) -> bool:
        return any(e.role == "qkv" for e in self.attention)

    @property
    def fused_gate_up(self) -> bool:
        return any(e.role == "gate_up" for e in self.mlp)

    def linears(self) -> tuple:
        return tuple(e for e in self.attention + self.mlp if e.op == "linear")

    @property
    def moe(self) -> bool:
        """A mixture-of-experts layer (its MLP block is one ``moe`` op)."""
        return any(e.op == "moe" for e in self.mlp)

    def rotary(self) -> bool:
        return any(e.op == "rotary" for e in self.attention)

    def summary(self) -> str:
        lin = ", ".join(f"{e.name}:{e.role}" for e in self.linears())
        parts = [self.model_class, self.norm_kind, lin]
        if self.parallel_residual:
            parts.append("parallel attention+MLP")
        if not self.rotary():
            parts.append("no rotary")
        return " · ".join(parts)


def _entry(d: dict) -> Entry:
    act = ""
    if d.get("op") == "act":
        act = d.get("activation", "")
    return Entry(op=d["op"], name=d["name"], role=d.get("role", ""), kind=d.get("kind", ""),
                 bias=bool(d.get("bias")), softcap=bool(d.get("softcap")),
                 gated=bool(d.get("gated")), activation=act,
                 decode_only="decode" in d.get("phases", ()) and "prefill" not in d.get("phases", ()))


_KERNELS: dict = {}
_DEVICE_KERNELS: dict = {}  # Architecture.key → {device kind: {phase: {op: kernels}}}
_NORMS: dict = {}  # Architecture.key → its layers' norm kind


def from_template(t: dict, source: str, key: str = "") -> Architecture:
    check_template(t)
    tw = t.get("traced_with", {})
    key = key or t["model_type"]
    _KERNELS[key] = t.get("kernels", {})
    _DEVICE_KERNELS[key] = t.get("device_kernels", {})
    _merged_kernels.cache_clear()
    _NORMS[key] = next((d.get("kind", "rmsnorm") for d in t["attention"] + t["mlp"] if d["op"] == "norm"),
                       "rmsnorm")
    return Architecture(
        model_type=t["model_type"], model_class=t.get("class", ""),
        attention_implementation=t.get("attention_implementation", "sdpa"),
        parallel_residual=bool(t.get("parallel_residual")),
        before_layers=tuple(_entry(d) for d in t["before_layers"]),
        attention=tuple(_entry(d) for d in t["attention"]),
        mlp=tuple(_entry(d) for d in t["mlp"]),
        after_layers=tuple(_entry(d) for d in t["after_layers"]),
        source=source,
        traced_with=f"transformers {tw.get('transformers', '?')}, torch {tw.get('torch', '?')}",
        key=key)


def check_template(t: dict) -> None:
    """A template that prices a layer: one attention, q/k/v (or qkv) and o, an MLP in and out."""
    if t.get("format") != FORMAT:
        raise UserError(f"architecture template format {t.get('format')!r} is not {FORMAT}")
    roles = {d.get("role") for d in t.get("attention", []) + t.get("mlp", []) if d.get("op") == "linear"}
    if not ({"q", "k", "v", "o"} <= roles or {"qkv", "o"} <= roles):
        raise UserError(f"{t.get('model_type')}: the traced attention has no q/k/v/o projections")
    moe = any(d.get("op") == "moe" for d in t.get("mlp", []))
    if not moe and (not (roles & set(MLP_IN_ROLES)) or "down" not in roles):
        raise UserError(f"{t.get('model_type')}: the traced MLP has no input and output projections")
    if sum(d.get("op") == "attention" for d in t.get("attention", [])) != 1:
        raise UserError(f"{t.get('model_type')}: the traced layer has no single attention op")


def kernels_as_units(t: dict, w: dict, batch: int, length: int) -> dict:
    """The traced kernels' tensor sizes as multiples of their op's size (a GEMM's output,
    attention's queries × head_dim, an elementwise op's rows × width), per phase."""
    out: dict = {}
    for ph, by_op in t.get("kernels", {}).items():
        m = batch * (length if ph == "prefill" else 1)
        units = _units(t, w, m, batch, ph, length)
        out[ph] = {}
        for name, ks in by_op.items():
            u = units.get(name)
            if not u:
                continue
            out[ph][name] = [{"aten": k["aten"],
                              "in": [[round(n / u, 4), dt] for n, dt in k["in"]],
                              "out": [[round(n / u, 4), dt] for n, dt in k["out"]]} for k in ks]
    return out


def _units(t: dict, w: dict, m: int, batch: int, phase: str, length: int) -> dict:
    units = {}
    rot = rotary_dim(w)
    for d in t["before_layers"] + t["attention"] + t["mlp"] + t["after_layers"]:
        op, name = d["op"], d["name"]
        if op == "moe":
            units.update(moe_units(w, m))
        elif op == "linear":
            n, _ = role_nk(d["role"], w)
            units[name] = (batch if name == "lm_head" else m) * n
        elif op == "attention":
            units[name] = batch * w["heads"] * (length if phase == "prefill" else 1) * w["head_dim"]
        elif op == "qk_norm":
            units[name] = m * (w["heads"] + w["kv_heads"]) * w["head_dim"]
        elif op == "rotary":
            units[name] = m * (w["heads"] + w["kv_heads"]) * rot
        elif op == "kv_write":
            units[name] = m * 2 * w["kv_dim"]
        elif op == "act":
            units[name] = m * w["inter"]
        elif name == "logit_softcap":
            units[name] = batch * w["vocab"]
        else:
            units[name] = m * w["hidden"]
    return units


def moe_units(w: dict, m: int) -> dict:
    """The sizes of an MoE block's ops for ``m`` tokens (pis_tui.pricing.engines.unit of the ops
    pis_tui.model.layer._moe_mlp builds): the router's and top-k's m × E, the dispatch's,
    combine's and experts' T·k routed rows × their width, the shared experts' m rows."""
    h, e, k, i = w["hidden"], w["experts"], w["top_k"], w["expert_inter"]
    si = w.get("shared_inter") or 0
    rows = m * k
    out = {"moe_router": m * e, "moe_topk": m * e, "moe_dispatch": rows * h,
           "experts_gate_up": rows * 2 * i, "experts_act": rows * i, "experts_down": rows * h,
           "moe_combine": rows * h}
    if si:
        out.update(shared_gate_up=m * 2 * si, shared_act=m * si, shared_down=m * h,
                   shared_expert_gate=m, shared_gate_mul=m * h)
    return out


def rotary_dim(w: dict) -> int:
    """Rotary width per head (a partial rotary factor rotates part of each head), even."""
    hd = w["head_dim"]
    return max(2, int(hd * w.get("rotary_fraction", 1.0)) // 2 * 2)


# ------------------------------------------------------------------ finding a template

def user_cache_dir() -> Path:
    base = os.environ.get("PIS_TUI_ARCH_CACHE")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pis-tui" / "architectures"


def _cache_key(cfg: dict) -> str:
    h = hashlib.sha256(json.dumps(structure_of(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return f"{cfg.get('model_type', 'unknown')}-{h}"


@lru_cache(maxsize=None)
def _shipped(model_type: str) -> Optional[dict]:
    path = profile_path("architectures", f"{model_type}.json")
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def shipped_types() -> list[str]:
    d = profile_path("architectures", "")
    return sorted(p.stem for p in Path(d).glob("*.json")) if Path(d).is_dir() else []


def architecture_for(cfg: dict, name: str, *, allow_trace: bool = True) -> Architecture:
    """The template for a config: shipped (same structural fields), else cached from an
    earlier trace, else traced now (a subprocess: this process never imports torch)."""
    mt = str(cfg.get("model_type", "unknown"))
    t = _shipped(mt)
    want = structure_of(cfg)
    if t is not None and all(t.get("structure", {}).get(k) == v for k, v in want.items()):
        return _from_cached(mt, "shipped")
    path = user_cache_dir() / f"{_cache_key(cfg)}.json"
    if path.is_file():
        try:
            return from_template(json.loads(path.read_text(encoding="utf-8")), str(path), path.stem)
        except (ValueError, UserError, KeyError):
            pass  # a damaged cache file: traced anew below
    if not allow_trace:
        raise UserError(f"{name}: no architecture template for model_type {mt!r} with these fields "
                        "yet (run `pis-tui ops` with this model once to trace it)")
    t = _trace_in_subprocess(cfg, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(t, sort_keys=True), encoding="utf-8")
        source = str(path)
    except OSError:
        source = "traced now (the cache folder is not writable)"
    return from_template(t, source, path.stem)


@lru_cache(maxsize=None)
def _from_cached(model_type: str, source: str) -> Architecture:
    return from_template(_shipped(model_type), source)


def _trace_in_subprocess(cfg: dict, name: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
        tmp = f.name
    try:
        proc = subprocess.run([sys.executable, "-m", "pis_tui.hf.architecture_trace", "--config", tmp],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    except subprocess.TimeoutExpired:
        raise UserError(f"{name}: tracing its architecture took over 5 minutes") from None
    finally:
        os.unlink(tmp)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error: ")]
        why = lines[-1][len("error: "):] if lines else (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"{name}: model_type {cfg.get('model_type')!r} is not supported: {why}")
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise UserError(f"{name}: tracing its architecture gave no template") from None


def template_norm(key: str) -> str:
    """An architecture's layer norm kind by :attr:`Architecture.key` (rmsnorm when unknown)."""
    if key not in _NORMS and _shipped(key) is not None:
        _from_cached(key, "shipped")
    return _NORMS.get(key, "rmsnorm")


def template_kernels(key: str, device: str = "") -> dict:
    """An architecture's traced eager kernels (:attr:`Architecture.key`): {phase: {op name:
    [kernel dict]}}; empty when none was loaded.  ``device`` (a device kind, ``cpu`` or
    ``gpu``): the ops traced for that device kind (``device_kernels``: an MoE block's on the
    CPU) replace the default trace's (the meta device's, which takes transformers' CUDA
    branches)."""
    return _merged_kernels(key, device)


@lru_cache(maxsize=None)
def _merged_kernels(key: str, device: str) -> dict:
    got = _KERNELS.get(key)
    if got is None:
        t = _shipped(key)
        got = _KERNELS[key] = (t or {}).get("kernels", {})
        _DEVICE_KERNELS[key] = (t or {}).get("device_kernels", {})
    own = _DEVICE_KERNELS.get(key, {}).get(device) if device else None
    if not own:
        return got
    return {ph: {**got.get(ph, {}), **own.get(ph, {})} for ph in dict.fromkeys(list(got) + list(own))}


def llama_default() -> Architecture:
    """Llama's template: what a spec built without one (tests, old callers) runs."""
    return _from_cached("llama", "shipped")

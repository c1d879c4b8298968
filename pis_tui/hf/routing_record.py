"""Recording how a real transformers mixture-of-experts model routes its tokens: per MoE layer,
the tokens each expert received, for a prefill forward and for decode steps over a KV cache,
as the histogram file ``--routing`` reads (``pis-tui-routing/1``).

Prefill and decode are recorded apart because they route differently: the tokens of one
sequence share much of their hidden state (attention mixes them), so a prefill forward crowds
them onto a few experts, while a decode step's tokens come from different sequences.

How the counts are taken.  In transformers 5 every MoE block routes first (its ``gate`` or
``router`` returns the top-k expert ids per token) and then calls its experts module as
``experts(hidden_states, top_k_index, top_k_weights)`` (the ``use_experts_implementation``
dispatch: ``grouped_mm``, ``batched_mm`` or the class's own loop).  A forward pre-hook on
``experts`` reads ``top_k_index`` — the ids the experts really run — and adds a ``bincount``
of them to the layer's counts: nothing is changed, the model's outputs are bit for bit the
same.  Where a class's experts forward takes no ``top_k_index`` (older or custom classes), the
documented fallback is a forward hook on the router: the integer [T, k] tensor of its output, or,
for a router that returns only its logits [T, E], their top-k (softmax keeps the order).  Ids
at or above E (expert parallelism's sentinel for a token routed to another rank) are not
counted.

torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import MeasureError, UserError

FORMAT = "pis-tui-routing/1"
PHASES = ("prefill", "decode")
#: names the MoE classes give their router (Qwen-MoE, OLMoE, Mixtral: gate; Granite-MoE: router)
ROUTER_NAMES = ("gate", "router")
#: files holding a model's weights in a local directory
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json",
                   "spiece.model")
EXPERTS_IMPL = "grouped_mm"  # transformers' grouped GEMM experts (never batched_mm)


# ====================================================================== finding the blocks


def _decoder_layers(model):
    """The decoder layers: the first ModuleList whose items hold an MoE block."""
    import torch.nn as nn

    for mod in model.modules():
        if isinstance(mod, nn.ModuleList) and any(_block_of(layer) is not None for layer in mod):
            return mod
    return None


def num_experts(experts) -> Optional[int]:
    """E of an experts module: its ``num_experts``, else the first dim of its 3-D weights, else
    its length (a ModuleList of experts)."""
    import torch.nn as nn

    n = getattr(experts, "num_experts", None)
    if isinstance(n, int) and n > 0:
        return n
    for p in experts.parameters(recurse=False):
        if p.dim() == 3:
            return int(p.shape[0])
    if isinstance(experts, nn.ModuleList) and len(experts):
        return len(experts)
    return None


def router_of(block):
    """The router of an MoE block: its child named ``gate`` or ``router``, else the one child
    (not the experts) whose weight has E rows."""
    experts = getattr(block, "experts", None)
    for name in ROUTER_NAMES:
        r = getattr(block, name, None)
        if r is not None and r is not experts and callable(r):
            return r
    e = num_experts(experts) if experts is not None else None
    for name, child in block.named_children():
        w = getattr(child, "weight", None)
        if name != "experts" and e and getattr(w, "dim", lambda: 0)() == 2 and w.shape[0] == e:
            return child
    return None


def _block_of(layer):
    """The decoder layer's MoE block: a direct child holding an ``experts`` submodule and a
    router (None for a dense layer)."""
    import torch.nn as nn

    for _name, child in layer.named_children():
        experts = getattr(child, "experts", None)
        if isinstance(experts, nn.Module) and router_of(child) is not None:
            return child
    return None


def moe_blocks(model) -> list:
    """``[(decoder layer index, MoE block), …]`` in layer order; dense layers among the MoE ones
    (``mlp_only_layers``, ``decoder_sparse_step``) are skipped.  Empty for a dense model."""
    layers = _decoder_layers(model)
    if layers is None:
        return []
    return [(i, b) for i, b in ((i, _block_of(layer)) for i, layer in enumerate(layers))
            if b is not None]


# ====================================================================== the recorder


def _takes_top_k_index(experts) -> Optional[int]:
    """The position of ``top_k_index`` among the experts forward's arguments (self excluded),
    or None when it takes none (the router fallback)."""
    try:
        params = list(inspect.signature(type(experts).forward).parameters)
    except (TypeError, ValueError):
        return None
    if "top_k_index" not in params:
        return None
    return params.index("top_k_index") - (1 if params and params[0] == "self" else 0)


class RoutingRecorder:
    """``with RoutingRecorder(model) as rec: …``: counts, per MoE layer, the tokens each expert
    is routed to while ``rec.phase`` is set ("prefill" or "decode"; None: not counted).

    ``method`` is "auto" (the experts pre-hook where the class takes ``top_k_index``, else the
    router), "experts" or "router" (forced, for checking one against the other)."""

    def __init__(self, model, method: str = "auto"):
        if method not in ("auto", "experts", "router"):
            raise ValueError(f"method {method!r}")
        self.blocks = moe_blocks(model)
        if not self.blocks:
            raise UserError(f"{type(model).__name__}: no mixture-of-experts block (a module "
                            "holding experts and a router) in any decoder layer: a dense model "
                            "has no routing to record")
        self.layer_ids = [i for i, _ in self.blocks]
        ex = {num_experts(b.experts) for _, b in self.blocks}
        if len(ex) != 1 or None in ex:
            raise MeasureError(f"{type(model).__name__}: the MoE layers disagree on their "
                               f"expert count ({sorted(map(str, ex))})")
        self.experts = ex.pop()
        self.method = method
        self.methods: list[str] = []
        self.phase: Optional[str] = None
        self.top_k: Optional[int] = None
        self._counts: dict = {}   # phase → list of per-layer LongTensors [E] (on the model's device)
        self._tokens: dict = {}   # phase → list of per-layer token counts
        self._handles: list = []

    # -------------------------------------------------------------- hooks
    def __enter__(self) -> "RoutingRecorder":
        for j, (_i, block) in enumerate(self.blocks):
            pos = _takes_top_k_index(block.experts)
            if self.method == "experts" and pos is None:
                raise MeasureError(f"{type(block.experts).__name__}: its forward takes no "
                                   "top_k_index")
            if pos is not None and self.method != "router":
                self._handles.append(block.experts.register_forward_pre_hook(
                    self._experts_hook(j, pos), with_kwargs=True))
                self.methods.append("experts")
            else:
                self._handles.append(router_of(block).register_forward_hook(self._router_hook(j)))
                self.methods.append("router")
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _experts_hook(self, j: int, pos: int):
        def hook(_mod, args, kwargs):
            if self.phase is None:
                return None
            idx = kwargs.get("top_k_index") if "top_k_index" in kwargs else args[pos]
            self._add(j, idx)
            return None
        return hook

    def _router_hook(self, j: int):
        def hook(_mod, _args, out):
            if self.phase is None:
                return None
            self._add(j, self._ids_of_router_output(out))
            return None
        return hook

    def _ids_of_router_output(self, out):
        """The [T, k] expert ids of a router's output: its integer tensor, else the top-k of
        its [T, E] logits."""
        import torch

        items = out if isinstance(out, (tuple, list)) else (out,)
        ints = [t for t in items if isinstance(t, torch.Tensor) and not t.is_floating_point()
                and t.dim() >= 1]
        if ints:
            return ints[-1]
        logits = [t for t in items if isinstance(t, torch.Tensor) and t.is_floating_point()
                  and t.shape[-1] == self.experts]
        if not logits or self.top_k is None:
            raise MeasureError("a router returned neither expert ids nor [tokens, experts] logits "
                               "(or top-k is unknown): cannot record its routing")
        return logits[0].reshape(-1, self.experts).topk(self.top_k, dim=-1).indices

    def _add(self, j: int, idx) -> None:
        import torch

        if not isinstance(idx, torch.Tensor) or idx.is_floating_point():
            raise MeasureError(f"MoE layer {self.layer_ids[j]}: the routed expert ids are not an "
                               "integer tensor")
        idx = idx.reshape(-1, idx.shape[-1]) if idx.dim() > 1 else idx.reshape(-1, 1)
        if self.top_k is None:
            self.top_k = int(idx.shape[1])
        E = self.experts
        # ids ≥ E (expert parallelism's sentinel) fall in the dropped last bin
        c = torch.bincount(idx.reshape(-1).clamp(min=0, max=E), minlength=E + 1)[:E]
        counts = self._counts.setdefault(self.phase, [None] * len(self.blocks))
        tokens = self._tokens.setdefault(self.phase, [0] * len(self.blocks))
        counts[j] = c if counts[j] is None else counts[j] + c
        tokens[j] += int(idx.shape[0])

    # -------------------------------------------------------------- results
    def counts(self, phase: str, *, required: bool = False) -> Optional[list]:
        """Per MoE layer, the tokens each expert got in ``phase`` (lists of ints), or None
        (``required``: a MeasureError) when none was counted."""
        got = self._counts.get(phase)
        if got is None:
            if required:
                raise MeasureError(f"{phase}: no MoE layer routed a token while recording (the "
                                   "hooks saw no experts call)")
            return None
        missing = [self.layer_ids[j] for j, c in enumerate(got) if c is None]
        if missing:
            raise MeasureError(f"MoE layers {missing} routed no tokens in {phase}: the hooks "
                               "missed them")
        return [[int(v) for v in c.cpu().tolist()] for c in got]

    def tokens(self, phase: str) -> int:
        got = self._tokens.get(phase) or [0]
        if len(set(got)) != 1:
            raise MeasureError(f"{phase}: the MoE layers saw different token counts {got}")
        return got[0]

    def reset(self) -> None:
        self._counts.clear()
        self._tokens.clear()


# ====================================================================== running the model


def _cache_kw(model) -> str:
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _model_device(model):
    return next(model.parameters()).device


def _prefill(model, rec: RoutingRecorder, ids) -> None:
    """One forward over ``ids`` [B, L] (no KV cache, the last position's logits only)."""
    import torch

    kw = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(
        type(model).forward).parameters else {}
    rec.phase = "prefill"
    try:
        with torch.no_grad():
            model(input_ids=ids.to(_model_device(model)), use_cache=False, **kw)
    finally:
        rec.phase = None


def _decode(model, rec: RoutingRecorder, prompts, steps: int) -> None:
    """Each sequence's prompt ([B, P]) into a KV cache (not counted), then ``steps`` decode
    steps of one token per sequence, each the greedy next token (as ``generate`` does)."""
    import torch
    from transformers import DynamicCache

    prompts = prompts.to(_model_device(model))
    cache = DynamicCache(config=model.config)
    kw = _cache_kw(model)
    with torch.no_grad():
        out = model(input_ids=prompts, use_cache=True, **{kw: cache})
        nxt = out.logits[:, -1:].argmax(-1)
        rec.phase = "decode"
        try:
            for _ in range(steps):
                out = model(input_ids=nxt, use_cache=True, **{kw: cache})
                nxt = out.logits[:, -1:].argmax(-1)
        finally:
            rec.phase = None


def record(model, *, prefill_ids=None, decode_prompts=None, decode_steps: int = 4,
           model_name: str = "", source: str = "", text: str = "",
           method: str = "auto") -> dict:
    """Record ``model``'s routing: prefill = one forward over ``prefill_ids`` [B, L]; decode =
    ``decode_steps`` steps over a KV cache after each row of ``decode_prompts`` [B, P] (its
    prompt's own routing is not counted).  Either may be None (that phase is left out).
    Returns the ``pis-tui-routing/1`` dict (checked by :func:`check`)."""
    if prefill_ids is None and decode_prompts is None:
        raise UserError("nothing to record: give prefill ids, decode prompts or both")
    if decode_prompts is not None and decode_steps < 1:
        raise UserError(f"decode steps must be positive, got {decode_steps}")
    was_training = model.training
    model.eval()
    phases: dict = {}
    try:
        with RoutingRecorder(model, method=method) as rec:
            if prefill_ids is not None:
                if prefill_ids.dim() != 2 or 0 in prefill_ids.shape:
                    raise UserError("prefill ids must be [batch, length], got "
                                    f"{list(prefill_ids.shape)}")
                _prefill(model, rec, prefill_ids)
                phases["prefill"] = {"layers": rec.counts("prefill", required=True),
                                     "tokens": rec.tokens("prefill"),
                                     "sequences": int(prefill_ids.shape[0])}
            if decode_prompts is not None:
                if decode_prompts.dim() != 2 or 0 in decode_prompts.shape:
                    raise UserError("decode prompts must be [batch, length], got "
                                    f"{list(decode_prompts.shape)}")
                _decode(model, rec, decode_prompts, decode_steps)
                phases["decode"] = {"layers": rec.counts("decode", required=True),
                                    "tokens": rec.tokens("decode"),
                                    "sequences": int(decode_prompts.shape[0]),
                                    "steps": int(decode_steps)}
    finally:
        model.train(was_training)
    cfg = model.config
    first = phases.get("prefill") or phases["decode"]
    data = {"format": FORMAT,
            "model": model_name or str(getattr(cfg, "_name_or_path", "") or type(model).__name__),
            "model_type": str(getattr(cfg, "model_type", "")),
            "experts": rec.experts, "top_k": rec.top_k, "moe_layers": len(rec.blocks),
            "layer_ids": rec.layer_ids,
            "source": source or "recorded from transformers' "
                                f"{type(model).__name__}",
            "text": text,
            "layers": first["layers"],
            "phases": phases}
    check(data)
    return data


# ====================================================================== the file


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check(data: Any, where: str = "routing") -> dict:
    """``data`` if it is a valid ``pis-tui-routing/1`` dict; else a one-line UserError naming
    what is wrong (``where``: the file, for the message)."""
    def bad(msg: str):
        raise UserError(f"{where}: {msg}")

    if not isinstance(data, dict):
        bad("a routing record is a JSON object")
    if data.get("format") != FORMAT:
        bad(f"format {data.get('format')!r}: expected {FORMAT!r}")
    for k in ("model", "model_type", "source", "text"):
        if not isinstance(data.get(k), str):
            bad(f"{k!r} must be a string")
    E, k, n = data.get("experts"), data.get("top_k"), data.get("moe_layers")
    if not _is_int(E) or E < 1:
        bad(f"experts={E!r}: a positive integer")
    if not _is_int(k) or not 1 <= k <= E:
        bad(f"top_k={k!r}: an integer within 1…{E}")
    if not _is_int(n) or n < 1:
        bad(f"moe_layers={n!r}: a positive integer")
    ids = data.get("layer_ids")
    if ids is not None and (not isinstance(ids, list) or len(ids) != n
                            or not all(_is_int(i) and i >= 0 for i in ids)
                            or any(a >= b for a, b in zip(ids, ids[1:]))):
        bad(f"layer_ids must be {n} increasing layer indices")
    phases = data.get("phases")
    if not isinstance(phases, dict) or not phases:
        bad("'phases' must hold prefill, decode or both")
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        bad(f"unknown phase {unknown[0]!r} (prefill, decode)")
    for name, ph in phases.items():
        if not isinstance(ph, dict):
            bad(f"phase {name!r} must be an object")
        for key in ("tokens", "sequences") + (("steps",) if name == "decode" else ()):
            v = ph.get(key)
            if not _is_int(v) or v < 1:
                bad(f"{name}: {key}={v!r}: a positive integer")
        T = ph["tokens"]
        if name == "decode" and T != ph["sequences"] * ph["steps"]:
            bad(f"decode: {T} tokens is not {ph['sequences']} sequences × {ph['steps']} steps")
        _check_layers(ph.get("layers"), E, n, T * k, T, f"{name}", bad)
    first = phases.get("prefill") or phases.get("decode")
    if data.get("layers") != first["layers"]:
        bad("'layers' must equal the prefill phase's layers (the decode phase's where there is "
            "no prefill)")
    return data


def _check_layers(layers, E: int, n: int, total: int, T: int, name: str, bad) -> None:
    if not isinstance(layers, list) or len(layers) != n:
        bad(f"{name}: 'layers' must hold {n} lists (one per MoE layer)")
    for i, counts in enumerate(layers):
        if not isinstance(counts, list) or len(counts) != E:
            bad(f"{name}: layer {i} has {len(counts) if isinstance(counts, list) else 'no'} "
                f"counts, not {E}")
        if not all(_is_int(c) and 0 <= c <= T for c in counts):
            bad(f"{name}: layer {i}: counts must be integers within 0…{T} (the tokens)")
        if sum(counts) != total:
            bad(f"{name}: layer {i}: counts sum to {sum(counts)}, not tokens × top_k = {total}")


def dumps(data: dict) -> str:
    """The record as JSON text: two-space indents, each layer's counts on one line."""
    def fmt(v, ind: int) -> str:
        pad = "  " * (ind + 1)
        if isinstance(v, dict):
            if not v:
                return "{}"
            items = [f"{pad}{json.dumps(k)}: {fmt(x, ind + 1)}" for k, x in v.items()]
            return "{\n" + ",\n".join(items) + "\n" + "  " * ind + "}"
        if isinstance(v, list) and v and all(isinstance(x, list) for x in v):
            return "[\n" + ",\n".join(pad + json.dumps(x) for x in v) + "\n" + "  " * ind + "]"
        return json.dumps(v, ensure_ascii=False)

    return fmt(data, 0) + "\n"


def write(data: dict, path) -> Path:
    """Check ``data`` and write it to ``path`` (one-line UserError when it cannot be)."""
    check(data)
    p = Path(path).expanduser()
    try:
        p.write_text(dumps(data), encoding="utf-8")
    except OSError as e:
        raise UserError(f"{p}: cannot write ({e.strerror or type(e).__name__})") from None
    return p


def load(path) -> dict:
    """A routing record read from ``path`` and checked."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{p}: cannot read the routing record ({e.strerror})") from None
    except ValueError as e:
        raise UserError(f"{p}: malformed JSON ({e})") from None
    return check(data, str(p))


def phase_stats(phase: dict) -> dict:
    """What a phase's counts say: per layer max/mean tokens per expert (mean over layers, and
    their range), the experts a layer never used (summed over layers), the layers' count."""
    ratios, unused = [], 0
    for counts in phase["layers"]:
        mean = sum(counts) / len(counts)
        ratios.append(max(counts) / mean if mean else 0.0)
        unused += sum(1 for c in counts if c == 0)
    n = len(ratios)
    return {"tokens": phase["tokens"], "max_over_mean": sum(ratios) / n,
            "max_over_mean_min": min(ratios), "max_over_mean_max": max(ratios),
            "unused": unused, "slots": n * len(phase["layers"][0]), "layers": n}


def summary_line(name: str, phase: dict) -> str:
    s = phase_stats(phase)
    shape = (f"{phase['sequences']} × {phase['steps']} steps" if name == "decode"
             else f"{phase['sequences']} × {phase['tokens'] // phase['sequences']}")
    return (f"{name}: {s['tokens']} tokens ({shape}): max/mean tokens per expert "
            f"{s['max_over_mean']:.2f} over layers ({s['max_over_mean_min']:.2f}–"
            f"{s['max_over_mean_max']:.2f}); experts never used {s['unused']} of {s['slots']} "
            f"(layer × expert)")


# ====================================================================== the model


def has_weights(path) -> bool:
    p = Path(path).expanduser()
    return p.is_dir() and (any((p / f).is_file() for f in WEIGHT_FILES)
                           or any(p.glob("*.safetensors")))


def has_tokenizer(path) -> bool:
    p = Path(path).expanduser()
    return p.is_dir() and any((p / f).is_file() for f in TOKENIZER_FILES)


def moe_config_dict(ref: str, layers: Optional[int] = None) -> tuple[dict, Any]:
    """The raw config of a preset, config.json or directory with ``num_hidden_layers`` reduced
    to ``layers`` (``mlp_only_layers`` kept below it), and its spec; a dense model is refused."""
    from ..model.moe import moe_config
    from .config import raw_config

    raw, spec = raw_config(ref)
    raw = dict(raw)
    total = raw.get("num_hidden_layers")
    if layers is not None:
        if not _is_int(total):
            raise UserError(f"{ref}: the config has no num_hidden_layers to reduce with --layers")
        if layers > total:
            raise UserError(f"--layers {layers}: {spec.name} has {total} layers")
        raw["num_hidden_layers"] = layers
        if isinstance(raw.get("mlp_only_layers"), list):
            raw["mlp_only_layers"] = [i for i in raw["mlp_only_layers"] if i < layers]
    moe = moe_config(raw, spec.name)
    if moe is None:
        raise UserError(f"{spec.name}: a dense model (no experts in its config): there is no "
                        "routing to record")
    if moe.moe_layers < 1:
        raise UserError(f"{spec.name}: none of its {raw.get('num_hidden_layers')} layers has an "
                        "MoE block" + (" (raise --layers)" if layers else ""))
    return raw, spec


def build_random(raw: dict, *, seed: int = 0, dtype: str = "fp32", device: str = "cpu"):
    """transformers' class for the config dict ``raw`` with its own random initialisation
    (seeded: ``initializer_range`` normals), the grouped-GEMM experts, eval mode."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .config import torch_dtype

    cfg = {k: v for k, v in raw.items() if not k.startswith("_") and k not in (
        "architectures", "transformers_version", "torch_dtype", "dtype", "auto_map",
        "quantization_config", "model_type", "layer_types")}
    vocab = cfg.get("vocab_size")
    for k in ("pad_token_id", "bos_token_id", "eos_token_id"):
        v = cfg.get(k)
        if isinstance(vocab, int) and isinstance(v, int) and not 0 <= v < vocab:
            cfg[k] = None
    mt = raw.get("model_type")
    try:
        config = AutoConfig.for_model(mt, **cfg)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot build a {mt!r} config ({_first_line(e)})") from None
    torch.manual_seed(seed)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype),
                                                     experts_implementation=EXPERTS_IMPL)
    except (ValueError, KeyError, TypeError, AttributeError, ImportError) as e:
        raise UserError(f"transformers cannot build a {mt!r} causal LM with grouped_mm experts "
                        f"({_first_line(e)})") from None
    return model.eval()


def load_pretrained(path, *, layers: Optional[int] = None, dtype: str = "fp32",
                    device: str = "cpu"):
    """A local model directory's real weights (offline), the grouped-GEMM experts, eval mode;
    ``layers``: only the first ``layers`` decoder layers."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from .config import torch_dtype

    hf_logging.disable_progress_bar()
    kw = {"num_hidden_layers": layers} if layers is not None else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True,
                                                     dtype=torch_dtype(dtype),
                                                     experts_implementation=EXPERTS_IMPL, **kw)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds here
        raise UserError(f"{path}: cannot load the model offline ({_first_line(e)})") from None
    return model.to(torch.device(device)).eval()


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def random_ids(shape: Sequence[int], vocab: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, tuple(shape), generator=g)

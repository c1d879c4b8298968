"""The wrapper modules validate builds pruned models from (created on first use: torch.nn is
imported lazily): low-rank linears, half layers, SliceGPT-like mapped layers, token-routed
layers and the row cache of routed decode; and, for tensor parallelism (``validate --tp``),
the all-reduce after a row-parallel linear, the vocab-parallel embedding and lm_head."""

from __future__ import annotations

# ------------------------------------------------------------------ wrapper modules
# torch.nn is imported lazily: the classes are created on first use.

_CLASSES: dict = {}


def _get_cache(kw: dict):
    for name in ("cache", "past_key_values", "past_key_value"):
        if kw.get(name) is not None:
            return name, kw[name]
    return None, None


def _dtype_of(module):
    """The dtype of a module's weights (the wrappers' own linears must match it)."""
    return next(module.parameters()).dtype


def _make_classes() -> None:
    """Create the wrapper classes (torch imported here, on first use) into _CLASSES."""
    if _CLASSES:
        return
    _CLASSES.update(LowRank=_low_rank_class(), HalfLayer=_half_layer_class(),
                    MappedLayer=_mapped_layer_class(), RoutedLayer=_routed_layer_class(),
                    RowCache=RowCache, **_tensor_parallel_classes())


def _low_rank_class():
    """The low-rank linear: two GEMMs through rank r."""
    import torch

    nn = torch.nn

    class LowRank(nn.Module):
        """W[N,K] → B[N,r]·A[r,K]: two GEMMs through rank r (bias kept on the second)."""

        def __init__(self, lin, rank: int):
            super().__init__()
            dt = lin.weight.dtype  # the model's dtype (bf16 on a GPU), not torch's default
            self.A = nn.Linear(lin.in_features, rank, bias=False, dtype=dt)
            self.B = nn.Linear(rank, lin.out_features, bias=lin.bias is not None, dtype=dt)
            self.rank = rank
            self.in_features, self.out_features = lin.in_features, lin.out_features

        def forward(self, x):
            return self.B(self.A(x))

    return LowRank


#: a decoder layer's attention-block modules (Gemma's norm of the attention output included)
ATTN_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm")


def mlp_name(layer) -> str:
    """The attribute of a decoder layer's MLP block: ``mlp``, or Granite-MoE's
    ``block_sparse_moe``."""
    return "block_sparse_moe" if hasattr(layer, "block_sparse_moe") else "mlp"


def mlp_parts(layer) -> tuple:
    """A decoder layer's MLP-block modules: Gemma 2/3 norm before and after the MLP, the Llama
    layout before it (its ``post_attention_layernorm``)."""
    if hasattr(layer, "pre_feedforward_layernorm"):
        return ("pre_feedforward_layernorm", "mlp", "post_feedforward_layernorm")
    return ("post_attention_layernorm", mlp_name(layer))


def moe_linears(model) -> dict:
    """The nn.Linear weights of an MoE model's decoder a linear-replacing family acts on, by
    name: each layer's attention q/k/v/o, a dense layer's gate/up/down and the shared
    expert's (Qwen2-MoE); the router and the routed experts (3-D weights) are not linears any
    family prunes."""
    import torch.nn as nn

    from ..hf.layout import ATTN_LINEARS, MLP_LINEARS

    out = {}
    for i, layer in enumerate(model.model.layers):
        attn = getattr(layer, "self_attn", None)
        block = getattr(layer, mlp_name(layer), None)
        parts = [("self_attn", attn, ATTN_LINEARS), (mlp_name(layer), block, MLP_LINEARS),
                 (f"{mlp_name(layer)}.shared_expert", getattr(block, "shared_expert", None),
                  MLP_LINEARS)]
        for part, mod, names in parts:
            for n in names:
                lin = getattr(mod, n, None) if mod is not None else None
                if isinstance(lin, nn.Linear):
                    out[f"layers.{i}.{part}.{n}"] = lin
    return out


def _scaled(layer, branch):
    """Granite's residual multiplier on a branch (the layer's own forward scales both)."""
    mult = getattr(layer, "residual_multiplier", None)
    return branch * mult if mult is not None else branch


def attn_branch(layer, x, **kw):
    """What the attention block adds to the residual, as the layer's own forward computes it:
    ``self_attn(input_layernorm(x))``, then Gemma's ``post_attention_layernorm`` (Granite:
    times its ``residual_multiplier``)."""
    a, _ = layer.self_attn(hidden_states=layer.input_layernorm(x), **kw)
    if hasattr(layer, "pre_feedforward_layernorm"):
        a = layer.post_attention_layernorm(a)
    return _scaled(layer, a)


def mlp_branch(layer, x):
    """What the MLP block adds to the residual: the Llama layout's ``mlp(post_attention_layernorm
    (x))`` (an MoE block in its place; Granite: times its ``residual_multiplier``), Gemma's
    ``post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))``."""
    if hasattr(layer, "pre_feedforward_layernorm"):
        return layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(x)))
    return _scaled(layer, getattr(layer, mlp_name(layer))(layer.post_attention_layernorm(x)))


def _half_layer_class():
    """The decoder layer that keeps only its attention or only its MLP block."""
    import torch

    nn = torch.nn

    class HalfLayer(nn.Module):
        """A decoder layer of which only the attention or only the MLP block is kept."""

        def __init__(self, layer, keep_attn: bool, keep_mlp: bool):
            super().__init__()
            self.keep_attn, self.keep_mlp = keep_attn, keep_mlp
            for name in (ATTN_PARTS if keep_attn else ()) + (mlp_parts(layer) if keep_mlp else ()):
                if hasattr(layer, name):
                    setattr(self, name, getattr(layer, name))
            if not keep_attn and hasattr(layer, "pre_feedforward_layernorm"):
                self.pre_feedforward_layernorm = layer.pre_feedforward_layernorm  # marks the layout
            if hasattr(layer, "residual_multiplier"):  # Granite
                self.residual_multiplier = layer.residual_multiplier

        def forward(self, hidden_states, **kw):
            x = hidden_states
            if self.keep_attn:
                x = x + attn_branch(self, x, **kw)
            if self.keep_mlp:
                x = x + mlp_branch(self, x)
            return x

    return HalfLayer


def _mapped_layer_class():
    """The SliceGPT-like layer: a residual map around each sublayer."""
    import torch

    nn = torch.nn

    class MappedLayer(nn.Module):
        """SliceGPT-like layer: the residual of each sublayer goes through an H'×H' mapping."""

        def __init__(self, layer, hidden: int):
            super().__init__()
            self.inner = layer
            dt = _dtype_of(layer)
            self.attn_map = nn.Linear(hidden, hidden, bias=False, dtype=dt)
            self.mlp_map = nn.Linear(hidden, hidden, bias=False, dtype=dt)

        tp_slice = None  # tensor parallelism: this rank's slice of the residual stream

        def forward(self, hidden_states, **kw):
            inner = self.inner
            x = hidden_states
            a = attn_branch(inner, x, **kw)
            if self.tp_slice is not None:  # row-parallel maps, summed into one all-reduce
                import torch.distributed as dist

                sl = self.tp_slice
                x = self.attn_map(x[..., sl]) + a
                dist.all_reduce(x)
                y = self.mlp_map(x[..., sl]) + mlp_branch(inner, x)
                dist.all_reduce(y)
                return y
            x = self.attn_map(x) + a
            return self.mlp_map(x) + mlp_branch(inner, x)

    return MappedLayer


class RowCache:
    """Stands in for the KV cache while a routed subset of the batch decodes: writes the
    kept rows' new K/V at the decode position and returns those rows' caches."""

    def __init__(self, cache, rows, pos: int):
        self.cache, self.rows, self.pos = cache, rows, pos

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        layer = self.cache.layers[layer_idx]
        if self.pos >= layer.keys.shape[2]:
            # a sliding-window layer past its window: the kept rows roll by one and the new
            # token takes the last slot, as transformers' full sliding cache does every step
            for store, new in ((layer.keys, key_states), (layer.values, value_states)):
                rolled = store.index_select(0, self.rows).roll(-1, dims=2)
                rolled[:, :, -1] = new[:, :, 0]
                store.index_copy_(0, self.rows, rolled)
        else:
            layer.keys[self.rows, :, self.pos] = key_states[:, :, 0]
            layer.values[self.rows, :, self.pos] = value_states[:, :, 0]
        return layer.keys.index_select(0, self.rows), layer.values.index_select(0, self.rows)


def _routed_layer_class():
    """The dynamic-depth layer: tokens (prefill) or rows (decode) routed through each sublayer."""
    import torch

    from ..model.layer import kept_tokens as _kept_tokens

    nn = torch.nn

    class RoutedLayer(nn.Module):
        """Dynamic depth (mixture-of-depths-like token routing) around a decoder layer."""

        def __init__(self, layer, hidden: int, s: float, state: dict, run_attn: bool, run_mlp: bool):
            super().__init__()
            self.inner = layer
            self.s = s
            self.state = state
            dt = _dtype_of(layer)
            self.attn_router = nn.Linear(hidden, 1, bias=False, dtype=dt)
            self.mlp_router = nn.Linear(hidden, 1, bias=False, dtype=dt)
            self.plan = {"attn": run_attn, "mlp": run_mlp}
            name = mlp_name(layer)
            if hasattr(getattr(layer, name, None), "experts"):
                # an MoE block shown as this layer's child too (the same module, not a copy),
                # where a routing recorder looks for it
                setattr(self, name, getattr(layer, name))
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
            return attn_branch(self.inner, x, **kw)

        def _mlp(self, x):
            return mlp_branch(self.inner, x)

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

    return RoutedLayer


def _tensor_parallel_classes():
    """The tensor-parallel wrappers: the all-reduce after a row-parallel linear, the
    vocab-parallel embedding and lm_head."""
    import torch

    nn = torch.nn

    class AllReduceAfter(nn.Module):
        """A row-parallel linear: this rank's partial output, summed over the ranks."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.in_features = getattr(inner, "in_features", None)
            self.out_features = getattr(inner, "out_features", None)

        def forward(self, x):
            import torch.distributed as dist

            y = self.inner(x)
            dist.all_reduce(y)
            return y

    class VocabParallelEmbedding(nn.Module):
        """This rank's rows [start, start + rows) of the embedding table: ids outside them
        look up nothing (zeros), and the partial embeddings are summed over the ranks."""

        def __init__(self, emb, start: int):
            super().__init__()
            self.emb, self.start, self.rows = emb, start, emb.num_embeddings
            self.weight = emb.weight  # tied lm_heads and transformers look for it here

        def forward(self, ids):
            import torch.distributed as dist

            local = ids - self.start
            keep = (local >= 0) & (local < self.rows)
            out = self.emb(local.clamp(0, self.rows - 1)) * keep.unsqueeze(-1).to(self.weight.dtype)
            dist.all_reduce(out)
            return out

    class ParallelLMHead(nn.Module):
        """This rank's share of the logits, gathered from every rank (the full vocabulary)."""

        def __init__(self, head, vocab: int):
            super().__init__()
            self.head, self.vocab = head, vocab
            self.weight = head.weight

        def forward(self, x):
            import torch.distributed as dist

            part = self.head(x).contiguous()
            parts = [torch.empty_like(part) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, part)
            return torch.cat(parts, dim=-1)[..., : self.vocab]

    return dict(AllReduceAfter=AllReduceAfter, VocabParallelEmbedding=VocabParallelEmbedding,
                ParallelLMHead=ParallelLMHead)


def low_rank_linear(lin, rank):
    _make_classes()
    return _CLASSES["LowRank"](lin, rank)


def half_layer(layer, keep_attn, keep_mlp):
    _make_classes()
    return _CLASSES["HalfLayer"](layer, keep_attn, keep_mlp)


def mapped_layer(layer, hidden):
    _make_classes()
    return _CLASSES["MappedLayer"](layer, hidden)


def routed_layer(layer, hidden, s, state, run_attn, run_mlp):
    _make_classes()
    return _CLASSES["RoutedLayer"](layer, hidden, s, state, run_attn, run_mlp)


def tensor_parallel(built, rank: int, tp: int) -> None:
    """Make a materialised rank model (built with one rank's config: its heads, KV heads,
    channels and vocabulary rows) a tensor-parallel rank of ``tp``: an all-reduce after every
    row-parallel linear (o_proj, down_proj; a SliceGPT-like layer sums its row-parallel
    residual maps into the same all-reduce instead), a vocab-parallel embedding and lm_head
    (the logits all-gathered).  Needs an initialised torch.distributed process group."""
    _make_classes()
    import torch

    nn = torch.nn
    m = built.model
    vpr = m.model.embed_tokens.num_embeddings
    mapped = [mod for mod in m.modules() if type(mod).__name__ == "MappedLayer"]
    skip = set()
    h = built.dims.hidden_size
    share = h // tp
    for layer in mapped:
        dt = _dtype_of(layer)
        layer.attn_map = nn.Linear(share, h, bias=False, dtype=dt, device=layer.attn_map.weight.device)
        layer.mlp_map = nn.Linear(share, h, bias=False, dtype=dt, device=layer.mlp_map.weight.device)
        with torch.no_grad():
            for lin in (layer.attn_map, layer.mlp_map):
                lin.weight.normal_(0, 0.02)
        layer.tp_slice = slice(rank * share, (rank + 1) * share)
        skip.update(id(x) for x in (layer.inner.self_attn, layer.inner.mlp))
    for mod in list(m.modules()):
        if id(mod) in skip:
            continue
        if hasattr(mod, "q_proj") and hasattr(mod, "o_proj"):
            mod.o_proj = _CLASSES["AllReduceAfter"](mod.o_proj)
        elif hasattr(mod, "down_proj") and hasattr(mod, "gate_proj"):
            mod.down_proj = _CLASSES["AllReduceAfter"](mod.down_proj)
    m.model.embed_tokens = _CLASSES["VocabParallelEmbedding"](m.model.embed_tokens, rank * vpr)
    m.lm_head = _CLASSES["ParallelLMHead"](m.lm_head, built.spec.vocab_size)
    built.notes.append(f"tensor parallel rank {rank} of {tp}: column-parallel q/k/v/gate/up, "
                       "row-parallel o/down with an all-reduce, vocab-parallel embedding and "
                       "lm_head (torch.distributed)")

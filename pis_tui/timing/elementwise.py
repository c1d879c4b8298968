"""Elementwise and routing cases, each written the way transformers' modules run them."""

from __future__ import annotations

import math

from ..errors import MeasureError
from ..model.ops import ACTIVATIONS, Elementwise, dtype_bytes
from .case import Case, copies_for, rand_tensor, views
from .device import DeviceContext, torch_dtype, torch_module
from .quantized import act_quant_case


class _Inputs:
    """What every elementwise case starts from: the op, the device, torch, and the op's input
    ``x`` (rows × width)."""

    def __init__(self, op: Elementwise, ctx: DeviceContext, check: bool, torch, dt, x):
        self.op, self.ctx, self.check, self.torch, self.dt, self.x = op, ctx, check, torch, dt, x
        self.F = torch.nn.functional
        self.rows, self.width = op.rows, op.width


def elementwise_case(op: Elementwise, ctx: DeviceContext, check: bool) -> Case:
    torch = torch_module()
    dt = torch_dtype(op.dtype)
    x = rand_tensor(ctx, (op.rows, op.width), op.dtype, seed=5)
    build = _CASES.get(op.kind)
    if build is None:
        raise MeasureError(f"unknown elementwise kind {op.kind!r}")
    return build(_Inputs(op, ctx, check, torch, dt, x))


def _rmsnorm_case(a: _Inputs) -> Case:
    torch, x, dt = a.torch, a.x, a.dt
    w = rand_tensor(a.ctx, (a.width,), a.op.dtype, seed=6)
    eps = 1e-6

    def fn(i):  # transformers' LlamaRMSNorm
        h = x.to(torch.float32)
        var = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(var + eps)
        return w * h.to(dt)

    def ref():
        xd = x.double()
        return w.double() * (xd / torch.sqrt(xd.pow(2).mean(-1, keepdim=True) + eps))
    return Case(fn, ref)


def _rotary_case(a: _Inputs) -> Case:
    torch, ctx, op, dt = a.torch, a.ctx, a.op, a.dt
    rows, width = a.rows, a.width
    hd = op.extra or (128 if width % 128 == 0 else 64)
    if width % hd or hd % 2:
        raise MeasureError(f"{op.key()}: width {width} is not a multiple of head_dim {hd}")
    heads = width // hd
    pos = torch.arange(rows, device=ctx.torch_device, dtype=torch.float32)
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, device=ctx.torch_device, dtype=torch.float32) / hd))
    freqs = pos[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dt)[:, None, :], emb.sin().to(dt)[:, None, :]
    xh = a.x.view(rows, heads, hd)

    def rotate_half(t):
        t1, t2 = t[..., : t.shape[-1] // 2], t[..., t.shape[-1] // 2:]
        return torch.cat((-t2, t1), dim=-1)

    def fn(i):  # transformers' apply_rotary_pos_emb on one of q/k
        return xh * cos + rotate_half(xh) * sin

    def ref():
        xd = xh.double()
        c, s = emb.cos().double()[:, None, :], emb.sin().double()[:, None, :]
        x1, x2 = xd[..., : hd // 2], xd[..., hd // 2:]
        return xd * c + torch.cat((-x2, x1), -1) * s
    return Case(fn, ref)


def _silu_mul_case(a: _Inputs) -> Case:
    torch, F, x = a.torch, a.F, a.x
    up = rand_tensor(a.ctx, (a.rows, a.width), a.op.dtype, seed=7)
    return Case(lambda i: F.silu(x) * up,
                lambda: (x.double() * torch.sigmoid(x.double())) * up.double())


def _residual_add_case(a: _Inputs) -> Case:
    x = a.x
    r = rand_tensor(a.ctx, (a.rows, a.width), a.op.dtype, seed=8)
    return Case(lambda i: r + x, lambda: r.double() + x.double())


def _bias_add_case(a: _Inputs) -> Case:
    x = a.x
    bias = rand_tensor(a.ctx, (a.width,), a.op.dtype, seed=9)
    return Case(lambda i: x + bias, lambda: x.double() + bias.double())


def _embedding_case(a: _Inputs) -> Case:
    torch, F, ctx, op = a.torch, a.F, a.ctx, a.op
    vocab = op.extra or 32000
    table = views(ctx, op.dtype, (vocab, a.width), 1, check=a.check)[0]
    g = torch.Generator(device=ctx.torch_device).manual_seed(12)
    ids = torch.randint(0, vocab, (a.rows,), generator=g, device=ctx.torch_device)
    return Case(lambda i: F.embedding(ids, table), lambda: table.double()[ids])


def _kv_write_case(a: _Inputs) -> Case:
    torch, ctx, x, rows = a.torch, a.ctx, a.x, a.rows
    cap = max(a.op.extra, 2 * rows)
    cache = torch.zeros((cap, a.width), dtype=a.dt, device=ctx.torch_device)
    posn = torch.arange(cap - rows, cap, device=ctx.torch_device)

    def fn(i):  # transformers' StaticCache.update: index_copy_ along the position dim
        return cache.index_copy_(0, posn, x)

    def ref():
        c = cache.double().clone()
        c[posn] = x.double()
        return c
    return Case(fn, ref)


def _topk_case(a: _Inputs) -> Case:
    torch, x, width = a.torch, a.x, a.width
    k = min(a.op.extra or max(1, width // 8), width)

    def fn(i):  # router top-k (values and indices, as a MoE/skip router does)
        return torch.topk(x, k, dim=-1)

    return Case(fn, lambda: torch.topk(x.double(), k, dim=-1).values, post=lambda out: out.values)


def _gather_case(a: _Inputs) -> Case:
    torch, ctx, op, check = a.torch, a.ctx, a.op, a.check
    rows, width = a.rows, a.width
    src_rows = max(op.extra, 2 * rows)
    if op.extra > 0:
        # a source of `extra` rows named by the op is state (a KV cache) that a forward
        # reads from memory, not a just-written activation: rotate it past the cache
        srcs = views(ctx, op.dtype, (src_rows, width),
                     copies_for(ctx, src_rows * width * dtype_bytes(op.dtype), check),
                     check=check)
    else:
        srcs = [rand_tensor(ctx, (src_rows, width), op.dtype, seed=13)]
    g = torch.Generator(device=ctx.torch_device).manual_seed(14)
    idx = torch.randperm(src_rows, generator=g, device=ctx.torch_device)[:rows].sort().values
    n_src = len(srcs)
    return Case(lambda i: srcs[i % n_src].index_select(0, idx), lambda: srcs[0].double()[idx],
                copies=n_src)


def _scatter_case(a: _Inputs) -> Case:
    torch, ctx, x, rows = a.torch, a.ctx, a.x, a.rows
    dst_rows = max(a.op.extra, 2 * rows)
    dst = rand_tensor(ctx, (dst_rows, a.width), a.op.dtype, seed=15)
    g = torch.Generator(device=ctx.torch_device).manual_seed(16)
    idx = torch.randperm(dst_rows, generator=g, device=ctx.torch_device)[:rows].sort().values

    def ref():
        d = dst.double().clone()
        d.index_add_(0, idx, x.double())
        return d
    # scatter-add back into the residual, as token-routing code does (index_add_)
    return Case(lambda i: dst.index_add_(0, idx, x), ref)


def _block_pool_case(a: _Inputs) -> Case:
    torch, F, x, rows, width = a.torch, a.F, a.x, a.rows, a.width
    bs = a.op.extra or 64
    nb = math.ceil(rows / bs)
    pad = nb * bs - rows

    def fn(i):  # mean-pool the sequence into blocks (SeerAttention-style gate input)
        h = F.pad(x, (0, 0, 0, pad)) if pad else x
        return h.view(nb, bs, width).float().mean(1)

    def ref():
        h = torch.cat([x.double(), x.new_zeros((pad, width), dtype=torch.float64)]) if pad else x.double()
        return h.view(nb, bs, width).mean(1)
    return Case(fn, ref)


def _layernorm_case(a: _Inputs) -> Case:
    torch, F, x = a.torch, a.F, a.x
    w = rand_tensor(a.ctx, (a.width,), a.op.dtype, seed=6)
    b = rand_tensor(a.ctx, (a.width,), a.op.dtype, seed=10)
    eps = 1e-5

    def ref():
        xd = x.double()
        mu = xd.mean(-1, keepdim=True)
        var = ((xd - mu) ** 2).mean(-1, keepdim=True)
        return (xd - mu) / torch.sqrt(var + eps) * w.double() + b.double()
    return Case(lambda i: F.layer_norm(x, (a.width,), w, b, eps), ref)  # nn.LayerNorm


def _activation(a: _Inputs):
    """(the function as transformers' activation module runs it, its float64 reference)."""
    torch, F = a.torch, a.F
    name = ACTIVATIONS[a.op.extra] if 0 <= a.op.extra < len(ACTIVATIONS) else "?"
    c = math.sqrt(2.0 / math.pi)

    def gelu_tanh_ref(t):
        return 0.5 * t * (1.0 + torch.tanh(c * (t + 0.044715 * t.pow(3))))
    table = {
        "silu": (F.silu, lambda t: t * torch.sigmoid(t)),
        "relu": (F.relu, F.relu),
        "gelu": (F.gelu, lambda t: 0.5 * t * (1.0 + torch.erf(t / math.sqrt(2.0)))),
        "gelu_tanh": (lambda t: F.gelu(t, approximate="tanh"), gelu_tanh_ref),
        "quick_gelu": (lambda t: t * torch.sigmoid(1.702 * t), lambda t: t * torch.sigmoid(1.702 * t)),
        "sigmoid": (torch.sigmoid, torch.sigmoid),
    }
    if name not in table:
        raise MeasureError(f"{a.op.key()}: activation index {a.op.extra} is not one of {ACTIVATIONS}")
    return table[name]


def _act_case(a: _Inputs) -> Case:
    fn, ref = _activation(a)
    x = a.x
    return Case(lambda i: fn(x), lambda: ref(x.double()))


def _act_mul_case(a: _Inputs) -> Case:
    fn, ref = _activation(a)
    x = a.x
    up = rand_tensor(a.ctx, (a.rows, a.width), a.op.dtype, seed=7)
    return Case(lambda i: fn(x) * up, lambda: ref(x.double()) * up.double())


def _scale_case(a: _Inputs) -> Case:
    x = a.x
    c = math.sqrt(a.width)  # Gemma: embeddings × √hidden (a tensor of the activation dtype)
    scale = a.torch.tensor(c, dtype=a.dt, device=x.device)
    return Case(lambda i: x * scale, lambda: x.double() * float(scale))


def _act_quant_case(a: _Inputs) -> Case:
    # W8A8's activation quantization before a quantized GEMM (the op's extra: 0 dynamic
    # per-token, 1 static per-tensor); fp8 casts are real on a CPU too
    return act_quant_case(a.x, a.op.extra, a.check)


def _softcap_case(a: _Inputs) -> Case:
    torch, x = a.torch, a.x
    cap = 30.0  # Gemma 2's final_logit_softcapping

    def fn(i):  # transformers' Gemma2ForCausalLM: logits / cap, tanh, × cap
        return torch.tanh(x / cap) * cap
    return Case(fn, lambda: torch.tanh(x.double() / cap) * cap)


#: each elementwise kind's case, written the way transformers' modules run it
_CASES = {
    "layernorm": _layernorm_case,
    "act": _act_case,
    "act_mul": _act_mul_case,
    "scale": _scale_case,
    "softcap": _softcap_case,
    "rmsnorm": _rmsnorm_case,
    "rotary": _rotary_case,
    "silu_mul": _silu_mul_case,
    "residual_add": _residual_add_case,
    "bias_add": _bias_add_case,
    "embedding": _embedding_case,
    "kv_write": _kv_write_case,
    "topk": _topk_case,
    "gather": _gather_case,
    "scatter": _scatter_case,
    "block_pool": _block_pool_case,
    "act_quant": _act_quant_case,
}

"""Elementwise and routing cases, each written the way transformers' modules run them."""

from __future__ import annotations

import math

from ..errors import MeasureError
from ..model.ops import Elementwise, dtype_bytes
from .case import Case, copies_for, rand_tensor, views
from .device import DeviceContext, torch_dtype, torch_module

def elementwise_case(op: Elementwise, ctx: DeviceContext, check: bool) -> Case:
    torch = torch_module()
    F = torch.nn.functional
    dt = torch_dtype(op.dtype)
    rows, width = op.rows, op.width
    x = rand_tensor(ctx, (rows, width), op.dtype, seed=5)
    kind = op.kind
    if kind == "rmsnorm":
        w = rand_tensor(ctx, (width,), op.dtype, seed=6)
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
    if kind == "rotary":
        hd = op.extra or (128 if width % 128 == 0 else 64)
        if width % hd or hd % 2:
            raise MeasureError(f"{op.key()}: width {width} is not a multiple of head_dim {hd}")
        heads = width // hd
        pos = torch.arange(rows, device=ctx.torch_device, dtype=torch.float32)
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, device=ctx.torch_device, dtype=torch.float32) / hd))
        freqs = pos[:, None] * inv[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(dt)[:, None, :], emb.sin().to(dt)[:, None, :]
        xh = x.view(rows, heads, hd)

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
    if kind == "silu_mul":
        up = rand_tensor(ctx, (rows, width), op.dtype, seed=7)
        return Case(lambda i: F.silu(x) * up,
                     lambda: (x.double() * torch.sigmoid(x.double())) * up.double())
    if kind == "residual_add":
        r = rand_tensor(ctx, (rows, width), op.dtype, seed=8)
        return Case(lambda i: r + x, lambda: r.double() + x.double())
    if kind == "bias_add":
        bias = rand_tensor(ctx, (width,), op.dtype, seed=9)
        return Case(lambda i: x + bias, lambda: x.double() + bias.double())
    if kind == "embedding":
        vocab = op.extra or 32000
        table = views(ctx, op.dtype, (vocab, width), 1, check=check)[0]
        g = torch.Generator(device=ctx.torch_device).manual_seed(12)
        ids = torch.randint(0, vocab, (rows,), generator=g, device=ctx.torch_device)
        return Case(lambda i: F.embedding(ids, table), lambda: table.double()[ids])
    if kind == "kv_write":
        cap = max(op.extra, 2 * rows)
        cache = torch.zeros((cap, width), dtype=dt, device=ctx.torch_device)
        posn = torch.arange(cap - rows, cap, device=ctx.torch_device)

        def fn(i):  # transformers' StaticCache.update: index_copy_ along the position dim
            return cache.index_copy_(0, posn, x)

        def ref():
            c = cache.double().clone()
            c[posn] = x.double()
            return c
        return Case(fn, ref)
    if kind == "topk":
        k = min(op.extra or max(1, width // 8), width)

        def fn(i):  # router top-k (values and indices, as a MoE/skip router does)
            return torch.topk(x, k, dim=-1)

        return Case(fn, lambda: torch.topk(x.double(), k, dim=-1).values, post=lambda out: out.values)
    if kind == "gather":
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
    if kind == "scatter":
        dst_rows = max(op.extra, 2 * rows)
        dst = rand_tensor(ctx, (dst_rows, width), op.dtype, seed=15)
        g = torch.Generator(device=ctx.torch_device).manual_seed(16)
        idx = torch.randperm(dst_rows, generator=g, device=ctx.torch_device)[:rows].sort().values

        def ref():
            d = dst.double().clone()
            d.index_add_(0, idx, x.double())
            return d
        # scatter-add back into the residual, as token-routing code does (index_add_)
        return Case(lambda i: dst.index_add_(0, idx, x), ref)
    if kind == "block_pool":
        bs = op.extra or 64
        nb = math.ceil(rows / bs)
        pad = nb * bs - rows

        def fn(i):  # mean-pool the sequence into blocks (SeerAttention-style gate input)
            h = F.pad(x, (0, 0, 0, pad)) if pad else x
            return h.view(nb, bs, width).float().mean(1)

        def ref():
            h = torch.cat([x.double(), x.new_zeros((pad, width), dtype=torch.float64)]) if pad else x.double()
            return h.view(nb, bs, width).mean(1)
        return Case(fn, ref)
    raise MeasureError(f"unknown elementwise kind {kind!r}")

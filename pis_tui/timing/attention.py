"""Attention cases: SDPA (causal prefill, decode over a GQA KV cache) and block-sparse
FlexAttention, with a labelled estimate where FlexAttention cannot compile."""

from __future__ import annotations

import math
from typing import Optional

from ..errors import MeasureError
from ..model.ops import Attention, dtype_bytes
from .case import Case, copies_for, rand_tensor, views
from .device import DeviceContext, torch_module

def _has_enable_gqa() -> bool:
    import inspect

    torch = torch_module()
    try:
        return "enable_gqa" in inspect.signature(torch.nn.functional.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):  # builtin without a signature: try it
        try:
            q = torch.zeros(1, 2, 1, 4)
            k = torch.zeros(1, 1, 1, 4)
            torch.nn.functional.scaled_dot_product_attention(q, k, k, enable_gqa=True)
            return True
        except (TypeError, RuntimeError):
            return False


def _repeat_kv(x, n_rep: int):
    """HF's repeat_kv: [B, Hkv, L, D] -> [B, Hkv*n_rep, L, D]."""
    if n_rep == 1:
        return x
    b, h, l, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n_rep, l, d).reshape(b, h * n_rep, l, d)


def _attn_reference(q, k, v, allowed):
    """float64 softmax(QKᵀ/√d + mask)·V with GQA; `allowed` is a [q_len, kv_len] bool or None."""
    torch = torch_module()
    rep = q.shape[1] // k.shape[1]
    qd, kd, vd = q.double(), _repeat_kv(k.double(), rep), _repeat_kv(v.double(), rep)
    s = qd @ kd.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p)  # fully masked rows (none in our masks) would be NaN
    return p @ vd


def _causal_allowed(q_len: int, kv_len: int, device):
    """Bottom-right aligned causal mask (query i sits at position kv_len - q_len + i)."""
    torch = torch_module()
    qi = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    ki = torch.arange(kv_len, device=device)[None, :]
    return ki <= qi


def attention_case(op: Attention, ctx: DeviceContext, check: bool) -> Case:
    torch = torch_module()
    F = torch.nn.functional
    if op.q_heads % op.kv_heads:
        raise MeasureError(f"{op.key()}: q heads {op.q_heads} not a multiple of kv heads {op.kv_heads}")
    b = dtype_bytes(op.dtype)
    scale = 1.0
    q = rand_tensor(ctx, (op.batch, op.q_heads, op.q_len, op.head_dim), op.dtype, seed=3, scale=scale)
    kv_shape = (op.batch, op.kv_heads, op.kv_len, op.head_dim)
    kv_bytes = 2 * math.prod(kv_shape) * b
    # decode streams its KV cache (rotate it); prefill K/V are fresh activations
    copies = copies_for(ctx, kv_bytes, check) if op.q_len == 1 else 1
    ks = views(ctx, op.dtype, kv_shape, copies, check=check)
    vs = views(ctx, op.dtype, kv_shape, len(ks), offset_elems=len(ks) * math.prod(kv_shape)) \
        if copies > 1 else [rand_tensor(ctx, kv_shape, op.dtype, seed=4)]
    n = min(len(ks), len(vs))
    ks, vs = ks[:n], vs[:n]
    rep = op.q_heads // op.kv_heads
    if op.block_density < 1.0:
        return _flex_case(op, ctx, q, ks, vs, check)
    mask = None
    is_causal = False
    if op.causal and op.q_len > 1:
        if op.q_len == op.kv_len:
            is_causal = True
        else:
            mask = _causal_allowed(op.q_len, op.kv_len, ctx.torch_device)
    allowed = _causal_allowed(op.q_len, op.kv_len, ctx.torch_device) if (op.causal and op.q_len > 1) else None
    gqa = rep > 1
    if gqa and _has_enable_gqa():
        def fn(i):
            return F.scaled_dot_product_attention(q, ks[i % n], vs[i % n], attn_mask=mask,
                                                  is_causal=is_causal, enable_gqa=True)
        note = "sdpa, enable_gqa" if gqa else "sdpa"
    else:
        def fn(i):
            return F.scaled_dot_product_attention(q, _repeat_kv(ks[i % n], rep), _repeat_kv(vs[i % n], rep),
                                                  attn_mask=mask, is_causal=is_causal)
        note = "sdpa, repeat_kv" if gqa else "sdpa"
    return Case(fn=fn, ref=lambda: _attn_reference(q, ks[0], vs[0], allowed), copies=n, note=note)


#: compiled flex_attention (one per process; dynamic=False: the default crashed on a second
#: block mask with torch 2.13 on CPU)
_FLEX = {}

#: shared memory one thread block may use (KiB, the opt-in maximum) by compute capability
_SMEM_KIB = {(7, 0): 96, (7, 5): 64, (8, 0): 163, (8, 6): 99, (8, 7): 163, (8, 9): 99,
             (9, 0): 227, (10, 0): 227, (10, 3): 227, (11, 0): 227, (12, 0): 99, (12, 1): 99}


def _smem_kib(cap: tuple) -> int:
    if cap in _SMEM_KIB:
        return _SMEM_KIB[cap]
    return 99 if cap[0] >= 12 or cap[0] < 8 else 227 if cap[0] >= 9 else 163


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


def flex_kernel_options(capability, dtype: str, head_dim: int, block_size: int = 64,
                        q_len: Optional[int] = None, gqa_group: int = 1) -> dict:
    """Triton tile sizes for compiled FlexAttention that this device's kernels accept with
    the family's ``block_size``-token blocks (a pure function: tested on the CPU).

    Without max-autotune inductor takes one default configuration per (capability, dtype,
    head_dim), and on sm_90 bf16 head_dim 128 (and on most GPUs for some shape) its BLOCK_M is
    128: with 64-token mask blocks that raises "Q and KV block size must be divisible by
    BLOCK_M and BLOCK_N", so every block-sparse op would take the labelled fallback.  Here
    BLOCK_M and BLOCK_N divide the block size (64 for 64-token blocks; for a short query, which
    may run flex decoding, BLOCK_M is that kernel's own rows = q_len × GQA group, at least 16),
    and the software-pipelining depth is the deepest whose Q tile plus K/V stages fit the
    device's shared memory.  ``capability`` None (a CPU): {} (its kernel has no such tiles).
    """
    if capability is None:
        return {}
    cap = tuple(int(x) for x in (capability.split(".") if isinstance(capability, str) else capability))
    tile = _pow2_floor(min(64, block_size))
    while block_size % tile:
        tile //= 2
    bm = bn = max(tile, 1)
    if q_len is not None and q_len < 128:
        rows = 1 << max(4, (max(1, q_len * gqa_group) - 1).bit_length())  # next power of 2, ≥ 16
        bm = min(bm, rows) if block_size % min(bm, rows) == 0 else bm
    elem = 4 if dtype in ("fp32", "tf32") else 2
    budget = _smem_kib(cap) * 1024 * 0.9  # leave room for the softmax state and barriers
    stages = 1
    for st in (3, 2, 1):
        if (bm + st * 2 * bn) * head_dim * elem <= budget:
            stages = st
            break
    while (bm + stages * 2 * bn) * head_dim * elem > budget and max(bm, bn) > 16:
        if bn >= bm:  # a very wide head: smaller tiles (they still divide the block)
            bn //= 2
        else:
            bm //= 2
    return {"BLOCK_M": bm, "BLOCK_N": bn, "num_stages": stages, "num_warps": 4}


def _block_table(op: Attention, device):
    """Which (q block, kv block) pairs are computed: the causal blocks, of which a share
    ``block_density`` is kept (the diagonal block of each query block always)."""
    torch = torch_module()
    bs = op.block_size
    nq, nk = math.ceil(op.q_len / bs), math.ceil(op.kv_len / bs)
    off = op.kv_len - op.q_len
    qb_last = torch.clamp((torch.arange(nq) + 1) * bs - 1, max=op.q_len - 1) + off  # last q pos
    kb_first = torch.arange(nk) * bs
    causal = (kb_first[None, :] <= qb_last[:, None]) if op.causal else torch.ones(nq, nk, dtype=torch.bool)
    g = torch.Generator().manual_seed(11)
    score = torch.rand(nq, nk, generator=g)
    diag = causal.long().cumsum(1).eq(causal.long().sum(1, keepdim=True)) & causal  # last allowed
    score = torch.where(diag, torch.full_like(score, 2.0), score)
    score = torch.where(causal, score, torch.full_like(score, -1.0))
    total = int(causal.sum())
    keep_n = max(int(diag.sum()), round(op.block_density * total))
    flat = score.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.topk(keep_n).indices] = True
    table = keep.view(nq, nk) & causal
    return table.to(device), float(table.sum()) / max(total, 1)


def _flex_case(op: Attention, ctx: DeviceContext, q, ks, vs, check: bool) -> Case:
    torch = torch_module()
    n = len(ks)
    table, achieved = _block_table(op, ctx.torch_device)
    bs = op.block_size
    off = op.kv_len - op.q_len
    causal = op.causal
    allowed = table.repeat_interleave(bs, 0)[: op.q_len].repeat_interleave(bs, 1)[:, : op.kv_len]
    if causal:
        allowed = allowed & _causal_allowed(op.q_len, op.kv_len, ctx.torch_device)
    rep = op.q_heads // op.kv_heads
    ref = lambda: _attn_reference(q, ks[0], vs[0], allowed)  # noqa: E731
    note = f"flex_attention block-sparse ({achieved:.0%} of causal blocks, block {bs})"
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:
        return _flex_fallback(op, ctx, q, ks, vs, ref, f"flex-compile failed: estimate (no flex_attention: {e})")

    def mask_mod(b, h, q_idx, kv_idx):
        m = table[q_idx // bs, kv_idx // bs]
        if causal:
            m = m & (kv_idx <= q_idx + off)
        return m

    try:
        block_mask = create_block_mask(mask_mod, None, None, op.q_len, op.kv_len,
                                       device=ctx.torch_device, BLOCK_SIZE=bs)
    except Exception as e:  # noqa: BLE001
        return _flex_fallback(op, ctx, q, ks, vs, ref,
                              f"flex-compile failed: estimate (block mask: {type(e).__name__})")
    key = ctx.torch_device
    if key not in _FLEX:
        _raise_recompile_limit()
        _FLEX[key] = torch.compile(flex_attention, dynamic=False)
    flex = _FLEX[key]
    kw = {"enable_gqa": True} if rep > 1 else {}
    opts = flex_kernel_options(ctx.capability if ctx.is_cuda else None, op.dtype, op.head_dim,
                               bs, op.q_len, rep)
    if opts:
        kw["kernel_options"] = opts
        note += f", tiles {opts['BLOCK_M']}×{opts['BLOCK_N']}"

    def fn(i):
        return flex(q, ks[i % n], vs[i % n], block_mask=block_mask, **kw)

    return Case(fn=fn, ref=ref, copies=n, note=note,
                 fallback=lambda reason: _flex_fallback(op, ctx, q, ks, vs, ref, reason))


def _raise_recompile_limit(n: int = 256) -> None:
    """Each attention shape compiles its own kernel (dynamic=False); dynamo's default limit of
    8 recompilations per function would silently fall back to eager flex_attention (which
    builds the full score matrix) once a calibration has seen more shapes."""
    try:
        import torch._dynamo.config as cfg
    except ImportError:  # pragma: no cover
        return
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < n:
            setattr(cfg, name, n)
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < 4 * n:
            setattr(cfg, name, 4 * n)


def _flex_fallback(op, ctx, q, ks, vs, ref, reason: str) -> Case:
    """Compiling FlexAttention failed: time dense SDPA and scale by the block density
    (a clearly labelled estimate, never presented as a block-sparse measurement)."""
    torch = torch_module()
    F = torch.nn.functional
    n = len(ks)
    rep = op.q_heads // op.kv_heads
    is_causal = op.causal and op.q_len > 1 and op.q_len == op.kv_len
    mask = _causal_allowed(op.q_len, op.kv_len, ctx.torch_device) \
        if (op.causal and op.q_len > 1 and not is_causal) else None

    def fn(i):
        return F.scaled_dot_product_attention(q, _repeat_kv(ks[i % n], rep), _repeat_kv(vs[i % n], rep),
                                              attn_mask=mask, is_causal=is_causal)

    return Case(fn=fn, ref=None, copies=n, note=reason, scale=op.block_density)

"""What timing an op needs: a case (the call to time, its float64 reference, how many rotated
copies of its state), and the rotation helpers that make weights and KV caches stream from
memory as in a forward pass."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

from .device import DeviceContext, pool_elems, torch_dtype, torch_module

class Unsupported(Exception):
    """The op has no kernel on this device (recorded as status 'unsupported')."""


@dataclass
class Case:
    fn: Callable[[int], object]  # run one call with rotation copy i
    ref: Callable[[], object]  # float64 reference of fn(0)
    copies: int = 1
    capturable: bool = True
    note: str = ""
    setup: Optional[Callable[[], None]] = None  # one-off work kept out of timing
    fallback: Optional[Callable[[str], "Case"]] = None  # FlexAttention: if compiling fails
    scale: float = 1.0  # a labelled estimate scales a measured time (FlexAttention fallback)
    post: Optional[Callable[[object], object]] = None  # output -> tensor compared in verify


def copies_for(ctx: DeviceContext, state_bytes: float, check: bool) -> int:
    """Enough copies of `state_bytes` to exceed twice the cache (1 if one copy already does)."""
    cache = 2 * ctx.cache_mb * 2**20
    if check or state_bytes <= 0 or state_bytes >= cache:
        return 1
    return min(math.ceil(cache / state_bytes) + 1, 1 << 16)


def views(ctx: DeviceContext, dtype: str, shape: tuple, copies: int, density: float = 1.0,
           offset_elems: int = 0, check: bool = False) -> list:
    """`copies` distinct tensors of `shape`: views into the random pool where they fit, else
    one fresh tensor (then it is larger than the cache and needs no rotation).  A fresh tensor
    for timing is filled with a constant (a GEMM's or a gather's time does not depend on the
    values, and randomising a 500 MB lm_head costs a second); with ``check`` it is random."""
    torch = torch_module()
    n = math.prod(shape)
    if n * copies + offset_elems <= pool_elems(ctx, dtype):
        p = ctx.pool(dtype, density=density)
        return [p[offset_elems + i * n: offset_elems + (i + 1) * n].view(shape) for i in range(copies)]
    t = torch.empty(shape, dtype=torch_dtype(dtype), device=ctx.torch_device)
    if check or density < 1.0:
        g = torch.Generator(device=ctx.torch_device).manual_seed(7)
        t.uniform_(-1.0, 1.0, generator=g)
        if density < 1.0:
            t.mul_(torch.rand(shape, device=ctx.torch_device, generator=g) < density)
    else:
        t.fill_(0.01)
    return [t]


def rand_tensor(ctx: DeviceContext, shape, dtype: str, seed: int = 0, scale: float = 1.0):
    torch = torch_module()
    g = torch.Generator(device=ctx.torch_device).manual_seed(seed)
    t = torch.empty(shape, dtype=torch_dtype(dtype), device=ctx.torch_device)
    t.uniform_(-scale, scale, generator=g)
    return t

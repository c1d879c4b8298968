"""What timing an op needs: a case (the call to time, its float64 reference, how many rotated
copies of its state), and the rotation helpers that make weights and KV caches stream from
memory as in a forward pass."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from .device import DeviceContext, pool_elems, torch_dtype, torch_module
from .loops import MAX_GRAPH_CALLS


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
    #: what the measurement records about the call (``kernel``: the aten op a quantized GEMM
    #: ran), merged into :attr:`Measurement.conditions`
    conditions: dict = field(default_factory=dict)


def copies_for(ctx: DeviceContext, state_bytes: float, check: bool) -> int:
    """Enough copies of `state_bytes` to exceed twice the cache (1 if one copy already does;
    at most ``ctx.max_copies`` when a retry after an out-of-memory lowered it).  On CUDA no
    more than one graph's calls (``MAX_GRAPH_CALLS``): a graph visits no more copies than it
    has calls, and making views that no call uses cost a tenth of a second per small op."""
    cache = 2 * ctx.cache_mb * 2**20
    if check or state_bytes <= 0 or state_bytes >= cache:
        return 1
    n = min(math.ceil(cache / state_bytes) + 1, MAX_GRAPH_CALLS if ctx.is_cuda else 1 << 16)
    return n if ctx.max_copies is None else max(1, min(n, ctx.max_copies))


def views(ctx: DeviceContext, dtype: str, shape: tuple, copies: int, density: float = 1.0,
           offset_elems: int = 0, check: bool = False) -> list:
    """`copies` distinct tensors of `shape`: views into the random pool where they fit, else
    one fresh tensor (then it is larger than the cache and needs no rotation), filled with
    random values too (:func:`fill_random`): on a power-limited GPU a GEMM over constant
    weights runs faster than over real ones (fewer bits toggle), so constants would time
    big GEMMs optimistically."""
    torch = torch_module()
    n = math.prod(shape)
    if ctx.max_copies is not None:
        copies = max(1, min(copies, ctx.max_copies))
    if n * copies + offset_elems <= pool_elems(ctx, dtype):
        p = ctx.pool(dtype, density=density)
        return [p[offset_elems + i * n: offset_elems + (i + 1) * n].view(shape) for i in range(copies)]
    t = torch.empty(shape, dtype=torch_dtype(dtype), device=ctx.torch_device)
    fill_random(t, seed=7, density=density)
    return [t]


#: the random tile a large CPU tensor is filled from (see fill_random)
FILL_TILE = 1 << 16


def fill_random(t, seed: int = 0, density: float = 1.0):
    """Fill ``t`` with uniform random values in [-1, 1), a share ``1 - density`` of them zero.

    A GPU draws them with its own generator (memory speed).  On a CPU, where an RNG pass over
    a 500 MB lm_head takes seconds, a tensor larger than one tile is filled by repeating a
    random tile of ``FILL_TILE`` values (a memory-speed copy; the values are still random
    within every row a kernel reads)."""
    torch = torch_module()
    flat = t.view(-1)
    if t.is_cuda or flat.numel() <= FILL_TILE:
        g = torch.Generator(device=t.device).manual_seed(seed)
        flat.uniform_(-1.0, 1.0, generator=g)
        if density < 1.0:
            keep = torch.rand(flat.shape, device=t.device, generator=g, dtype=torch.float16
                              if t.is_cuda else torch.float32) < density
            flat.mul_(keep)
            del keep
        return t
    g = torch.Generator().manual_seed(seed)
    tile = torch.empty(FILL_TILE, dtype=t.dtype).uniform_(-1.0, 1.0, generator=g)
    if density < 1.0:
        tile.mul_(torch.rand(FILL_TILE, generator=g) < density)
    k, r = divmod(flat.numel(), FILL_TILE)
    flat[: k * FILL_TILE].view(k, FILL_TILE).copy_(tile.expand(k, FILL_TILE))
    if r:
        flat[k * FILL_TILE:].copy_(tile[:r])
    return t


def rand_tensor(ctx: DeviceContext, shape, dtype: str, seed: int = 0, scale: float = 1.0):
    torch = torch_module()
    g = torch.Generator(device=ctx.torch_device).manual_seed(seed)
    t = torch.empty(shape, dtype=torch_dtype(dtype), device=ctx.torch_device)
    t.uniform_(-scale, scale, generator=g)
    return t

"""Grouped GEMM cases: an MoE layer's routed experts through ``torch.nn.functional.grouped_mm``,
the kernel transformers runs them with (``grouped_mm`` experts), over steps drawn from the
routing.

What is timed
-------------
A :class:`~pis_tui.model.ops.GroupedGemm` names a step of T tokens routed k ways over E experts
by a routing (balanced, a power law, a recorded histogram).  Its cost depends on the whole vector
of rows per expert — how many experts get rows (their weights are read), how the rows spread
(tile padding, per-group work) — so no one vector stands for it.  The case draws
:data:`DRAWS` steps from the routing (each token includes expert e with the probability
:func:`pis_tui.model.moe.inclusion` gives it, k distinct experts a token; a histogram's layers
take turns), sorts the rows by expert as transformers does, and cycles through the draws as it
cycles through rotation copies: the measurement is the time of one step averaged over drawn
steps (on the CPU, where one call can fill a timed batch, the median of batches over the draws).
The expected distinct experts the draws touched is in the note beside the law's value.

The layout is transformers': weights ``[E, N, K]`` (``gate_up_proj``: ``[E, 2I, H]``) passed
transposed, activations ``[T·k, K]``, int32 cumulative offsets, rows sorted by expert.  The
offsets live on the device (a CUDA graph replays every draw).  Where ``grouped_mm`` has no kernel
for the device or dtype, the case runs the per-group loop transformers falls back to
(``offs.tolist()``: a host sync each call, not capturable) and says so: the time includes the
loop's host work, labelled in the note and the measurement's conditions.

torch is imported inside the functions (the estimating paths never import it).
"""

from __future__ import annotations

from ..model.moe import inclusion
from ..model.ops import GroupedGemm, dtype_bytes
from .case import Case, Unsupported, copies_for, rand_tensor, views
from .device import DeviceContext, torch_module

#: routing draws a grouped measurement cycles through
DRAWS = 8
#: grouped_mm's stride alignment: every row of the activations and weights starts on 16 bytes
ALIGN_BYTES = 16


def draw_counts(tokens: int, k: int, shares, generator) -> "object":
    """Rows per expert of one drawn step (a CPU int64 tensor of E counts, summing to T·k).

    Each token picks k distinct experts with inclusion probabilities q_e (Σ q_e = k, each ≤ 1:
    :func:`pis_tui.model.moe.inclusion`) by ordered systematic sampling over a random order of the
    experts (a uniform start u, picks at u, u + 1, … u + k − 1 along the cumulative q): exactly
    k distinct experts, each with probability q_e — the law the estimate uses."""
    torch = torch_module()
    E = len(shares)
    q = torch.tensor(inclusion(list(shares), k), dtype=torch.float64)
    if tokens <= 0:
        return torch.zeros(E, dtype=torch.int64)
    order = torch.argsort(torch.rand(tokens, E, generator=generator, dtype=torch.float64), dim=1)
    cum = torch.cumsum(q[order], dim=1)
    picks = torch.rand(tokens, 1, generator=generator, dtype=torch.float64) + torch.arange(k, dtype=torch.float64)
    # a pick lands in the bin of the expert whose cumulative q first exceeds it
    pos = torch.searchsorted(cum, picks.contiguous(), right=True).clamp_(max=E - 1)
    chosen = torch.gather(order, 1, pos)
    return torch.bincount(chosen.reshape(-1), minlength=E)


def drawn_steps(op: GroupedGemm, draws: int = DRAWS, seed: int = 0) -> list:
    """``draws`` vectors of rows per expert for ``op``'s step (the layers of a histogram taking
    turns: draw i uses layer ⌊i·L/draws⌋)."""
    torch = torch_module()
    if not op.shares or not op.tokens:
        raise Unsupported("this grouped GEMM names no routing to draw steps from "
                          "(an op list from an older pis-tui): estimated")
    g = torch.Generator().manual_seed(seed)
    L = len(op.shares)
    if not op.k_dist:
        return [draw_counts(op.tokens, op.top_k, op.shares[(i * L) // draws], g) for i in range(draws)]
    # dynamic top-k: each token's k drawn from the distribution, then its k experts
    ks = torch.tensor([k for k, _ in op.k_dist])
    ps = torch.tensor([p for _, p in op.k_dist], dtype=torch.float64)
    out = []
    for i in range(draws):
        per = torch.bincount(torch.multinomial(ps, op.tokens, replacement=True, generator=g),
                             minlength=len(ks))
        sh = op.shares[(i * L) // draws]
        out.append(sum(draw_counts(int(n), int(k), sh, g) for k, n in zip(ks.tolist(), per.tolist())))
    return out


def _grouped_fn(ctx: DeviceContext):
    """torch's grouped GEMM (``F.grouped_mm`` from torch 2.10, ``torch._grouped_mm`` before), or
    None."""
    torch = torch_module()
    fn = getattr(torch.nn.functional, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
    return fn


def _loop(x, wt, offs_host: list):
    """transformers' fallback: one matmul per expert that got rows (host-side offsets)."""
    torch = torch_module()
    out = torch.empty(x.shape[0], wt.shape[-1], dtype=x.dtype, device=x.device)
    start = 0
    for e, end in enumerate(offs_host):
        if end > start:
            torch.mm(x[start:end], wt[e], out=out[start:end])
        start = end
    return out


def grouped_gemm_case(op: GroupedGemm, ctx: DeviceContext, check: bool) -> Case:
    torch = torch_module()
    if op.kind != "dense":
        raise Unsupported(f"no {op.kind} grouped GEMM kernel")
    b = dtype_bytes(op.dtype)
    if (op.k * b) % ALIGN_BYTES or (op.n * b) % ALIGN_BYTES:
        raise Unsupported(f"grouped_mm needs 16-byte aligned rows: N={op.n}, K={op.k} in {op.dtype}")
    steps = drawn_steps(op, draws=1 if check else DRAWS)
    rows = int(steps[0].sum())  # T·k (a dynamic k: this draw's; the draws' rows differ)
    if len({int(c.sum()) for c in steps}) > 1:
        rows = max(int(c.sum()) for c in steps)
    offs = [torch.cumsum(c, 0).to(torch.int32).to(ctx.torch_device) for c in steps]
    offs_host = [o.tolist() for o in offs]
    touched = sum(int((c > 0).sum()) for c in steps) / len(steps)
    copies = copies_for(ctx, op.experts * op.n * op.k * b, check)
    ws = views(ctx, op.dtype, (op.experts, op.n, op.k), copies, check=check)
    wts = [w.transpose(-2, -1) for w in ws]  # [E, K, N] views, as transformers passes them
    x = rand_tensor(ctx, (rows, op.k), op.dtype, seed=1)
    D, C = len(offs), len(wts)
    grouped = _grouped_fn(ctx)
    how = "grouped_mm"
    if grouped is not None:
        try:
            grouped(x[: min(rows, 16)], wts[0], offs=torch.clamp(offs[0], max=min(rows, 16)))
        except (RuntimeError, NotImplementedError, TypeError) as e:
            grouped = None
            how = f"per-group loop (grouped_mm: {str(e).splitlines()[0][:80]})"
    if grouped is not None:
        fn = lambda i: grouped(x, wts[i % C], offs=offs[i % D])  # noqa: E731
        capturable = True
    else:
        how = how if how != "grouped_mm" else "per-group loop (no grouped_mm in this torch)"
        fn = lambda i: _loop(x, wts[i % C], offs_host[i % D])  # noqa: E731
        capturable = False  # the offsets are read on the host: a sync each call

    first = int(offs_host[0][-1]) if offs_host[0] else 0  # rows past a step's last offset:
    # grouped_mm leaves them unwritten, so a check compares the first step's rows

    def ref():
        return _loop(x.double(), wts[0].double(), offs_host[0])[:first]

    mean_rows = sum(int(c.sum()) for c in steps) / len(steps)
    note = (f"{how} over {D} drawn steps: {touched:.1f} of {op.experts} experts touched on "
            f"average (law {op.groups:.1f}), {mean_rows:g} rows")
    if grouped is None:
        note += "; host-synced loop, not capturable"
    return Case(fn=fn, ref=ref, copies=max(D, C) if D > 1 or C > 1 else 1,
                capturable=capturable, note=note, post=lambda out: out[:first])

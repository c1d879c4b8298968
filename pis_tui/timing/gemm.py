"""GEMM cases: dense, unstructured (the dense kernel over zeros, or CSR), 2:4 semi-structured
sparse through torch's sparse tensors."""

from __future__ import annotations

from ..model.ops import Gemm, dtype_bytes
from .case import Case, Unsupported, copies_for, rand_tensor, views
from .device import DeviceContext, prune_24, torch_module

def gemm_case(op: Gemm, ctx: DeviceContext, check: bool, unstructured_kernel: str = "dense") -> Case:
    torch = torch_module()
    F = torch.nn.functional
    b = dtype_bytes(op.dtype)
    x = rand_tensor(ctx, (op.m, op.k), op.dtype, seed=1)
    if op.kind == "sparse_24":
        if not ctx.sparse_24:
            raise Unsupported(ctx.sparse_24_note or "no 2:4 sparse kernel on this device")
        if op.dtype not in ("bf16", "fp16"):
            raise Unsupported(f"2:4 semi-structured sparse GEMMs run in bf16/fp16, not {op.dtype}")
        from torch.sparse import to_sparse_semi_structured

        copies = copies_for(ctx, op.n * op.k * b * 0.5625, check)
        dense = views(ctx, op.dtype, (op.n, op.k), min(copies, 512), check=check)
        try:
            pruned = [prune_24(w) for w in dense[:1]]
            ws = [to_sparse_semi_structured(prune_24(w)) for w in dense]
        except (RuntimeError, ValueError) as e:
            raise Unsupported(f"shape not supported by the 2:4 kernel: {str(e).splitlines()[0][:160]}")
        w0 = pruned[0]
        return Case(fn=lambda i: F.linear(x, ws[i % len(ws)]),
                     ref=lambda: x.double() @ w0.double().t(), copies=len(ws),
                     note="2:4 semi-structured sparse")
    density = op.density if op.kind == "unstructured" else 1.0
    copies = copies_for(ctx, op.n * op.k * b, check)
    ws = views(ctx, op.dtype, (op.n, op.k), copies, density=density, check=check)
    note = ""
    if op.kind == "unstructured":
        note = f"dense kernel, {1 - density:.0%} zeros"
        if unstructured_kernel == "csr":
            if ctx.is_cuda and op.dtype not in ("fp32", "fp16", "bf16"):
                raise Unsupported(f"no CSR kernel for {op.dtype}")
            wcsr = [w.to_sparse_csr() for w in ws]
            w0 = ws[0]
            return Case(fn=lambda i: torch.sparse.mm(wcsr[i % len(wcsr)], x.t()).t(),
                         ref=lambda: x.double() @ w0.double().t(), copies=len(wcsr),
                         capturable=False, note=f"CSR sparse kernel, {1 - density:.0%} zeros")
    w0 = ws[0]
    return Case(fn=lambda i: F.linear(x, ws[i % len(ws)]),
                 ref=lambda: x.double() @ w0.double().t(), copies=len(ws), note=note)

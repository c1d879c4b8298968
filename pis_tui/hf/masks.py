"""Weight masks by Wanda scores: 2:4 and unstructured sparsity."""

from __future__ import annotations

from ..model.layer import round_half_up
from .calibration import Calibration
from .layout import decoder_linears
from .result import PruneResult

# ---------------------------------------------------------------------------------------------
# semi_structured_24, unstructured (Wanda)
# ---------------------------------------------------------------------------------------------

def wanda_scores(lin, in_norm):
    """|W_ij|·‖X_j‖₂, float32."""
    return lin.weight.data.abs().float() * in_norm.to(lin.weight.device).float()[None, :]


def prune_semi_structured_24(model, cal: Calibration, sparsity: float = 0.5) -> PruneResult:
    """In every group of 4 consecutive input weights of each decoder linear, keep the 2 of
    highest Wanda score (the sparsity is fixed at 0.5 whatever is asked)."""
    import torch

    zeros = total = 0
    skipped = []
    for name, lin in decoder_linears(model).items():
        n_out, k_in = lin.weight.shape
        total += lin.weight.numel()
        if k_in % 4:
            skipped.append(name)
            continue
        s = wanda_scores(lin, cal.in_norm(name)).reshape(n_out, k_in // 4, 4)
        keep = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, torch.topk(s, 2, dim=-1).indices, True)
        lin.weight.data.mul_(keep.reshape(n_out, k_in).to(lin.weight.dtype))
        zeros += int((~keep).sum())
    note = "2:4 by Wanda score"
    if skipped:
        note += f"; {len(skipped)} linears skipped (input size not a multiple of 4)"
    return PruneResult("semi_structured_24", sparsity, zeros / max(total, 1), note=note)


def prune_unstructured(model, sparsity: float, cal: Calibration) -> PruneResult:
    """Zero, in each output row of each decoder linear, the floor(s·K + 0.5) weights of lowest
    Wanda score."""
    import torch

    zeros = total = 0
    for name, lin in decoder_linears(model).items():
        n_out, k_in = lin.weight.shape
        total += lin.weight.numel()
        k = min(round_half_up(sparsity * k_in), k_in)
        if k == 0:
            continue
        s = wanda_scores(lin, cal.in_norm(name))
        idx = torch.topk(s, k, dim=1, largest=False).indices
        mask = torch.ones_like(s, dtype=torch.bool).scatter_(1, idx, False)
        lin.weight.data.mul_(mask.to(lin.weight.dtype))
        zeros += n_out * k
    return PruneResult("unstructured", sparsity, zeros / max(total, 1),
                       note="Wanda |W|·‖X‖ per row")


def apply_masks(built, seed: int) -> None:
    """unstructured: zero a share s of each decoder weight; 2:4: keep 2 of every 4 along K
    (and switch to the semi-structured sparse kernel where this device has one)."""
    import torch

    fam, s = built.strategy.family, built.strategy.effective_sparsity
    g = torch.Generator().manual_seed(seed + 1)
    pool_n = 1 << 16
    if fam == "unstructured":
        pool = torch.rand(pool_n, generator=g) >= s
    else:
        patterns = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1],
                                 [0, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]], dtype=torch.bool)
        pool = patterns[torch.randint(0, 6, (pool_n // 4,), generator=g)].reshape(-1)
    pool = pool.to(built.device)
    if built.spec.moe is not None:  # attention, dense-layer and shared-expert linears
        from .modules import moe_linears

        linears = list(moe_linears(built.model).items())
    else:
        linears = list(decoder_linears(built.model).items())
    with torch.no_grad():
        for _, lin in linears:
            w = lin.weight
            flat = w.view(-1)
            k, r = flat.numel() // pool_n, flat.numel() % pool_n
            if k:
                flat[: k * pool_n].view(k, pool_n).mul_(pool.expand(k, pool_n).to(w.dtype))
            if r:
                flat[k * pool_n:].mul_(pool[:r].to(w.dtype))
    if fam != "semi_structured_24":
        built.notes.append(f"unstructured: {s:.0%} of decoder weights zeroed; dense kernels run")
        return
    ok, why = _semi_structured_supported(built)
    if ok:
        from torch.sparse import to_sparse_semi_structured

        try:
            for _, lin in linears:
                lin.weight = torch.nn.Parameter(to_sparse_semi_structured(lin.weight.detach()),
                                                requires_grad=False)
            built.sparse_kernel = True
            built.notes.append("2:4: torch semi-structured sparse kernels")
            return
        except (RuntimeError, ValueError, TypeError) as e:  # pragma: no cover - GPU only
            why = f"to_sparse_semi_structured failed ({str(e).splitlines()[0][:120]})"
    built.sparse_kernel = False
    built.notes.append(f"2:4 unsupported on this device: runs dense ({why})")


def _semi_structured_supported(built) -> tuple[bool, str]:
    import torch

    if not str(built.device).startswith("cuda") or not torch.cuda.is_available():
        return False, "no CUDA device"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return False, "needs compute capability 8.0+"
    if built.dtype not in ("bf16", "fp16"):
        return False, "2:4 kernels need bf16/fp16"
    return True, ""

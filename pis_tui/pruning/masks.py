"""Weight masks by Wanda scores: 2:4 and unstructured sparsity."""

from __future__ import annotations

from ..layer_ops import round_half_up
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

"""Quality oracles for the dynamic families: sublayer updates skipped per token (dynamic
depth), block-sparse causal attention (dynamic sparse attention)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.layer import round_half_up
from .layout import decoder_layers, first_tensor
from .result import PruneResult

# ---------------------------------------------------------------------------------------------
# dynamic_depth (oracle)
# ---------------------------------------------------------------------------------------------

@dataclass
class SkipTracker:
    """Counts (sublayer, token) pairs skipped and seen."""

    skipped: int = 0
    total: int = 0
    handles: list = field(default_factory=list)

    def share(self) -> float:
        return self.skipped / self.total if self.total else 0.0

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def enable_dynamic_depth(model, sparsity: float) -> PruneResult:
    """Per sequence and per sublayer (every attention and MLP block), zero the update of the
    floor(s·T + 0.5) tokens with the smallest ‖f(x)‖.  A quality oracle, not a speed path:
    every update is still computed, and the ranking looks at the whole window."""
    import torch

    tracker = SkipTracker()

    def hook(mod, args, out):
        upd = first_tensor(out)
        if upd.dim() != 3:
            return out
        b, t, _ = upd.shape
        k = min(round_half_up(sparsity * t), t)
        tracker.total += b * t
        if k == 0:
            return out
        norms = upd.float().norm(dim=-1)  # [B, T]
        idx = torch.topk(norms, k, dim=-1, largest=False).indices
        keep = torch.ones_like(norms, dtype=torch.bool).scatter_(-1, idx, False)
        tracker.skipped += b * k
        new = upd * keep.unsqueeze(-1).to(upd.dtype)
        if isinstance(out, tuple):
            return (new,) + tuple(out[1:])
        return new

    for layer in decoder_layers(model):
        tracker.handles.append(layer.self_attn.register_forward_hook(hook))
        tracker.handles.append(layer.mlp.register_forward_hook(hook))
    return PruneResult("dynamic_depth", sparsity, sparsity, tracker=tracker,
                       note="oracle: smallest-norm sublayer updates zeroed per token")


# ---------------------------------------------------------------------------------------------
# dynamic_sparse_attention (oracle)
# ---------------------------------------------------------------------------------------------

#: the oracle's name with transformers' AttentionInterface: not validate's gather-based timing
#: path (:data:`pis_tui.hf.attention.BLOCK_SPARSE_IMPL`), whose name it once shared, so that
#: whichever was registered last ran under both
_BSA_NAME = "pis_block_sparse_oracle"


@dataclass
class BlockTracker:
    skipped: int = 0
    total: int = 0

    def share(self) -> float:
        return self.skipped / self.total if self.total else 0.0

    def remove(self) -> None:
        pass


def _block_sparse_oracle(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal attention restricted, per query block and head, to the top (1−s) causal key blocks
    by pooled (mean) q·k score, the diagonal block always kept.  The padding mask is ignored:
    pis-tui only feeds contiguous unpadded windows."""
    import torch

    cfgd = getattr(module, "_pis_bsa", None)
    rep = getattr(module, "num_key_value_groups", 1)
    if rep > 1:
        b_, h_, s_, d_ = key.shape
        key = key[:, :, None].expand(b_, h_, rep, s_, d_).reshape(b_, h_ * rep, s_, d_)
        value = value[:, :, None].expand(b_, h_, rep, s_, d_).reshape(b_, h_ * rep, s_, d_)
    bsz, heads, t, d = query.shape
    s_len = key.shape[2]
    scaling = scaling if scaling is not None else d ** -0.5
    qf, kf, vf = query.float(), key.float(), value.float()
    scores = torch.matmul(qf, kf.transpose(2, 3)) * scaling
    off = s_len - t
    qpos = torch.arange(t, device=query.device)[:, None] + off
    kpos = torch.arange(s_len, device=query.device)[None, :]
    allowed = kpos <= qpos  # [T, S]
    if cfgd is not None and cfgd["sparsity"] > 0 and t == s_len and t > cfgd["block"]:
        blk, sp, tracker = cfgd["block"], cfgd["sparsity"], cfgd["tracker"]
        nb = -(-t // blk)
        pad = nb * blk - t
        qp = torch.nn.functional.pad(qf, (0, 0, 0, pad))
        kp = torch.nn.functional.pad(kf, (0, 0, 0, pad))
        counts = torch.full((nb,), float(blk), device=query.device)
        counts[-1] = blk - pad
        qpool = qp.reshape(bsz, heads, nb, blk, d).sum(3) / counts[:, None]
        kpool = kp.reshape(bsz, heads, nb, blk, d).sum(3) / counts[:, None]
        bscore = torch.matmul(qpool, kpool.transpose(2, 3))  # [B, H, nb, nb]
        bi = torch.arange(nb, device=query.device)
        causal_b = bi[None, :] <= bi[:, None]
        diag = bi[None, :] == bi[:, None]
        bscore = bscore.masked_fill(~causal_b, float("-inf")).masked_fill(diag, float("inf"))
        n_causal = bi + 1
        n_keep = torch.clamp(torch.floor((1 - sp) * n_causal.float() + 0.5).long(), min=1)
        rank = torch.argsort(torch.argsort(bscore, dim=-1, descending=True), dim=-1)
        keep_b = (rank < n_keep[:, None]) & causal_b  # [B, H, nb, nb]
        tracker.total += bsz * heads * int(n_causal.sum())
        tracker.skipped += bsz * heads * int(n_causal.sum()) - int(keep_b.sum())
        keep_tok = keep_b.repeat_interleave(blk, dim=2).repeat_interleave(blk, dim=3)[:, :, :t, :t]
        allowed = allowed & keep_tok
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, vf).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def enable_block_sparse_attention(model, sparsity: float, block: int = 64) -> PruneResult:
    """Switch every attention to :func:`_block_sparse_oracle` keeping 1−s of causal blocks."""
    from transformers import AttentionInterface

    AttentionInterface.register(_BSA_NAME, _block_sparse_oracle)
    tracker = BlockTracker()
    for layer in decoder_layers(model):
        layer.self_attn._pis_bsa = {"sparsity": sparsity, "block": int(block), "tracker": tracker}
    model.config._attn_implementation = _BSA_NAME
    return PruneResult("dynamic_sparse_attention", sparsity, sparsity, tracker=tracker,
                       note=f"oracle: top blocks by pooled q·k, {block}-token blocks")

"""Attention implementations registered with transformers: plain SDPA without mask
construction, and gather-based block-sparse attention."""

from __future__ import annotations

import math

from ..model.layer import ATTN_BLOCK

ATTN_IMPL = "pis_sdpa"  # SDPA without transformers' mask construction (see register_attention)
BLOCK_SPARSE_IMPL = "pis_block_sparse"
BLOCK = ATTN_BLOCK


# ------------------------------------------------------------------ attention implementations

_REGISTERED = False


def register_attention() -> None:
    """Register two attention implementations with transformers' ``AttentionInterface``:

    * ``pis_sdpa``: transformers' own SDPA function.  Being unknown to the mask interface, it
      makes transformers skip building masks: prefill runs SDPA's causal kernel (what the default
      path does without padding) and a decode step attends to its whole, exactly full cache.
    * ``pis_block_sparse``: block-sparse attention (see :func:`_block_sparse_attention`).
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register(ATTN_IMPL, sdpa_attention_forward)
    AttentionInterface.register(BLOCK_SPARSE_IMPL, _block_sparse_attention)
    _REGISTERED = True


def _block_sparse_attention(module, query, key, value, attention_mask, dropout=0.0,
                            scaling=None, **kwargs):
    """Keep ``module.pis_keep`` of the causal 64-token key blocks of each query block.

    Block scores are the dot products of mean-pooled query and key blocks (summed over the
    query heads of a GQA group); each query block keeps its diagonal block plus the best others,
    ``max(1, ceil(keep × visible))`` in all (the taxonomy's count).  The kept key/value blocks
    are gathered and SDPA runs over them.  In decode the pooled keys of a cache are computed once
    and reused (a real implementation keeps them beside the cache).
    """
    import torch
    import torch.nn.functional as F

    keep = float(getattr(module, "pis_keep", 1.0))
    B, Hq, Sq, D = query.shape
    Hkv, Skv = key.shape[1], key.shape[2]
    group = Hq // Hkv
    if keep >= 1.0:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout,
                                      scaling=scaling, **kwargs)
    nk = math.ceil(Skv / BLOCK)
    pad = nk * BLOCK - Skv
    qg = query.view(B, Hkv, group, Sq, D)

    def pooled_keys():
        cache_key = (key.data_ptr(), tuple(key.shape))
        hit = getattr(module, "_pis_pooled", None)
        if Sq == 1 and hit is not None and hit[0] == cache_key:
            return hit[1]
        kp = F.pad(key, (0, 0, 0, pad)) if pad else key
        pk = kp.view(B, Hkv, nk, BLOCK, D).mean(dim=3)  # [B,Hkv,nk,D]
        if Sq == 1:
            module._pis_pooled = (cache_key, pk)
        return pk

    pk = pooled_keys()
    tok = torch.arange(BLOCK, device=query.device)
    if Sq == 1:
        n_keep = max(1, math.ceil(keep * nk - 1e-9))
        scores = torch.einsum("bhgd,bhnd->bhn", qg[:, :, :, 0], pk)  # block_score
        blocks = torch.topk(scores, n_keep, dim=-1).indices  # [B,Hkv,n_keep]
        pos = (blocks.unsqueeze(-1) * BLOCK + tok).reshape(B, Hkv, -1)
        valid = pos < Skv
        pos = pos.clamp_max(Skv - 1)
        idx = pos.unsqueeze(-1).expand(-1, -1, -1, D)
        ks, vs = key.gather(2, idx), value.gather(2, idx)
        mask = valid.unsqueeze(2)  # [B,Hkv,1,T]
        out = F.scaled_dot_product_attention(query, ks, vs, attn_mask=mask.repeat_interleave(group, 1),
                                             scale=scaling, enable_gqa=group > 1)
        return out.transpose(1, 2).contiguous(), None
    # prefill: loop over query blocks
    nq = math.ceil(Sq / BLOCK)
    off = nk - nq
    qpad = nq * BLOCK - Sq
    qp = F.pad(qg, (0, 0, 0, qpad)) if qpad else qg
    pq = qp.view(B, Hkv, group, nq, BLOCK, D).mean(dim=(2, 4))  # [B,Hkv,nq,D] block_pool
    scores = torch.einsum("bhqd,bhkd->bhqk", pq, pk)  # block_score
    outs = []
    for i in range(nq):
        visible = min(nk, off + i + 1)
        n_keep = max(1, math.ceil(keep * visible - 1e-9))
        diag = off + i
        q_i = query[:, :, i * BLOCK:min(Sq, (i + 1) * BLOCK)]
        if n_keep > 1:
            others = torch.topk(scores[:, :, i, :diag], n_keep - 1, dim=-1).indices
            blocks = torch.cat([others, torch.full_like(others[..., :1], diag)], dim=-1)
        else:
            blocks = torch.full((B, Hkv, 1), diag, device=query.device, dtype=torch.long)
        pos = (blocks.unsqueeze(-1) * BLOCK + tok).reshape(B, Hkv, -1)
        qpos = (diag * BLOCK + torch.arange(q_i.shape[2], device=query.device)) - (off * BLOCK) \
            + (Skv - Sq)
        allowed = (pos.unsqueeze(2) <= qpos.view(1, 1, -1, 1)) & (pos.unsqueeze(2) < Skv)
        pos = pos.clamp_max(Skv - 1)
        idx = pos.unsqueeze(-1).expand(-1, -1, -1, D)
        ks, vs = key.gather(2, idx), value.gather(2, idx)
        o = F.scaled_dot_product_attention(q_i, ks, vs, attn_mask=allowed.repeat_interleave(group, 1),
                                           scale=scaling, enable_gqa=group > 1)
        outs.append(o)
    out = torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None

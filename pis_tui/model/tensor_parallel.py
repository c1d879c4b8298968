"""Tensor parallelism: how a model's heads, channels and vocabulary split over the ranks of one
node, the way vLLM, SGLang and TensorRT-LLM serve a model too big for one GPU.

``Scenario.tp`` = N makes every op list one rank's (:mod:`pis_tui.model.layer`):

* **column-parallel** q/k/v and gate/up: each rank computes N/tp of the outputs (its query
  heads, its KV heads, its MLP channels); **row-parallel** o and down: K/tp of the inputs,
  followed by an **all-reduce** of the M × hidden output (two per layer);
* **KV heads**: kv/tp per rank when kv ≥ tp; below that every rank holds one KV head,
  replicated over tp/kv ranks (vLLM's ``QKVParallelLinear``): the KV cache per rank stops
  shrinking once tp passes the KV heads;
* **vocab-parallel** embedding (each rank looks up its rows of the table, then an all-reduce of
  M × hidden) and lm_head (each rank its share of the logits, then an all-gather of batch ×
  vocabulary), the vocabulary padded to a multiple of 64 (vLLM's ``pad_vocab_size``);
* norms, rotary tables, residual adds, routers and SliceGPT's residual mappings run whole on
  every rank (the residual stream is replicated).

A degree must divide the query heads and the KV heads (or be a multiple of them: replication)
and the MLP channels; otherwise it is one clear line (:func:`check_model`).  Pure functions:
no torch, no I/O.
"""

from __future__ import annotations

import math

from ..errors import UserError

#: the degrees offered: the GPUs of one node (2 to 8) or none
DEGREES = (1, 2, 4, 8)
#: the vocabulary is padded to a multiple of this before it is split (vLLM's DEFAULT_VOCAB_PADDING_SIZE)
VOCAB_PADDING = 64


def check_degree(tp) -> int:
    """``tp`` as an int, or a UserError naming the degrees offered."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp not in DEGREES:
        raise UserError(f"--tp {tp!r}: tensor parallelism over {', '.join(map(str, DEGREES))} "
                        "GPUs of one node is offered (1: none)")
    return tp


def heads_ok(q_heads: int, kv_heads: int, tp: int) -> bool:
    """Whether ``tp`` ranks can split these heads: the query heads evenly, the KV heads evenly,
    or, with fewer KV heads than ranks, each KV head replicated over tp/kv ranks (then every
    rank's query heads belong to its one KV head, which q % tp == 0 ensures)."""
    if tp == 1:
        return True
    if q_heads % tp:
        return False
    return kv_heads % tp == 0 if kv_heads >= tp else tp % kv_heads == 0


def rank_heads(q_heads: int, kv_heads: int, tp: int) -> tuple[int, int, int]:
    """(query heads, KV heads, replicas of each KV head) of one rank."""
    if tp == 1:
        return q_heads, kv_heads, 1
    if kv_heads >= tp:
        return q_heads // tp, kv_heads // tp, 1
    return q_heads // tp, 1, tp // kv_heads


def kv_shards(kv_heads: int, tp: int) -> int:
    """Distinct shards of the k/v weights over the ranks (tp, or the KV heads when they are
    replicated)."""
    return min(tp, kv_heads)


def vocab_per_rank(vocab: int, tp: int) -> int:
    """Rows of the embedding table (and lm_head outputs) one rank holds."""
    if tp == 1:
        return vocab
    return math.ceil(vocab / VOCAB_PADDING) * VOCAB_PADDING // tp


def padded_vocab(vocab: int, tp: int) -> int:
    return vocab if tp == 1 else vocab_per_rank(vocab, tp) * tp


def degrees_for(q_heads: int, kv_heads: int, inter: int) -> list[int]:
    """The degrees of :data:`DEGREES` that can split these heads and MLP channels."""
    return [d for d in DEGREES if heads_ok(q_heads, kv_heads, d) and inter % d == 0]


def check_model(spec, tp: int) -> None:
    """The dense model splits over ``tp`` ranks, else a UserError (one line, exit 2) saying what
    does not divide and which degrees would."""
    check_degree(tp)
    if tp == 1:
        return
    q, kv, i = spec.num_heads, spec.num_kv_heads, spec.intermediate_size
    bad = []
    moe = getattr(spec, "moe", None)
    if moe is not None:  # every rank holds every expert's slice of I (vLLM's TP for MoE)
        for width, what in ((moe.expert_inter, "expert channels"), (moe.shared_inter, "shared-expert channels")):
            if width and width % tp:
                bad.append(f"its {width} {what}")
    if q % tp:
        bad.append(f"its {q} query heads")
    elif not heads_ok(q, kv, tp):
        bad.append(f"its {kv} KV heads (nor is {tp} a multiple of them, for replication)")
    if i % tp:
        bad.append(f"its {i} MLP channels")
    if bad:
        ok = degrees_for(q, kv, i)
        raise UserError(f"--tp {tp}: {tp} does not divide {' or '.join(bad)} ({spec.name}: "
                        f"{q} query heads, {kv} KV heads); tensor parallelism splits them across "
                        f"the ranks: use --tp {' or '.join(map(str, ok))}")


def valid_kv_groups(kv_heads: int, group: int, tp: int) -> list[int]:
    """KV groups (each of ``group`` query heads) a width-pruned model may keep at degree ``tp``:
    a multiple of tp (every rank whole groups: query heads a multiple of tp × group), or,
    fewer than tp, a divisor of it (each KV head replicated over tp/g ranks)."""
    return [g for g in range(1, kv_heads + 1) if heads_ok(g * group, g, tp)]


def nearest_valid(target: int, valid: list[int]) -> int:
    """The valid count nearest ``target`` (a tie keeps the larger: less is removed)."""
    return min(valid, key=lambda g: (abs(g - target), -g))

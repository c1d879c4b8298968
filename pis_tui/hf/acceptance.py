"""Acceptance rates of a pruned draft against its dense model, measured over a text.

At each scored position of the text (the same strided windows as perplexity), the dense model's
next-token distribution p and the draft's q, both at the sampling temperature T:

* greedy acceptance: 1 when argmax q = argmax p (speculative greedy decoding accepts the
  drafted token exactly when the dense model would have chosen it);
* sampling acceptance: Σ_v min(p(v), q(v)) (speculative sampling accepts a token drawn from q
  with probability min(1, p/q); summed over q it is this overlap, Leviathan et al. 2023).

Their means over the positions are α under the i.i.d. model, with standard errors from the
positions' spread (neighbouring positions are correlated, so the errors are a lower bound).
The contexts are the text's (teacher forcing), not the model's own generations: a text unlike
what the model will be asked to continue gives a different α.  Random weights give
meaningless rates: this is for a real model's weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class AcceptanceResult:
    greedy: float
    greedy_se: float
    sampling: float
    sampling_se: float
    temperature: float
    positions: int

    def to_row(self) -> dict:
        """The keys the cache keeps beside a point's perplexity (:mod:`pis_tui.quality.acceptance`
        reads them)."""
        return {"greedy_acceptance": self.greedy, "greedy_acceptance_se": self.greedy_se,
                "sampling_acceptance": self.sampling, "sampling_acceptance_se": self.sampling_se,
                "temperature": self.temperature, "positions": self.positions}


class _Sums:
    def __init__(self):
        self.n = 0
        self.g = self.g2 = self.s = self.s2 = 0.0

    def add(self, greedy, overlap) -> None:
        self.n += int(greedy.numel())
        self.g += float(greedy.sum())
        self.g2 += float((greedy * greedy).sum())
        self.s += float(overlap.sum())
        self.s2 += float((overlap * overlap).sum())

    def result(self, temperature: float) -> AcceptanceResult:
        def mean_se(total, squares):
            m = total / self.n
            var = max(0.0, squares / self.n - m * m)
            return m, math.sqrt(var / self.n) if self.n > 1 else 0.0
        g, gse = mean_se(self.g, self.g2)
        s, sse = mean_se(self.s, self.s2)
        return AcceptanceResult(g, gse, s, sse, temperature, self.n)


def position_rates(p_logits, q_logits, temperature: float = 1.0):
    """(greedy [n], overlap [n]) for logits [n, V] of the dense model (p) and the draft (q)."""
    import torch

    if p_logits.shape != q_logits.shape:
        raise ValueError(f"logits of different shapes: {tuple(p_logits.shape)} and {tuple(q_logits.shape)}")
    if not temperature > 0:
        raise ValueError("the temperature must be positive")
    p32, q32 = p_logits.double(), q_logits.double()
    greedy = (p32.argmax(-1) == q32.argmax(-1)).double()
    p = torch.softmax(p32 / temperature, dim=-1)
    q = torch.softmax(q32 / temperature, dim=-1)
    overlap = torch.minimum(p, q).sum(-1)
    return greedy, overlap


def rates_from_logits(p_logits, q_logits, temperature: float = 1.0) -> AcceptanceResult:
    """Both rates over positions given as logits [n, V] (tests, and one batch of windows)."""
    sums = _Sums()
    sums.add(*position_rates(p_logits.reshape(-1, p_logits.shape[-1]),
                             q_logits.reshape(-1, q_logits.shape[-1]), temperature))
    return sums.result(temperature)


def measure(dense, draft, ids, *, seq_len: int = 512, stride: Optional[int] = None,
            temperature: float = 1.0,
            on_progress: Optional[Callable[[int, int], None]] = None) -> AcceptanceResult:
    """Both rates of ``draft`` against ``dense`` over the token ids ``ids`` (1-D), window by
    window (each window's logits of both models, then dropped)."""
    import torch

    from .perplexity import _to_ids, make_windows

    ids = _to_ids(ids, None)
    wins = make_windows(int(ids.numel()), seq_len, stride)
    if not wins:
        raise ValueError("need at least 2 tokens to measure acceptance")
    dev = next(dense.parameters()).device
    sums = _Sums()
    dense.eval()
    draft.eval()
    with torch.inference_mode():
        for i, w in enumerate(wins):
            x = ids[w.begin:w.end].unsqueeze(0).to(dev)
            k = w.n_scored
            p = dense(input_ids=x, use_cache=False).logits[0, -k - 1:-1]
            q = draft(input_ids=x, use_cache=False).logits[0, -k - 1:-1]
            sums.add(*position_rates(p, q, temperature))
            if on_progress:
                on_progress(i + 1, len(wins))
    return sums.result(temperature)

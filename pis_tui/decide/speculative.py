"""Self-speculative decoding: a pruned model drafts γ tokens, the dense model checks them in one
pass, and the output stays the dense model's (greedy: identical; sampling: the same
distribution; up to numerics).  Lossless: a speedup with no quality cost.

The cost model (:data:`RULE`):

* acceptance: each drafted token is accepted with probability α, independently, until the first
  rejection (Leviathan et al., 2023, arXiv 2211.17192); an iteration emits X tokens, the
  accepted ones plus the one the verification computes itself: P(X = j) = α^(j−1)(1 − α) for
  j ≤ γ, P(X = γ + 1) = α^γ, so E[X] = (1 − α^(γ+1)) / (1 − α);
* one iteration costs γ draft decode steps at decode batch B (the draft's own op list) plus one
  verification: the dense model's forward of γ + 1 tokens per sequence (M = B·(γ + 1) in every
  GEMM, attention over the context and those tokens, every token's logits); the caches are
  rolled back to the accepted tokens (a pointer move in a paged or static cache: no kernel);
* static batching: a batch's sequences iterate together until the last one has its O tokens,
  so a batch takes E[max over its B sequences of the iterations each needs] iterations, not
  O / E[X] (:func:`batch_iterations`, exact for i.i.d. acceptance);
* the draft: a layer-skipping draft (static or dynamic depth) runs the dense model's own
  weights (no extra weight memory); any other draft (width, rank…) holds its own copy.  A
  static-depth draft is taken as an early exit (the dense model's first layers, as LayerSkip
  and Kangaroo draft): its layers' KV cache is the dense model's, so it needs neither a cache
  nor a prefill of its own; any other draft keeps its own cache and prefills the prompt
  itself.  The verification is priced as the dense model's full forward of the γ + 1 tokens
  (an early-exit implementation that reuses the draft's first-layer KV does less: the estimate
  is conservative there).

No torch: arithmetic over the step times the estimator prices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

#: γ, the drafted tokens per iteration, a plan tries
GAMMAS = (1, 2, 3, 4, 5, 6, 8)
#: the drafts a plan tries unless told otherwise: layer skipping (an early exit), which shares
#: the dense model's weights and cache
DEFAULT_DRAFTS = (("static_depth", 0.25), ("static_depth", 0.5), ("static_depth", 0.75))

RULE = (
    "self-speculative decoding: each of γ drafted tokens is accepted with probability α, "
    "independently, until the first rejection (Leviathan et al. 2023); an iteration costs γ "
    "draft decode steps plus one verification (the dense model over γ+1 tokens a sequence, "
    "its logits for each; the cache rolled back to the accepted tokens, a pointer move) and "
    "emits (1 − α^(γ+1)) / (1 − α) tokens on average; under static batching a batch iterates "
    "until its slowest sequence has its O tokens (the expected maximum over the batch of the "
    "iterations each needs); a static-depth draft is an early exit sharing the dense model's "
    "weights, KV cache and prefill, any other draft prefills into a cache of its own (and a "
    "width or rank draft holds its own weights); no tree drafting")

#: families whose drafts run the dense model's own weights (a subset of its layers)
SHARES_WEIGHTS = ("static_depth", "dynamic_depth")
#: families whose drafts are an early exit (the first layers): the dense model's KV cache and
#: prefill serve them too
EARLY_EXIT = ("static_depth",)


def check_alpha(alpha: float) -> float:
    a = float(alpha)
    if not (0.0 <= a < 1.0) or math.isnan(a):
        raise ValueError(f"acceptance rate {alpha!r} outside [0, 1)")
    return a


def expected_tokens(alpha: float, gamma: int) -> float:
    """E[X]: tokens one verification emits, (1 − α^(γ+1)) / (1 − α)."""
    a = check_alpha(alpha)
    if gamma < 0:
        raise ValueError("γ must be ≥ 0")
    return (1.0 - a ** (gamma + 1)) / (1.0 - a)


def tokens_pmf(alpha: float, gamma: int) -> tuple[float, ...]:
    """P(X = j) for j = 1 … γ+1 (index j − 1)."""
    a = check_alpha(alpha)
    out = [a ** (j - 1) * (1.0 - a) for j in range(1, gamma + 1)]
    out.append(a ** gamma)
    return tuple(out)


@lru_cache(maxsize=4096)
def _iterations_cdf(alpha: float, gamma: int, tokens: int, limit: int) -> tuple[float, ...]:
    """P(N ≤ n) for n = 0 … limit, N the iterations one sequence needs to emit ``tokens``: the
    first n at which the running sum of i.i.d. X reaches ``tokens`` (a dynamic program over the
    tokens still missing)."""
    import numpy as np

    pmf_rev = np.array(tokens_pmf(alpha, gamma)[::-1])
    L = len(pmf_rev)
    # a[i]: the probability that i + 1 tokens are still missing after n iterations; one
    # iteration moves mass from i to i − j (j = 1 … γ+1 tokens, P(X = j)): a convolution whose
    # first L terms are the mass that has finished (index below 0)
    a = np.zeros(tokens)
    a[-1] = 1.0
    done = 0.0
    cdf = [0.0]
    for _ in range(limit):
        c = np.convolve(a, pmf_rev)
        done += float(c[:L].sum())
        a = c[L:]
        cdf.append(min(1.0, done))
        if done >= 1.0 - 1e-13 or not a.size:
            break
    return tuple(cdf)


def batch_iterations(alpha: float, gamma: int, tokens: int, batch: int) -> float:
    """E[max over ``batch`` sequences of N]: the iterations a static batch runs until its last
    sequence has ``tokens`` tokens (each sequence's N i.i.d.).  ``batch`` 1: E[N]."""
    a = check_alpha(alpha)
    if tokens <= 0:
        return 0.0
    if a == 0.0 or gamma == 0:
        return float(tokens)  # one token an iteration
    cdf = _iterations_cdf(round(a, 12), gamma, tokens, tokens)
    # E[max] = Σ_{n ≥ 0} (1 − P(N ≤ n)^B); N ≤ tokens always (each iteration emits ≥ 1)
    return sum(1.0 - c ** batch for c in cdf)


def alpha_from_mean(mean_accepted: float, gamma: int) -> float:
    """The α whose (1 − α^(γ+1)) / (1 − α) is ``mean_accepted`` (tokens per verification, the
    bonus token included), by bisection."""
    if not 1.0 <= mean_accepted <= gamma + 1:
        raise ValueError(f"mean accepted {mean_accepted} outside [1, γ+1 = {gamma + 1}]")
    lo, hi = 0.0, 1.0 - 1e-12
    for _ in range(200):
        mid = (lo + hi) / 2
        if expected_tokens(mid, gamma) < mean_accepted:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class SpecTiming:
    """One speculative configuration at one batch: the times a batch of B answers takes."""

    gamma: int
    alpha: float
    iteration_ms: float  # γ draft steps + one verification
    draft_step_ms: float
    verify_ms: float
    iterations: float  # per batch (the slowest sequence's)
    tokens_per_iteration: float  # E[X]
    decode_ms: float  # the batch's decode time: iterations × iteration_ms

    def tpot_ms(self, output_len: int) -> float:
        """Time per output token of the batch (its decode time over O)."""
        return self.decode_ms / output_len


def spec_timing(alpha: float, gamma: int, output_len: int, batch: int, draft_step_ms: float,
                verify_ms: float) -> SpecTiming:
    """The decode time of a static batch of ``batch`` answers of ``output_len`` tokens, from
    the (context-averaged) draft step and verification times."""
    it = draft_step_ms * gamma + verify_ms
    n = batch_iterations(alpha, gamma, output_len, batch)
    return SpecTiming(gamma, alpha, it, draft_step_ms, verify_ms, n, expected_tokens(alpha, gamma),
                      n * it)

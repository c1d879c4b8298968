"""Perplexity of a causal LM over a text (or a list of token ids), in strided windows.

Windows: the first covers tokens [0, seq_len) and scores tokens 1..seq_len−1; each next
one ends ``stride`` tokens later, starts at most ``seq_len`` tokens before its end, and
scores only the tokens no earlier window scored, so every token but the first is scored
exactly once, with up to ``seq_len − stride`` tokens of extra context.  ``stride`` defaults
to ``seq_len − 1`` (disjoint windows sharing one token: the cheapest full coverage); a
smaller stride gives more context per scored token at more compute.

ppl = exp(Σ NLL / scored tokens), accumulated in float64.  Progress is reported per
window batch through ``on_progress(done, total)``; ``cancel`` (a ``threading.Event`` or a
callable returning True) stops between batches by raising :class:`Cancelled`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from ..errors import UserError


class Cancelled(Exception):
    """Raised when a measurement is cancelled between two window batches."""


def _check_cancel(cancel) -> None:
    if cancel is None:
        return
    flag = cancel.is_set() if hasattr(cancel, "is_set") else bool(cancel())
    if flag:
        raise Cancelled("cancelled")


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    n_tokens: int  # tokens scored
    n_windows: int
    seq_len: int
    stride: int


@dataclass(frozen=True)
class Window:
    begin: int
    end: int
    score_from: int  # first scored position (absolute); targets score_from..end-1

    @property
    def n_scored(self) -> int:
        return self.end - self.score_from


def make_windows(n_tokens: int, seq_len: int, stride: Optional[int] = None) -> list[Window]:
    """The strided windows over ``n_tokens`` (see the module docstring)."""
    if seq_len < 2:
        raise UserError(f"sequence length must be at least 2, got {seq_len}")
    stride = seq_len - 1 if stride is None else int(stride)
    if stride < 1:
        raise UserError(f"stride must be positive, got {stride}")
    stride = min(stride, seq_len - 1)
    if n_tokens < 2:
        return []
    out = []
    end = min(seq_len, n_tokens)
    out.append(Window(0, end, 1))
    while end < n_tokens:
        new_end = min(end + stride, n_tokens)
        begin = max(0, new_end - seq_len)
        out.append(Window(begin, new_end, end))
        end = new_end
    return out


def tokenize(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` (with the tokenizer's special tokens, e.g. a leading BOS)."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return [int(i) for i in ids]


def _to_ids(tokens, tokenizer):
    """A 1-D LongTensor of token ids on the CPU."""
    import torch

    if isinstance(tokens, str):
        if tokenizer is None:
            raise UserError("a text needs a tokenizer (or pass token ids)")
        return torch.tensor(tokenize(tokenizer, tokens), dtype=torch.long)
    if isinstance(tokens, torch.Tensor):
        return tokens.reshape(-1).long().cpu()
    return torch.tensor(list(tokens), dtype=torch.long)


def _as_windows(windows):
    """A list of 1-D/2-D LongTensors from a tensor [n, T], a list of token lists, or tensors."""
    import torch

    if isinstance(windows, torch.Tensor):
        return [windows] if windows.dim() == 1 else list(windows.unbind(0))
    out = []
    for w in windows:
        out.append(w if isinstance(w, torch.Tensor) else torch.tensor(list(w), dtype=torch.long))
    return out


def calibration_windows(ids: Sequence[int], seq_len: int):
    """Non-overlapping windows of ``ids`` of length ``seq_len`` (the last may be shorter, but
    windows shorter than 2 tokens are dropped) for importance calibration."""
    import torch

    t = ids if isinstance(ids, torch.Tensor) else torch.tensor(list(ids), dtype=torch.long)
    return [t[i:i + seq_len] for i in range(0, len(t), seq_len) if len(t[i:i + seq_len]) >= 2]


def perplexity(model, tokens: Union[str, Sequence[int], "object"], *, tokenizer=None, seq_len: int = 512,
               stride: Optional[int] = None, batch_size: int = 1,
               on_progress: Optional[Callable[[int, int], None]] = None, cancel=None) -> PerplexityResult:
    """Perplexity of ``model`` on ``tokens`` (a text with ``tokenizer``, or token ids)."""
    import torch

    ids = _to_ids(tokens, tokenizer)
    n = int(ids.numel())
    if n < 2:
        raise UserError(f"need at least 2 tokens to measure perplexity, got {n}")
    wins = make_windows(n, seq_len, stride)
    # batch windows of equal length (all but possibly the first and last share seq_len)
    batches: list[list[Window]] = []
    for w in wins:
        if batches and len(batches[-1]) < batch_size and \
                batches[-1][0].end - batches[-1][0].begin == w.end - w.begin and \
                batches[-1][0].n_scored == w.n_scored:
            batches[-1].append(w)
        else:
            batches.append([w])
    device = next(model.parameters()).device
    model.eval()
    total_nll = 0.0
    scored = 0
    done = 0
    if on_progress:
        on_progress(0, len(wins))
    with torch.inference_mode():
        for batch in batches:
            _check_cancel(cancel)
            x = torch.stack([ids[w.begin:w.end] for w in batch]).to(device)
            k = batch[0].n_scored
            keep = k + 1
            try:
                logits = model(input_ids=x, use_cache=False, logits_to_keep=keep).logits
            except TypeError:
                logits = model(input_ids=x, use_cache=False).logits
            logits = logits[:, -keep:-1, :].float()
            targets = x[:, -k:]
            logp = torch.log_softmax(logits, dim=-1)
            nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            total_nll += float(nll.double().sum())
            scored += targets.numel()
            done += len(batch)
            if on_progress:
                on_progress(done, len(wins))
    mean = total_nll / scored
    return PerplexityResult(ppl=math.exp(mean) if mean < 700 else float("inf"), nll=mean, n_tokens=scored,
                            n_windows=len(wins), seq_len=seq_len, stride=min(stride or seq_len - 1, seq_len - 1))


def run_windows(model, windows, cal, *, on_progress=None, cancel=None) -> None:
    """One forward over each calibration window (the hooks a caller set record what they need),
    counting the tokens in ``cal.n_tokens``; cancellable between windows."""
    import torch

    device = next(model.parameters()).device
    wins = _as_windows(windows)
    model.eval()
    with torch.inference_mode():
        for k, w in enumerate(wins):
            _check_cancel(cancel)
            ids = w.to(device).unsqueeze(0) if w.dim() == 1 else w.to(device)
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
            cal.n_tokens += ids.numel()
            if on_progress:
                on_progress(k + 1, len(wins))

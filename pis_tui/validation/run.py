"""Timing a prepared model end to end: one prefill forward or one decode step, interleaved
rounds of several models, medians and spread."""

from __future__ import annotations

import inspect
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import MeasureError, UserError
from .build import BuiltModel
from ..hf.config import torch_dtype

# ============================================================== timing


def local_torch_device() -> str:
    """Where models are built and timed: the device ``profile`` and ``calibrate`` measure on
    (:func:`pis_tui.device.local.measuring_device`: torch's first visible GPU, else the CPU)."""
    from ..device.local import measuring_device

    return "cuda" if measuring_device().kind == "gpu" else "cpu"


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _forward_cache_kw(model) -> str:
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class PhaseRun:
    """One model, one phase, one shape, prepared for timing: ``sample()`` returns the time of
    one forward in ms (the mean over ``inner`` back-to-back calls).

    On CUDA both phases are captured in a CUDA graph (static inputs, replayed), the way the
    ops behind the prediction are timed and serving engines run: the prediction prices no
    host overhead on a GPU, so an eager forward would compare unlike with unlike.  A capture
    that fails leaves the run eager and says so in ``capture`` ("failed") and
    ``capture_error``; :func:`pis_tui.validation.compare.validate` then times both models eager and
    flags the row.  ``capture`` is "graph", "eager" (the CPU, or ``cuda_graph=False``) or
    "failed".
    """

    def __init__(self, built: BuiltModel, phase: str, batch: int, length: int, *, seed: int = 0,
                 cuda_graph: bool = True):
        self.built, self.phase, self.batch, self.length = built, phase, batch, length
        self.seed = seed
        self.device = built.device
        self.cuda = str(self.device).startswith("cuda")
        self.use_graph = cuda_graph and self.cuda
        self.inner = 1
        self.graph = None
        self.capture = "eager"
        self.capture_error = ""
        self.notes: list[str] = []
        self._fn: Optional[Callable] = None

    # ---------------------------------------------------------------- setup
    def prepare(self) -> None:
        import torch

        m = self.built.model
        cfg = m.config
        g = torch.Generator().manual_seed(self.seed)
        B = self.batch
        cache_kw = _forward_cache_kw(m)
        if self.phase == "prefill":
            # the prompt's forward with the logits of the last token only (as generate does);
            # no KV cache is written: the prediction's prefill op list has no kv_write (a
            # cache's copies would be work it never priced), and without a cache object the
            # forward has static shapes and buffers, so it can be captured in a CUDA graph
            S = self.length
            self.ids = torch.randint(0, getattr(cfg, "pis_full_vocab", cfg.vocab_size), (B, S), generator=g).to(self.device)
            self.pos = torch.arange(S, device=self.device).unsqueeze(0)

            def fn():
                return m(input_ids=self.ids, position_ids=self.pos, use_cache=False,
                         logits_to_keep=1)
            self._fn = fn
            if self.use_graph:
                self._capture()
            return
        # decode: a StaticCache filled to `length` tokens, one new token per sequence
        L = self.length
        self.cache = self._static_cache(L)
        self.built.state["decode_pos"] = L
        self.ids = torch.randint(0, getattr(cfg, "pis_full_vocab", cfg.vocab_size), (B, 1), generator=g).to(self.device)
        self.pos = torch.full((1, 1), L, device=self.device, dtype=torch.long)
        layers = self._cache_layers

        def fn():
            out = m(input_ids=self.ids, position_ids=self.pos, use_cache=True,
                    **{cache_kw: self.cache})
            for layer in layers:  # back to `length` cached tokens for the next step
                layer.cumulative_length.fill_(L)
                if hasattr(layer, "cumulative_length_int"):  # a sliding-window layer's own count
                    layer.cumulative_length_int = L
            return out
        self._fn = fn
        if self.use_graph:
            self._capture()

    def _static_cache(self, L: int):
        import torch
        from transformers import StaticCache

        m = self.built.model
        cache = StaticCache(config=m.config, max_cache_len=L + 1)
        tdt = torch_dtype(self.built.dtype)
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 7)
        used = []
        for a in self.built.attention_modules():
            idx = a.layer_idx
            layer = cache.layers[idx]
            k_proj = getattr(a, "k_proj", None)  # a fused qkv (GPT-2, GPT-NeoX): from the dims
            kvh = k_proj.out_features if hasattr(k_proj, "out_features") else None
            hd = getattr(a, "head_dim", None) or getattr(a, "head_size")  # GPT-NeoX: head_size
            kvh = (kvh or self.built.dims.num_kv_heads * hd) // hd
            dummy = torch.zeros(self.batch, kvh, 1, hd, dtype=tdt, device=self.device)
            layer.lazy_initialization(dummy, dummy)
            layer.keys.normal_(0, 1, generator=gen)
            layer.values.normal_(0, 1, generator=gen)
            if not isinstance(layer.cumulative_length, torch.Tensor):  # pragma: no cover
                raise MeasureError("this transformers version's StaticCache has no tensor length")
            layer.cumulative_length.fill_(L)
            if hasattr(layer, "cumulative_length_int"):
                # a sliding-window layer counts in a Python int: past its window it is full and
                # each step rolls it, as transformers runs a long decode
                layer.cumulative_length_int = L
            layer.is_initialized = True
            used.append(layer)
        self._cache_layers = used
        return cache

    def _capture(self) -> None:  # pragma: no cover - CUDA only
        import torch

        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s), torch.inference_mode():
                for _ in range(3):
                    self._fn()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g), torch.inference_mode():
                self._out = self._fn()
            g.replay()  # one replay before timing: a graph that cannot run fails here
            torch.cuda.synchronize()
            self.graph = g
            self.capture = "graph"
        except Exception as e:  # noqa: BLE001 - flagged on the row, not only a note
            self.graph = None
            self.capture = "failed"
            self.capture_error = (f"{type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}")
            try:
                torch.cuda.synchronize()
            except Exception:  # noqa: BLE001 - a poisoned context: the caller's next call says so
                pass
            self.notes.append(f"CUDA graph capture of the {self.phase} failed "
                              f"({self.capture_error}): timed eager")

    def drop_graph(self) -> None:
        """Time this run eager (its partner's capture failed: like must be timed like like)."""
        self.graph = None

    # ---------------------------------------------------------------- timing
    def _call(self) -> None:
        if self.graph is not None:  # pragma: no cover - CUDA only
            self.graph.replay()
        else:
            self._fn()

    def sample(self) -> float:
        import torch

        with torch.inference_mode():
            if self.cuda:  # pragma: no cover - CUDA only
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(self.inner):
                    self._call()
                end.record()
                end.synchronize()
                return start.elapsed_time(end) / self.inner
            t0 = time.perf_counter()
            for _ in range(self.inner):
                self._call()
            return (time.perf_counter() - t0) * 1e3 / self.inner

    def calibrate(self, target_ms: float) -> None:
        t = self.sample()
        self.inner = max(1, min(50, int(math.ceil(target_ms / max(t, 1e-3)))))

    def close(self) -> None:
        self.graph = None
        self._fn = None
        self.cache = None


@dataclass
class Timing:
    median_ms: float
    samples: list
    spread: float  # (p75 − p25) / median


def _summary(samples: list) -> Timing:
    med = statistics.median(samples)
    if len(samples) >= 4:
        q = statistics.quantiles(samples, n=4)
        spread = (q[2] - q[0]) / med if med else 0.0
    else:
        spread = (max(samples) - min(samples)) / med if med else 0.0
    return Timing(med, list(samples), spread)


def measure_interleaved(runs: list, repeats: int = 5, warmup: int = 1,
                        target_ms: Optional[float] = None) -> list:
    """Time several prepared :class:`PhaseRun` s alternately (ABAB…, reversed every other round)
    so that drifts of a shared, noisy machine hit them alike; returns a :class:`Timing` each."""
    import torch

    if repeats < 1:
        raise UserError("repeats must be at least 1")
    cpu = not any(r.cuda for r in runs)
    if target_ms is None:
        target_ms = 150.0 if cpu else 30.0
    with torch.inference_mode():
        for r in runs:
            for _ in range(max(0, warmup)):
                r.sample()
            r.calibrate(target_ms)
    samples = [[] for _ in runs]
    for i in range(repeats):
        order = list(range(len(runs)))
        if i % 2:
            order.reverse()
        for j in order:
            samples[j].append(runs[j].sample())
    return [_summary(s) for s in samples]


def time_phase(built: BuiltModel, phase: str, batch: int, length: int, *, repeats: int = 5,
               warmup: int = 1) -> Timing:
    """Median time of one prefill forward (length = prompt) or decode step (length = context)."""
    run = PhaseRun(built, phase, batch, length)
    run.prepare()
    try:
        return measure_interleaved([run], repeats, warmup)[0]
    finally:
        run.close()

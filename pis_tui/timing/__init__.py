"""Timing engine: runs the kernels of one op on the local device and times them.

This is the only package that runs torch kernels to time ops.  torch is imported inside
the functions (never at import time of the estimate path).

How an op is timed (method ``cuda-graph`` / ``cpu-wall``, see ``measured_table.METHOD_DOCS``):

* The op's persistent state -- GEMM weights, the KV cache a decode attention reads -- is
  rotated among enough copies to exceed the last-level cache (L2 on a GPU, L3 on the CPU),
  because a forward pass streams each weight once per token batch: timing one weight over and
  over would time it from cache.  Activations are not rotated (a real forward pass has just
  written them).  Copies are views into one random pool per dtype, so rotation costs no
  per-op allocation; a tensor too large for the pool is random too (never a constant: on a
  power-limited GPU constant data runs faster than real weights).
* CUDA: warm-up, one eager call timed alone with CUDA events (``eager_ms``, launch overhead
  included), then a batch of calls captured in a CUDA graph and replayed (``ms`` = replay
  time / calls, the way serving engines run); median and spread over repeats.
* CPU: ``torch.get_num_threads()`` real threads (set to the cores this process may use),
  batches of calls timed with ``time.perf_counter``; ``ms = eager_ms`` = wall time per call.
* Failures: an out-of-memory is retried once with the pools freed and at most 2 rotated
  copies; a CUDA error that poisons the process sets ``DeviceContext.sticky_error`` (every
  later call returns an error at once; the profile stops, keeping what was measured).
  Block-sparse FlexAttention gets Triton tiles that divide its 64-token blocks
  (:func:`.attention.flex_kernel_options`).

Every op kind is built the way Hugging Face / serving code runs it, and each case carries a
float64 reference implementation (``verify_op``) so tests can check that what is timed
computes the right thing.

One job a module: :mod:`.device` (the device opened for measuring), :mod:`.case` (what a timed
call is, rotation of its state), one case module per op kind mirroring :mod:`pis_tui.model.ops`
(:mod:`.gemm`, :mod:`.attention`, :mod:`.elementwise`; :mod:`.quantized` the quantized GEMMs
through torch's int4 and fp8 kernels, and which precisions the device measures), :mod:`.loops` (the CPU and CUDA timing
loops), :mod:`.measure` (timing and checking one op, the contention probe), :mod:`.peaks`
(the device's measured peaks).
"""

from __future__ import annotations

from ..pricing.measured_table import Measurement
from .case import Case, Unsupported
from .device import DeviceContext, open_device, read_clocks, torch_dtype
from .measure import build_case, contention_probe, cpu_contention, measure_op, verify_op
from .peaks import measure_device_peaks

__all__ = ["DeviceContext", "Measurement", "Case", "Unsupported", "open_device", "read_clocks",
           "torch_dtype", "build_case", "measure_op", "verify_op", "contention_probe", "cpu_contention",
           "measure_device_peaks"]

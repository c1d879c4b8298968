"""End-to-end validation: build the pruned model for real and time it.

pis-tui predicts a phase's latency by summing measured op times (the taxonomy's op list priced
by the estimator).  This module checks those predictions against the real thing: it builds the
pruned model with transformers' own model classes (so the non-GEMM work is what users really
run), random weights, and times

* **TTFT**: one prefill forward over ``batch × prompt`` tokens (logits of the last token only,
  as ``generate`` does; no KV cache written, ``use_cache=False``: the prediction's prefill
  prices no KV write, and static buffers make the forward capturable);
* **TPOT**: one decode step of ``batch`` sequences over a KV cache of ``context`` tokens (a
  ``StaticCache`` filled to that length).

On CUDA both are captured in a CUDA graph and replayed, as the ops behind the prediction are
timed (the prediction prices no host overhead on a GPU); a capture that fails is flagged on
the row (``capture_failed``) and both models of that row are timed eager.

Dense and pruned runs are interleaved and repeated and the medians are compared with the
prediction.  How each family is built (the dims come from :mod:`pis_tui.families.phase_ops`, so the model
has exactly the shapes the prediction priced):

* ``static_depth``: fewer decoder layers; ``granularity="sublayer"`` keeps only the attention or
  only the MLP half of a layer (its norm and residual add go with it).
* ``static_width``: fewer (GQA groups of) heads and a smaller ``intermediate_size`` in the config
  (``head_dim`` kept explicit).
* ``static_width_hidden``: a smaller ``hidden_size`` everywhere plus an H'×H' ``Linear`` on each
  residual branch (SliceGPT's residual mapping).
* ``low_rank``: every decoder linear ``W[N,K]`` becomes ``Linear(K,r)`` → ``Linear(r,N)``.
* ``semi_structured_24``: a 2:4 weight mask; on a CUDA GPU with 2:4 kernels the weights are
  converted with ``torch.sparse.to_sparse_semi_structured``; elsewhere it runs dense (and says so).
* ``unstructured``: dense weights with a share ``s`` zeroed (same dense kernels).
* ``dynamic_depth``: each decoder layer is wrapped; per sublayer a router ``Linear(H,1)`` scores
  the tokens, top-k keeps ``1−s`` of them (per sequence in prefill, across the batch in decode),
  they are gathered, normed, run through the sublayer (attention among the kept tokens with their
  own positions), added to their residual and scattered back.  At decode batch 1 a sublayer runs
  or not: a seeded plan runs ``round((1−s)·L)`` of the attention and of the MLP sublayers (the
  router still runs for every one), so each step costs the expectation.
* ``dynamic_sparse_attention``: a registered attention implementation that keeps ``1−s`` of the
  64-token key blocks per query block (the diagonal always), chosen by mean-pooled block scores,
  and runs SDPA over the gathered blocks.  This is a gather-based approximation of a fused
  block-sparse kernel (SeerAttention-like), labelled as such in the results.

Models are built on the ``meta`` device and materialised with ``to_empty`` and a fast tiled random
fill (never transformers' slow default init), so a big model is ready in the time it takes to
touch its memory.  torch and transformers are imported inside the functions only.

The package, one job a module: :mod:`.build` (the pruned model's dims by its family's hook,
building and materialising it, with the torch kit of :mod:`pis_tui.hf`: its config, wrapper
modules and attention implementations), :mod:`.run` (timing a model end to end),
:mod:`.op_times` (the op times predictions are priced from), :mod:`.compare` (predictions,
:func:`validate`, accuracy), :mod:`.stability` (rounds until a speedup is known),
:mod:`.parts` (time per model part, for diagnosis), :mod:`.probe` (the eager
framework-overhead probe), :mod:`.tp` and :mod:`.tp_worker` (tensor-parallel validation),
:mod:`.memory_check` (will the models fit now), :mod:`.kernel_trace` (which kernels the eager
modules launch, written to ``profiles/kernels/eager.json``).
"""

from __future__ import annotations

from .build import BuiltModel, build_from_spec, build_model, pruned_dims
from .compare import (STANDARD_SPARSITIES, ValidationRow, accuracy_summary, extra_families, predict,
                      standard_families, standard_strategies, validate, validation_record)
from .op_times import OpTimes
from .parts import PARTS, measured_parts, part_of, predicted_parts
from .probe import PROBE_STRATEGIES, dispatch_probe, tiny_clone
from .run import PhaseRun, Timing, local_torch_device, measure_interleaved, time_phase

__all__ = ["BuiltModel", "build_from_spec", "build_model", "pruned_dims", "STANDARD_SPARSITIES",
           "ValidationRow", "accuracy_summary", "extra_families", "predict", "standard_families",
           "standard_strategies", "validate", "validation_record", "OpTimes", "PARTS",
           "measured_parts", "part_of", "predicted_parts", "PROBE_STRATEGIES", "dispatch_probe",
           "tiny_clone", "PhaseRun", "Timing", "local_torch_device", "measure_interleaved",
           "time_phase"]

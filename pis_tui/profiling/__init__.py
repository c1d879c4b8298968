"""Planning and running a measurement sweep on the local device.

* :func:`worklist` lists the distinct kernel calls a sweep needs (deduped by op key across
  strategies, sparsities and phases; unstructured GEMMs run the dense kernel, so they are
  measured as dense), ordered by their share of their phase's time (the ops that decide the
  answer first, so charts fill in quickly), followed by a grid of M around tile boundaries
  for the GEMM (N, K) pairs of the model (up to the M each pair runs at), from which the estimator interpolates shapes that
  were not timed.
* :func:`collective_worklist` / :func:`measure_collectives`: the collectives of tensor parallelism
  (``--tp``), measured through torch.distributed into the cache's collective_timings.
* :func:`run_profile` measures what the cache does not hold yet, storing measurements as they
  are taken (flushed at least every two seconds and on any exit, so Ctrl-C loses nothing), with a
  progress callback and cancellation between measurements.  CUDA out-of-memory on a shape
  marks that shape ``oom`` and goes on.

torch is imported only when something has to be measured: a profile served entirely from the
cache never imports it.

One job a module: :mod:`.worklist` (what to measure, and how a sweep would be priced now),
:mod:`.rounds` (interleaved rounds and the rules between measurements), :mod:`.run` (the
profile itself, stored as it goes).
"""

from __future__ import annotations

from ..model.ops import measuring_form
from .worklist import (M_GRID, WorkItem, WorklistOptions, label_of, worklist, collective_worklist,
                       worklist_detailed, source_counts)
from .rounds import (CPU_MAX_ROUNDS, CPU_ROUNDS, MONOTONE_PASSES, MONOTONE_TOL, ROUND_TOL,
                     combine_rounds, measure_rounds, monotone_violations)
from .run import (BATCH_CHUNK_S, CHUNK_S, FINAL_STATUSES, CollectiveReport, ProfileReport,
                  ProgressStatus, Remeasuring, busy_warning, contention_message, measure_collectives, measure_ops, run_profile)

__all__ = ["M_GRID", "WorkItem", "WorklistOptions", "label_of", "worklist", "collective_worklist",
           "worklist_detailed", "CollectiveReport", "measure_collectives",
           "source_counts", "CPU_MAX_ROUNDS", "CPU_ROUNDS", "MONOTONE_PASSES", "MONOTONE_TOL",
           "ROUND_TOL", "combine_rounds", "measure_rounds", "monotone_violations", "BATCH_CHUNK_S",
           "CHUNK_S", "FINAL_STATUSES", "ProfileReport", "ProgressStatus", "Remeasuring", "busy_warning", "contention_message",
           "measure_ops", "run_profile", "measuring_form"]

"""Decisions: points, their frontier, a recommendation per phase and one model for a workload.

One job a module: :mod:`.sweep` (the facade the CLI and the explorer call: every strategy priced
per phase with its quality cost), :mod:`.points` (a point and a recommendation),
:mod:`.compare` (two points compared by their own ratio, and the one selection rule),
:mod:`.frontier` (the frontier and the recommendation under a budget), :mod:`.deployment` (one
pruned model for a workload across both phases: TTFT, TPOT, end-to-end latency, throughput,
memory, ranked by the same rule).
"""

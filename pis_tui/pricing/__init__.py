"""Prices: what an op list costs on a device, and how far that figure can be trusted.

One job a module: :mod:`.estimator` (each op by its most trusted source: measured, shipped,
interpolated, the roofline), :mod:`.engines` (the kernels an op runs under ``--engine`` eager or
fused), :mod:`.collectives` (tensor parallelism's all-reduces and all-gathers), :mod:`.sources`
(the timing sources in their order of trust), :mod:`.uncertainty` (a speedup's interval, its
physical ceiling, its flags), :mod:`.measured_table` (measurements as data and the shipped table
format), :mod:`.efficiency_fit` (the analytical model's figures fitted to timed kernels),
:mod:`.memory` (weights, KV cache, activations, sequences that fit), :mod:`.estimates` (priced
ops and phases).  Estimating never imports torch.
"""

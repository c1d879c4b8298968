"""The model and its ops: what is priced, before anything is priced.

One job a module: :mod:`.spec` (the shapes of a decoder, read from a preset or a Hugging Face
config), :mod:`.ops` (the op vocabulary: GEMM, attention, elementwise, host overhead,
collectives; which kernel really runs for an op, and the order of work two kernels of a kind
are compared by), :mod:`.layer` (the op list of one decoder layer, pure functions over widths
and token counts), :mod:`.scenario` (prefill and decode sizes, dtype, engine, tensor
parallelism), :mod:`.tensor_parallel` (how heads, channels and the vocabulary split over ranks),
:mod:`.workload` (request classes, mixes and targets for the deployment plan).  No torch, no I/O
beyond reading shipped presets.
"""

"""Quality cost: what a strategy at a sparsity costs in accuracy or perplexity.

One job a module: :mod:`.priors` (the cited literature rows, the user's own file, method names,
how model names compare for borrowing), :mod:`.curves` (knots, the monotone fit, reading a curve
and extrapolating past it), :mod:`.compose` (a combination's cost from its parts'),
:mod:`.measured` (perplexity measured here by ``pis-tui quality``; an oracle's row labelled as
one), :mod:`.model` (the quality model: a curve per model, family, protocol and metric, the
method, the borrowing floor; how a curve is built is in its docstring), :mod:`.estimate` (the
figure a point carries).  Pure Python: cheap to import on the estimate path.
"""

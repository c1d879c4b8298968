"""The routing validate predicts an MoE model's rows from: each built model's own, recorded
from the very forwards it times, written as a ``pis-tui-routing/1`` file the prediction's
scenario names (``Scenario(routing=<file>)``), never ``balanced``.

* prefill: the timed prefill forward itself (the same input ids, the same call);
* decode: the timed decode step (its batch, its KV cache at the timed context) run ``steps``
  times, each step with fresh random next tokens, so the shares describe the distribution one
  step's tokens are drawn from, not one step.

The counts are taken by :class:`pis_tui.hf.routing_record.RoutingRecorder` (a pre-hook on each
MoE block's experts reading the ids they really run: nothing in the forward changes).  A
pruned model that keeps fewer MoE layers than the dense one (static depth) says so in the
file (``pruned_from_moe_layers``): its layers are the ones that run.

torch is imported inside the functions.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

#: decode steps recorded per decode row (each at the timed batch)
DECODE_STEPS = 8


@dataclass(frozen=True)
class RecordedRouting:
    """One recorded routing file and what it says, for a row to show."""

    path: str
    phase: str
    tokens: int  # tokens per MoE layer recorded
    moe_layers: int
    experts: int
    top_k: int
    #: prefill: the busiest expert's tokens over the mean, per layer then averaged; decode: the
    #: same over all the steps recorded
    max_over_mean: float
    #: experts a step touched, averaged over the layers (prefill: the one forward; decode: the
    #: recorded steps' counts pooled, so a bound on one step's: see ``touched_per_step``)
    touched: float
    #: decode: distinct experts one step touched, averaged over the layers and steps (measured)
    touched_per_step: float = 0.0
    note: str = ""

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}

    def label(self) -> str:
        if self.phase == "prefill":
            return (f"recorded prefill: max/mean tokens per expert {self.max_over_mean:.1f}, "
                    f"{self.touched:.1f} of {self.experts} experts touched")
        return (f"recorded decode ({self.tokens // max(1, DECODE_STEPS)}×{DECODE_STEPS} steps): "
                f"{self.touched_per_step:.1f} of {self.experts} experts touched a step")


def moe_blocks(built) -> list:
    """The built model's MoE blocks, in layer order (the recorder's finder)."""
    from ..hf.routing_record import moe_blocks as find

    return find(built.model)


def record_row(built, run, out_dir: str | Path, label: str, *, steps: int = DECODE_STEPS,
               dense_moe_layers: int = 0) -> RecordedRouting:
    """Record the routing of ``run`` (a prepared :class:`pis_tui.validation.run.PhaseRun` of
    ``built``) and write it under ``out_dir`` as ``<label>.json``; see the module's docstring."""
    import torch

    from ..hf.routing_record import FORMAT, RoutingRecorder, check

    model = built.model
    per_step: list = []
    routed = [m for m in model.modules() if type(m).__name__ == "RoutedLayer"]
    saved = [dict(m.plan) for m in routed]
    note = ""
    if run.phase == "decode" and run.batch == 1 and routed:
        # dynamic depth at batch 1: a seeded plan skips some layers, which then route
        # nothing; at one token a step touches k experts whatever the shares, so every layer
        # is run for the record
        for m in routed:
            m.plan = {"attn": True, "mlp": True}
        note = "dynamic depth at decode batch 1: recorded with every layer run"
    from ..hf.experts import dense_counts, full_routing

    skips = full_routing(model)  # dynamic top-k: the router's own k experts per token
    if skips.routers:
        note = "; ".join(x for x in (note, "dynamic top-k: recorded with each token's k experts "
                                     "(the router's own routing; the skip is the family's "
                                     "distribution of k)") if x)
    try:
        with RoutingRecorder(model) as rec, torch.inference_mode(), skips:
            if run.phase == "prefill":
                rec.phase = "prefill"
                run._fn()
                rec.phase = None
            else:
                timed_ids = run.ids.clone()  # put back after: the timed step's own tokens
                g = torch.Generator().manual_seed(run.seed + 11)
                vocab = getattr(model.config, "pis_full_vocab", model.config.vocab_size)
                prev = None
                for _ in range(steps):
                    run.ids.copy_(torch.randint(0, vocab, tuple(run.ids.shape), generator=g))
                    rec.phase = "decode"
                    run._fn()
                    rec.phase = None
                    now = rec.counts("decode")
                    step = now if prev is None else [[a - b for a, b in zip(x, y)]
                                                     for x, y in zip(now, prev)]
                    per_step.append(statistics.fmean(sum(1 for c in lay if c) for lay in step))
                    prev = now
                run.ids.copy_(timed_ids)
            counts = rec.counts(run.phase)
            tokens = rec.tokens(run.phase)
            experts, top_k, n = rec.experts, rec.top_k, len(rec.blocks)
            layer_ids = rec.layer_ids
    finally:
        for m, plan in zip(routed, saved):
            m.plan = plan
    own = counts
    # expert pruning: the kept experts' counts at the dense model's ids (zeros at the removed),
    # so the file reads against the model the prediction is of
    counts, dense_e = dense_counts(model, counts)
    file_experts = dense_e or experts
    ph = {"layers": counts, "tokens": tokens, "sequences": run.batch}
    if run.phase == "decode":
        # the rows a step's MoE blocks see (dynamic depth routes some of the batch past them)
        ph.update(sequences=max(1, tokens // steps), steps=steps, batch=run.batch)
    data = {"format": FORMAT, "model": built.spec.name, "model_type": built.spec.model_type,
            "experts": file_experts, "top_k": top_k, "moe_layers": n, "layer_ids": layer_ids,
            "source": f"recorded by pis-tui validate from the timed {run.phase} of the "
                      f"{built.strategy.token} model (random weights, seed {run.seed})",
            "text": f"random token ids ({run.phase} batch {run.batch}, length {run.length})",
            "layers": counts, "phases": {run.phase: ph}}
    if dense_moe_layers and n < dense_moe_layers:
        data["pruned_from_moe_layers"] = dense_moe_layers
    check(data, label)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{label}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    mom = statistics.fmean(max(c) / (sum(c) / len(c)) for c in own)
    touched = statistics.fmean(sum(1 for x in c if x) for c in own)
    return RecordedRouting(str(path), run.phase, tokens, n, experts, top_k, mom, touched,
                           statistics.fmean(per_step) if per_step else touched, note)

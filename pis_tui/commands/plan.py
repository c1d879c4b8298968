"""`pis-tui plan`: one pruned model for a workload, across both phases, with the memory it frees.

For prompts of about P tokens, answers of about O tokens and C requests at once (a preset, the
numbers, or a weighted mix), every candidate (dense and every family × sparsity) is priced end
to end: TTFT, TPOT over the growing context, end-to-end latency, the most sequences its memory
holds and the throughput at the largest batch that fits and meets the targets; the best within
the quality budget and the targets is recommended (see pis_tui.decide.deployment for the serving model).
"""

from __future__ import annotations

import argparse

from ._run import (add_budget_args, add_combo_sparsities_arg, add_quality_args, add_ranking_args,
                   add_strategies_arg)
from .common import (add_cache, add_engine, add_precision, add_model_gpu, add_outputs, add_strategy_options,
                     add_tp, positive_int)


def _ms(what: str):
    def conv(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number of milliseconds, got {text!r}") from None
    return conv


def register(sub) -> None:
    from ..model.workload import DEFAULT_PRESET, PRESETS

    p = sub.add_parser("plan", help="one pruned model for a workload: TTFT, TPOT, end-to-end latency, "
                                    "throughput and memory, against dense")
    add_model_gpu(p)
    w = p.add_argument_group("workload")
    w.add_argument("--workload", "-w", default=None, metavar="PRESET",
                   help=f"a preset: {', '.join(f'{k} ({c.prompt_len}→{c.output_len} ×{c.concurrency})' for k, c in PRESETS.items())}; "
                        f"default {DEFAULT_PRESET}")
    w.add_argument("--prompt-len", type=positive_int("prompt length"), default=None,
                   help="prompt tokens (replaces the preset's)")
    w.add_argument("--output-len", type=positive_int("output length"), default=None,
                   help="answer tokens (replaces the preset's)")
    w.add_argument("--concurrency", "-c", type=positive_int("concurrency"), default=None,
                   help="requests at once (replaces the preset's)")
    w.add_argument("--mix", default=None, metavar="MIX|FILE",
                   help="a weighted mix of presets, e.g. chat:0.7,rag:0.3, or a CSV file with "
                        "columns name,weight,prompt_len,output_len,concurrency")
    w.add_argument("--ttft-ms", type=_ms("the TTFT target"), default=None,
                   help="target: time to first token at most this many ms")
    w.add_argument("--tpot-ms", type=_ms("the TPOT target"), default=None,
                   help="target: time per output token at most this many ms")
    w.add_argument("--include-flagged", action="store_true",
                   help="also rank candidates flagged as above their physical ceiling or measured "
                        "under mixed conditions (skipped by default, as recommend skips them)")
    w.add_argument("--objective", choices=("latency", "throughput"), default="latency",
                   help="rank by end-to-end latency at the concurrency, or by throughput at the "
                        "largest batch that fits and meets the targets")
    s = p.add_argument_group("speculative decoding (a pruned draft of the model itself: lossless)")
    s.add_argument("--drafts", default=None, metavar="LIST",
                   help="drafts to try as self-speculative candidates, family@sparsity "
                        f"(default {default_drafts()}: layer-skipping drafts, sharing the dense "
                        "model's weights); 'none' for no speculative candidates")
    s.add_argument("--gammas", default=None, metavar="LIST",
                   help="drafted tokens per verification to try (default 1,2,3,4,5,6,8; the best shown)")
    s.add_argument("--decoding", choices=("greedy", "sampling"), default="greedy",
                   help="greedy or sampling acceptance (different rates; never mixed)")
    s.add_argument("--temperature", type=float, default=1.0,
                   help="the sampling temperature an acceptance figure must match (with --decoding sampling)")
    s.add_argument("--alpha", type=float, default=None,
                   help="your own acceptance rate for every draft (else measured by 'pis-tui quality "
                        "--acceptance', else published figures)")
    add_strategies_arg(p)
    p.add_argument("--sparsities", default=None,
                   help="comma-separated, e.g. 0.25,0.5 (default: each family's grid)")
    add_combo_sparsities_arg(p)
    p.add_argument("--dtype", default=None, help="the activations' dtype: bf16 (GPU default), fp16, fp32 (CPU default)")
    add_precision(p)
    add_engine(p)
    add_tp(p)
    add_strategy_options(p)
    add_cache(p)
    add_quality_args(p)
    add_budget_args(p)
    add_ranking_args(p)
    add_outputs(p, csv=False)
    p.add_argument("--csv", dest="csv_out", metavar="FILE|-", default=None,
                   help="write the plan as CSV: one row per candidate × request class")
    p.set_defaults(func=run)


def default_drafts() -> str:
    """The drafts a plan tries unless told (:data:`pis_tui.decide.speculative.DEFAULT_DRAFTS`)."""
    from ..decide.speculative import DEFAULT_DRAFTS

    return ",".join(f"{f}@{s:g}" for f, s in DEFAULT_DRAFTS)


def speculative_from_args(args, spec, cache=None):
    """The speculative candidates the flags ask (None: ``--drafts none``)."""
    from ..decide.deployment import SpecOptions
    from ..decide.speculative import GAMMAS
    from ..errors import UserError
    from ..families.strategy import from_token
    from ..quality.acceptance import check_decoding
    from .common import parse_fraction

    text = getattr(args, "drafts", None)
    text = default_drafts() if text is None else text
    if text.strip().lower() == "none":
        return None
    drafts = []
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        if "+" in tok:  # a combination, each part at its own: static_depth@0.5+static_width@0.25
            drafts.append(from_token(tok))
            continue
        fam, at, s = tok.partition("@")
        if not at:
            raise UserError(f"--drafts: {tok!r} is not family@sparsity (e.g. static_depth@0.5)")
        if fam.strip() == "dense":
            raise UserError("--drafts: the dense model is no draft of itself: give a pruned family")
        sp = parse_fraction(s, "draft sparsity", 0.0, 0.9)
        if sp <= 0:
            raise UserError(f"--drafts: {tok!r} removes nothing: give a sparsity above 0")
        drafts.append(from_token(fam.strip(), sp))
    if not drafts:
        raise UserError("--drafts names no draft: give family@sparsity, or 'none'")
    gammas = GAMMAS
    if getattr(args, "gammas", None):
        try:
            gammas = tuple(sorted({int(g) for g in args.gammas.split(",") if g.strip()}))
        except ValueError:
            raise UserError(f"--gammas: {args.gammas!r} is not a list of whole numbers") from None
        if not gammas or not all(1 <= g <= 16 for g in gammas):
            raise UserError("--gammas: each γ must be a whole number from 1 to 16")
    decoding, temp = check_decoding(getattr(args, "decoding", "greedy"),
                                    getattr(args, "temperature", 1.0))
    alpha = getattr(args, "alpha", None)
    if alpha is not None and not 0.0 <= alpha < 1.0:
        raise UserError(f"--alpha must be in [0, 1), got {alpha}")
    measured = ()
    if cache is not None and hasattr(cache, "get_acceptance"):
        measured = tuple(cache.get_acceptance(spec.name))
    return SpecOptions(tuple(drafts), gammas, decoding, temp, alpha, measured)


def workload_from_args(args):
    """The workload the flags describe (a preset, its numbers replaced, or a mix)."""
    from ..errors import UserError
    from ..model.workload import DEFAULT_PRESET, Targets, parse_mix, single

    targets = Targets(args.ttft_ms, args.tpot_ms)
    if args.mix:
        if args.workload:
            raise UserError("give --workload or --mix, not both")
        given = [f for f, v in (("--prompt-len", args.prompt_len), ("--output-len", args.output_len),
                                ("--concurrency", args.concurrency)) if v is not None]
        if given:
            raise UserError(f"{', '.join(given)} set one class's numbers: with --mix, give each "
                            "class's in a mix file (name,weight,prompt_len,output_len,concurrency)")
        return parse_mix(args.mix).with_targets(targets.ttft_ms, targets.tpot_ms)
    return single(args.workload or DEFAULT_PRESET, args.prompt_len, args.output_len,
                  args.concurrency, targets)


def run(args) -> int:
    import sys

    from ..decide.sweep import resolve
    from ..decide.deployment import plan, recommend_plan
    from ..families.strategy import Strategy
    from ._run import (budget_from_args, combo_sparsities_from_args, open_cache_if_local,
                       quality_from_args, strategies_from_args)
    from .common import check_writable, console, parse_sparsities, resolve_gpu, write_text

    budget = budget_from_args(args)
    workload = workload_from_args(args)
    for out in (args.json_out, args.csv_out):
        if out and out != "-":
            check_writable(out)
    spec, device = resolve(args.model, resolve_gpu(args.gpu))
    from .common import precision_from_args

    dtype, precision = precision_from_args(args, device)
    cache = open_cache_if_local(args, device)
    quality = quality_from_args(args, spec, cache)
    strategies = strategies_from_args(args)
    sparsities = parse_sparsities(args.sparsities) if args.sparsities else None
    args.combo_sps = combo_sparsities_from_args(args)
    args.align = args.align or Strategy("dense").align  # not given: the taxonomy's default
    result = plan(spec, device, workload, strategies=strategies, sparsities=sparsities,
                  granularity=args.granularity, align=args.align, dtype=dtype, quality=quality,
                  cache=cache, combo_sparsities=args.combo_sps, engine=args.engine or "eager",
                  tp=args.tp, routing=getattr(args, "routing", None) or "balanced",
                  precision=precision, speculative=speculative_from_args(args, spec, cache))
    rec = recommend_plan(result, budget, args.objective, args.allow_extrapolated,
                         include_flagged=getattr(args, "include_flagged", False))
    for w in result.warnings:
        print(f"pis-tui: warning: {w}", file=sys.stderr)
    if args.json_out:
        write_text(args.json_out, plan_json(result, rec, strategies, sparsities, args, quality, cache))
    if args.csv_out:
        from ..present.export import plan_csv

        write_text(args.csv_out, plan_csv(result, rec))
    if "-" not in (args.json_out, args.csv_out):
        print_plan(console(), result, rec)
    return 0


def plan_json(result, rec, strategies, sparsities, args, quality, cache) -> str:
    """The pis-tui/1 document: the per-phase sweep at the workload's main class (prefill C × P,
    decode batch C at the middle of the answer, P + ⌊O/2⌋) with its per-phase recommendations,
    and the plan under ``plan``."""
    from ..decide.sweep import sweep
    from ..present.export import plan_dict, to_json
    from ..decide.frontier import recommend
    from ..model.scenario import Scenario

    m = result.workload.main
    scen = Scenario(m.concurrency, m.prompt_len, m.concurrency, m.prompt_len + m.output_len // 2,
                    result.dtype, engine=result.engine, tp=result.tp, precision=result.precision)
    sw = sweep(result.spec, result.device, scen, strategies, sparsities, granularity=args.granularity,
               align=args.align, quality=quality, cache=cache,
               combo_sparsities=getattr(args, "combo_sps", None))
    allow = getattr(args, "allow_extrapolated", False)
    recs = {ph: recommend(sw.phase_points(ph), rec.budget, ph,
                          getattr(args, "include_flagged", False), allow, pair=sw.pair)
            for ph in ("prefill", "decode")}
    return to_json(sw, recs, plan_dict(result, rec))


# --------------------------------------------------------------------------- console

def _gb(b: float) -> str:
    return f"{b / 1e9:.1f}"


def _kib(b: int) -> str:
    return f"{b / 1024:.0f} KiB"


def speculation_line(s) -> str:
    """A speculative candidate's draft, γ, α and where it stops paying, in one line."""
    a = s.acceptance
    where = a.source + (f", borrowed from {a.borrowed_from}" if a.borrowed_from else "") + \
        (", an upper bound: a trained draft's" if a.upper_bound else "")
    draft = ("shares the dense model's weights" + (" and KV cache" if not s.draft_kv_bytes_per_token else "")
             if s.shares_weights else "its own weights")
    gammas = ", ".join(f"{g}" for g, _ in s.gammas)
    stop = (f"stops paying at batch {s.breakeven_batch}" if s.breakeven_batch
            else "pays up to the memory limit")
    return (f"speculative: the {s.draft} draft ({draft}) drafts γ {s.gamma} (best of {gammas}) · "
            f"α {a.alpha:.2f} {a.decoding} (range {a.lo:.2f}–{a.hi:.2f}; {where}) · "
            f"{s.tokens_per_iteration:.2f} tokens a verification · {stop} · lossless")


def pick_lines(result, c, objective: str, label: str, rec=None) -> list[str]:
    """The per-phase figures of a picked candidate against dense, one line each: at the
    workload's concurrency, at the largest good batch, and its memory."""
    from ..display import latency as ms, speed
    from ..present.export import headroom_bytes
    from ..decide.deployment import candidate_name, gain, sequences_text

    d = result.dense
    g = gain(c, d, objective)
    head = f"{label} {candidate_name(c)}"
    if g is not None:
        head += f" · {speed(g)} {'end to end' if objective == 'latency' else 'throughput'}"
        pt = getattr(rec, "points", {}).get(c.key) if rec is not None else None
        if pt is not None and pt.speedup_lo is not None and c.strategy != "dense":
            lo, hi = pt.interval
            head += f" ({lo:.2f}–{hi:.2f}{', cut at its ceiling' if pt.interval_cut else ''})"
    conc = "/".join(str(k.cls.concurrency) for k in c.classes)
    out = [head,
           f"  at {conc} at once: prefill TTFT {ms(c.ttft_ms)} (dense {ms(d.ttft_ms)}, "
           f"{speed(d.ttft_ms / c.ttft_ms)}) · decode TPOT {ms(c.tpot_ms)} (dense {ms(d.tpot_ms)}, "
           f"{speed(d.tpot_ms / c.tpot_ms)}) · a request {ms(c.e2e_ms)} (dense {ms(d.e2e_ms)})"]
    thr, dthr = c.throughput_tok_s, d.throughput_tok_s
    if thr:
        batch = "/".join(str(k.at_max_batch.batch) for k in c.classes)
        line = (f"  at batch {batch}: TTFT {ms(c.at_max_batch('ttft_ms'))} · TPOT "
                f"{ms(c.at_max_batch('tpot_ms'))} · {thr:,.0f} tok/s")
        if dthr:
            dbatch = "/".join(str(k.at_max_batch.batch) for k in d.classes)
            line += f" (dense at batch {dbatch}: {dthr:,.0f} tok/s)"
        out.append(line)
    else:
        out.append("  no batch fits and meets the targets: " + "; ".join(
            k.why_no_batch for k in c.classes if k.at_max_batch is None))
    if c.speculation is not None:
        out.append("  " + speculation_line(c.speculation))
    if getattr(result, "tp", 1) > 1:
        def coll(k) -> str:
            return f"{ms(k.tpot_collectives_ms)} ({k.tpot_collectives_ms / k.tpot_ms:.0%})"
        out.append(f"  TP {result.tp}: collectives per decode step {coll(c)} (dense {coll(d)}); "
                   f"in the prefill {ms(c.ttft_collectives_ms)} (dense {ms(d.ttft_collectives_ms)})")
    out.append(f"  memory: weights {_gb(c.weights_bytes)} GB (dense {_gb(d.weights_bytes)}) · KV "
               f"{_kib(c.kv_bytes_per_token)}/token (dense {_kib(d.kv_bytes_per_token)}) · fits "
               f"{sequences_text(c)} sequences (dense {sequences_text(d)}) · headroom at {conc} "
               f"{_gb(headroom_bytes(c, result))} GB (dense {_gb(headroom_bytes(d, result))})"
               + (f" · needs {gpus_text(c.gpus_needed)} at {conc} (dense {gpus_text(d.gpus_needed)})"
                  if c.gpus_needed != 0 else ""))
    return out


def gpus_text(n) -> str:
    """``1 GPU``, ``2 GPUs`` (tensor-parallel), or more than a node's 8."""
    if n is None:
        return "more than 8 GPUs"
    return f"{n} GPU{'s' if n > 1 else ''}"


#: the status column on a narrow terminal
_SHORT_STATUS = {"recommended": "best", "runner-up": "2nd", "over budget": ">budget",
                 "no quality": "quality?", "misses targets": "targets"}


def print_plan(con, result, rec) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from .. import families
    from ..decide import deployment as pl
    from ..display import latency, loss_text, pct, quality_marks, served_text, speed
    from ..pricing.memory import USABLE
    from ..quality.measured import ORACLE_RULE

    wl = result.workload
    metric = "perplexity increase" if result.quality_metric == "ppl_increase" else "accuracy drop"
    on = (f"{result.tp} × {escape(result.device.display_name)} (TP {result.tp}: one GPU's "
          "share below)" if result.tp > 1 else escape(result.device.display_name))
    con.print(f"[bold]{escape(result.spec.name)}[/] on {on} · "
              f"{served_text(result.dtype, result.precision)} · workload [bold]{escape(wl.label())}[/] · {escape(wl.targets.label())} · "
              f"objective: {pl.objective_words(rec.objective)} · budget {pct(rec.budget)} "
              f"({result.quality_protocol} {metric})")
    if getattr(result, "precision_effect", None):
        from ..decide.precision import precision_line

        con.print(precision_line(result.precision_effect), markup=False)
    con.print(("▶ " if rec.best is not None else "✗ ") + rec.reason, markup=False)
    if rec.best is not None and rec.best.quality.method and rec.best.strategy != "dense":
        con.print(f"  quality method: {rec.best.quality.method}", markup=False)
    for draft, why in getattr(result, "spec_skipped", ()):
        con.print(f"  no speculative candidate with a {draft} draft: {why} (--alpha gives one; "
                  "'pis-tui quality --acceptance' measures one)", markup=False)
    for c, label in ((rec.best, "recommended"), (rec.runner_up, "runner-up")):
        if c is not None:
            for line in pick_lines(result, c, rec.objective, label, rec):
                con.print(line, markup=False)
            if c.quality.citations and label == "recommended":
                con.print("  quality source: " + "; ".join(c.quality.citations[:2]), markup=False,
                          style="dim")
    t = Table(title=f"candidates: {len(rec.ranked)} may serve (ranked), "
                    f"{len(result.candidates) - len(rec.ranked)} may not", title_justify="left",
              box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    # what decides first, so a narrow terminal still shows it: memory columns from 140 wide,
    # the rank and full family names from 110
    wide, roomy = con.width >= 140, con.width >= 110
    # GPUs: the fewest of this kind that hold each at the concurrency (not under --tp)
    gpus_col = getattr(result, "tp", 1) == 1 and any(c.gpus_needed != 1 for c in result.candidates)
    cols = [c for c in ("#", "model", "loss", "weights", "seqs", "GPUs", "TTFT", "TPOT", "E2E",
                        "×dense", "batch", "tok/s", "×dense ", "status")
            if (wide or c not in ("weights", "seqs", "batch")) and (roomy or c != "#")
            and (gpus_col or c != "GPUs")]
    for col in cols:
        head = col if roomy or not col.startswith("×") else "×"
        t.add_column(head, justify="left" if col in ("model", "status") else "right",
                     no_wrap=col != "status", min_width=8 if col == "status" else None)
    ranked = {k.key: i + 1 for i, k in enumerate(rec.ranked)}
    order = list(rec.ranked) + [c for c in result.candidates if c.key not in ranked]
    for c in order:
        name = pl.candidate_name(c).replace(" (no pruning)", "")
        if not roomy:
            fams = ([f for f, _ in c.parts] if c.parts else
                    [c.speculation.draft_key[0]] if c.speculation is not None else [c.strategy])
            for fam in fams:
                name = name.replace(fam, families.get(fam).short or fam, 1)
        thr = c.throughput_tok_s
        cells = {
            "#": str(ranked.get(c.key, "")), "model": name,
            "loss": loss_text(c.quality) + (quality_marks(c.quality) if c.quality.value is not None else ""),
            "weights": f"{_gb(c.weights_bytes)} GB", "seqs": pl.sequences_text(c),
            "GPUs": "–" if c.gpus_needed == 0 else (">8" if c.gpus_needed is None else str(c.gpus_needed)),
            "TTFT": latency(c.ttft_ms), "TPOT": latency(c.tpot_ms), "E2E": latency(c.e2e_ms),
            "×dense": speed(pl.gain(c, result.dense, "latency")),
            "batch": "/".join(str(k.at_max_batch.batch) for k in c.classes if k.at_max_batch) or "–",
            "tok/s": f"{thr:,.0f}" if thr else "–",
            "×dense ": speed(pl.gain(c, result.dense, "throughput")),
            "status": rec.status(c) if roomy else _SHORT_STATUS.get(rec.status(c), rec.status(c))}
        t.add_row(*(cells[k] for k in cols))
    con.print(t)
    methods = sorted({k.at_concurrency.tpot_method for c in result.candidates for k in c.classes})
    con.print(f"serving model: {pl.SERVING_MODEL}. TPOT: {pl.TPOT_RULE} (here: {', '.join(methods)}). "
              f"Batch: {pl.BATCH_RULE}. Memory: {result.usable_bytes / 1e9:.1f} GB usable of "
              f"{result.device.memory_gb:g} GB ({USABLE:.0%}, decimal GB)"
              + (f" on each of the {result.tp} GPUs (weights, KV cache and timings are one "
                 "rank's)" if result.tp > 1 else "")
              + ("; GPUs: the fewest of this kind (tensor-parallel 1, 2, 4 or 8) holding the weights "
                 "and the concurrency's KV cache and activations, each GPU a 1/tp share (the KV "
                 "cache no finer than a head a GPU); the latencies are one GPU's" if gpus_col else "")
              + ". Timing: weakest source "
              f"{pl.sources.weakest(c.timing_source for c in result.candidates)}; "
              f"{result.priced_kernels} kernels priced in {result.elapsed_s:.2f} s. Quality marks: "
              "ᵉ extrapolated (not ranked unless --allow-extrapolated), ᵇ borrowed from another "
              "model, ˢ secondary source, ᶜ composed from a combination's parts, ᵒ measured on "
              "an oracle (an upper bound on quality)."
              + (f" ᵒ: {ORACLE_RULE}." if any(getattr(c.quality, "oracle", False)
                                              for c in result.candidates) else ""),
              style="dim", markup=False)

"""Turning parsed arguments into engine calls (shared by sweep, recommend, frontier, ops)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from .. import families
from ..errors import UserError
from ..model.scenario import Scenario
from .common import (DEFAULT_ALIGN, align_of, parse_families, parse_fraction, resolve_gpu,
                     sweep_sparsities)

#: the widths a family may round to --align, in words (LayerWidths fields; hidden_io is the
#: width of the embeddings and of the lm_head's input)
WIDTH_WORDS = {"hidden": "hidden size", "hidden_io": "hidden size", "inter": "MLP channels",
               "q_heads": "query heads", "kv_heads": "KV heads", "head_dim": "head dim",
               "expert_inter": "expert channels"}


def scenario_from_args(args: argparse.Namespace, device) -> Scenario:
    from .common import precision_from_args

    dtype, precision = precision_from_args(args, device)
    return Scenario(prefill_batch=args.prefill_batch, prompt_len=args.prompt_len,
                    decode_batch=args.decode_batch, context_len=args.context_len,
                    dtype=dtype, precision=precision,
                    engine=getattr(args, "engine", None) or "eager", tp=getattr(args, "tp", 1),
                    routing=getattr(args, "routing", None) or "balanced")


def open_cache_if_local(args: argparse.Namespace, device):
    """Measurements exist only for devices this machine measured: open the cache for those."""
    if not device.is_local:
        return None
    from ..cache import Cache

    return Cache.open(getattr(args, "cache", None))


def quality_from_args(args: argparse.Namespace, spec=None, cache=None):
    """The quality model: literature priors (by protocol), the user's CSV, or measured perplexity."""
    from ..quality.model import build_quality_model

    src = getattr(args, "quality", None)
    protocol = getattr(args, "protocol", "lora")
    if src == "measured":
        rows = []
        if cache is None:
            from ..cache import Cache

            cache = Cache.open(getattr(args, "cache", None))
        if spec is not None:
            rows = cache.get_quality_results(spec.name)
        if not rows:
            raise UserError("no measured perplexity in the cache for this model: run "
                            "'pis-tui quality --model DIR --text FILE' first")
        return build_quality_model(protocol=protocol, measured_rows=rows,
                                   method=getattr(args, "quality_method", None),
                                   combo_rule=getattr(args, "combo_quality", "multiplicative"))
    return build_quality_model(protocol=protocol, user_csv=src,
                               method=getattr(args, "quality_method", None),
                               combo_rule=getattr(args, "combo_quality", "multiplicative"))


def strategies_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The families and combinations a command prices (``--strategies``; default every family
    and every combination)."""
    from ..decide.sweep import default_strategies

    return parse_families(getattr(args, "strategies", None)) or default_strategies()


def combo_sparsities_from_args(args: argparse.Namespace):
    """Each combination part's sparsities (``--combo-sparsities``; None: the coarse grid)."""
    text = getattr(args, "combo_sparsities", None)
    return None if text is None else sweep_sparsities(text, "--combo-sparsities")


def run_sweep(args: argparse.Namespace, with_quality: bool = True):
    from ..decide.sweep import resolve, sweep

    gpu = resolve_gpu(args.gpu)
    spec, device = resolve(args.model, gpu)
    scenario = scenario_from_args(args, device)
    strategies = strategies_from_args(args)
    sparsities = (None if getattr(args, "sparsities", None) is None  # each family's own grid
                  else sweep_sparsities(args.sparsities))
    combo_sps = combo_sparsities_from_args(args)
    align = align_of(args)
    warnings = check_align(spec, grid_pairs(strategies, sparsities, combo_sps, spec), align, scenario,
                           explicit=getattr(args, "align", None) is not None)
    cache = open_cache_if_local(args, device)
    quality = quality_from_args(args, spec, cache) if with_quality else None
    result = sweep(spec, device, scenario, strategies, sparsities,
                   granularity=args.granularity, align=align, quality=quality, cache=cache,
                   combo_sparsities=combo_sps)
    for w in warnings + list(result.warnings):  # e.g. the model does not fit on the GPU
        print(f"pis-tui: warning: {w}", file=sys.stderr)
    return result


def grid_pairs(names, sparsities, combo_sparsities=None, spec=None) -> list[tuple[str, float]]:
    """(family, sparsity) of every pruned point a sweep of `names` × `sparsities` runs on
    ``spec`` (a combination's parts each as its family at its sparsity; the families that do
    not apply to the model left out)."""
    from ..families.strategy import strategies_grid
    from ..decide.sweep import default_strategies

    out = []
    for st in strategies_grid(default_strategies() if names is None else names, sparsities,
                              combo_sparsities=combo_sparsities, spec=spec):
        if families.get(st.family).is_baseline:
            continue
        out += list(st.parts) if st.parts else [(st.family, st.sparsity)]
    return list(dict.fromkeys(out))


def aligned_widths(spec, family: str, sparsity: float, align: int, scenario) -> list[tuple]:
    """(width in words, full size, size kept, size kept at an alignment of 1) of each width
    `family` rounds to `align` at `sparsity`: the widths of the family's layer plan that come
    out differently with an alignment of 1 (asked of the family's own ``shape`` hook, so no
    family is named here)."""
    from ..families import LayerShape, PhaseContext
    from ..families.strategy import Strategy

    fam = families.get(family)
    why = fam.applies(spec)
    if why:
        raise UserError(f"{family}: {why}")

    def widths(a: int):
        st = Strategy(family, sparsity, align=a)
        ctx = PhaseContext(spec, st, scenario, "prefill", st.effective_sparsity)
        plan = LayerShape.dense(ctx)
        full = {**asdict(plan.widths), "hidden_io": plan.hidden_io}
        fam.shape(ctx, plan)
        return full, {**asdict(plan.widths), "hidden_io": plan.hidden_io}

    full, kept = widths(align)
    _, fine = widths(1)
    out, seen = [], set()
    for k, v in kept.items():
        word = WIDTH_WORDS.get(k, k)
        if fine[k] != v and word not in seen:
            seen.add(word)
            out.append((word, full[k], v, fine[k]))
    return out


def check_align(spec, pairs, align: int, scenario, explicit: bool = True,
                families_flag: str = "--strategies") -> list[str]:
    """Bad or idle alignments of the (family, sparsity) `pairs`, before anything is priced.

    * ``--align`` at least as large as a width it rounds (qwen2.5-0.5b's hidden size is 896)
      can never remove anything from it: given explicitly, that is bad input (UserError,
      exit 2) naming the widths and families; the default alignment on a small model gets a
      warning instead.
    * An alignment that rounds a width back to its full size at some sparsity (896 × 0.875
      = 784 → 1024 at --align 512, capped at 896): a warning naming the family, the width
      and the sparsity.  The point stays in the sweep: the family may still remove
      something else (static_width's heads).

    Returns the warnings, one line each.  ``families_flag``: the flag that picks the families
    (the error suggests leaving them out of it), or "" for a command of one family."""
    from ..model.tensor_parallel import check_model

    check_model(spec, scenario.tp)  # a degree the model cannot split says so before any width
    too_big: dict = {}
    idle: dict = {}
    for family, s in pairs:
        for word, full, kept, fine in aligned_widths(spec, family, s, align, scenario):
            if align >= full:
                too_big.setdefault((word, full), []).append(family)
            elif kept >= full:
                idle.setdefault((family, word, full), []).append((s, fine))
    warnings = []
    if too_big:
        what = ", ".join(f"{word} {full} ({', '.join(dict.fromkeys(fams))})"
                         for (word, full), fams in too_big.items())
        smallest = min(full for _, full in too_big)
        if explicit:
            leave = f", or leave those families out of {families_flag}" if families_flag else ""
            raise UserError(f"--align {align} is not smaller than the {spec.name} widths it "
                            f"rounds, so it removes nothing from them: {what}; give --align below "
                            f"{smallest} (default {DEFAULT_ALIGN}){leave}")
        warnings.append(f"the default alignment {align} is not smaller than the {spec.name} widths "
                        f"it rounds, so it removes nothing from them: {what}; give --align below "
                        f"{smallest}")
    for (family, word, full), cases in idle.items():
        at = ", ".join(f"{100 * s:g}% ({fine} → {full})" for s, fine in cases)
        warnings.append(f"--align {align} removes nothing from {family}'s {word} at {at}: "
                        f"rounded to a multiple of {align} the kept {word} is the full {full}")
    return warnings


def budget_from_args(args: argparse.Namespace) -> float:
    text = args.ppl_budget if getattr(args, "quality", None) == "measured" else args.budget
    if text is None:
        raise UserError("--ppl-budget is needed with --quality measured (a relative perplexity "
                        "increase, e.g. 0.2 or 20%)" if getattr(args, "quality", None) == "measured"
                        else "--budget is needed")
    if getattr(args, "quality", None) == "measured":
        return parse_fraction(text, "perplexity budget", 0.0, 100.0)
    return parse_fraction(text, "budget", 0.0, 1.0)


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    from .common import add_cache, add_model_gpu, add_scenario, add_strategy_options

    add_model_gpu(p)
    add_scenario(p)
    add_strategies_arg(p)
    p.add_argument("--sparsities", default=None,
                   help="comma-separated, e.g. 0.25,0.5 (default 0.125,0.25,0.375,0.5)")
    add_combo_sparsities_arg(p)
    add_strategy_options(p)
    add_cache(p)


def add_budget_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", "-b", default="0.10",
                   help="largest acceptable accuracy drop, a fraction (0.10) or a percentage (10%%)")
    p.add_argument("--ppl-budget", default=None,
                   help="largest acceptable relative perplexity increase (with --quality measured)")


def add_strategies_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategies", "-s", default=None,
                   help="comma-separated families and combinations (first+second, e.g. "
                        "static_depth+static_width; 'families' and 'combos' stand for all of "
                        "them; default: every family but dense, and every combination)")


def add_combo_sparsities_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--combo-sparsities", default=None, metavar="LIST",
                   help="each combination part's sparsities, e.g. 0.125,0.25 (the default: a "
                        "coarse grid; a fixed-sparsity part such as 2:4 at its one)")


def add_ranking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-extrapolated", action="store_true",
                   help="also rank points whose quality is extrapolated beyond the data "
                        "(shown but skipped by default)")


def add_quality_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", choices=("lora", "training-free"), default="lora",
                   help="quality priors: pruned then LoRA-recovered (the study's) or one-shot")
    p.add_argument("--quality", default=None, metavar="FILE|measured",
                   help="your own evaluations (CSV: strategy,sparsity,quality_loss[,model,note]) "
                        "or 'measured' for perplexity measured with 'pis-tui quality'")
    p.add_argument("--quality-method", default=None, metavar="mean|best|NAME",
                   help="whose curve a family's quality follows: mean (default: the family mean "
                        "of the published methods), best (the one method whose curve is best for "
                        "the model and protocol), or a method's name (e.g. FLAP; a comma list, "
                        "with mean or best for the families not named)")
    p.add_argument("--combo-quality", choices=("multiplicative", "additive"),
                   default="multiplicative",
                   help="how a combination's loss is composed from its parts' (flagged "
                        "'composed'): multiplicative 1-(1-a)(1-b) (default) or additive a+b; "
                        "with --quality measured the real combined model's perplexity is used "
                        "where 'pis-tui quality' measured it")

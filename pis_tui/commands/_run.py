"""Turning parsed arguments into engine calls (shared by sweep, recommend, frontier, ops)."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from ..scenario import Scenario
from .common import parse_fraction, parse_sparsities, resolve_gpu


def scenario_from_args(args: argparse.Namespace, device) -> Scenario:
    from ..engine import default_dtype

    return Scenario(prefill_batch=args.prefill_batch, prompt_len=args.prompt_len,
                    decode_batch=args.decode_batch, context_len=args.context_len,
                    dtype=args.dtype or default_dtype(device))


def open_cache_if_local(args: argparse.Namespace, device):
    """Measurements exist only for devices this machine measured: open the cache for those."""
    if not device.is_local:
        return None
    from ..cache import Cache

    return Cache.open(getattr(args, "cache", None))


def quality_from_args(args: argparse.Namespace, spec=None, cache=None):
    """The quality model: literature priors (by protocol), the user's CSV, or measured perplexity."""
    from ..quality import build_quality_model

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
        return build_quality_model(protocol=protocol, measured_rows=rows)
    return build_quality_model(protocol=protocol, user_csv=src)


def run_sweep(args: argparse.Namespace, with_quality: bool = True):
    from ..engine import resolve, sweep
    from ..taxonomy import parse_strategies

    gpu = resolve_gpu(args.gpu)
    spec, device = resolve(args.model, gpu)
    scenario = scenario_from_args(args, device)
    strategies = parse_strategies(getattr(args, "strategies", None))
    sparsities = parse_sparsities(args.sparsities) if getattr(args, "sparsities", None) else None
    cache = open_cache_if_local(args, device)
    quality = quality_from_args(args, spec, cache) if with_quality else None
    result = sweep(spec, device, scenario, strategies, sparsities,
                   granularity=args.granularity, align=args.align, quality=quality, cache=cache)
    for w in result.warnings:  # e.g. the model does not fit on the GPU
        print(f"pis-tui: warning: {w}", file=sys.stderr)
    return result


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
    p.add_argument("--strategies", "-s", default=None,
                   help="comma-separated families (default: all but dense)")
    p.add_argument("--sparsities", default=None, help="comma-separated, e.g. 0.25,0.5 (default 0.125,0.25,0.375,0.5)")
    add_strategy_options(p)
    add_cache(p)


def add_budget_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", "-b", default="0.10",
                   help="largest acceptable accuracy drop, a fraction (0.10) or a percentage (10%%)")
    p.add_argument("--ppl-budget", default=None,
                   help="largest acceptable relative perplexity increase (with --quality measured)")


def add_quality_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", choices=("lora", "training-free"), default="lora",
                   help="quality priors: pruned then LoRA-recovered (the study's) or one-shot")
    p.add_argument("--quality", default=None, metavar="FILE|measured",
                   help="your own evaluations (CSV: strategy,sparsity,quality_loss[,model,note]) "
                        "or 'measured' for perplexity measured with 'pis-tui quality'")

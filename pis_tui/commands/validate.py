"""`pis-tui validate`: build the pruned model for real, time TTFT and TPOT end to end, and
compare with pis-tui's prediction from measured ops on this device."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from typing import Optional

from ..errors import UserError
from ._store import add_store_arg, open_store, reuse_table
from .common import (add_strategy_options, align_of, check_writable, parse_families,
                     parse_int_list, sweep_sparsities, tp_degree)


def _one_int(text, what: str, lo: int = 1) -> int:
    try:
        v = int(str(text).strip())
    except ValueError:
        raise UserError(f"{what} must be an integer, got {text!r}") from None
    if v < lo:
        raise UserError(f"{what} must be {'positive' if lo == 1 else f'at least {lo}'}, got {v}")
    return v


def register(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="build pruned models with random weights, time them end to end and compare "
             "with the prediction",
        description="Builds the pruned model with transformers' own classes and random weights "
                    "(dims exactly as the taxonomy prices them), times a prefill forward (TTFT) "
                    "and a decode step over a KV cache (TPOT) interleaved with the dense model, "
                    "and compares the measured speedups with pis-tui's prediction from the ops "
                    "measured on this device (measured first if needed).  Runs on this machine "
                    "only (--gpu local).  Defaults: prefill 1×128, decode batch 1 and 16 at "
                    "context 256.")
    p.add_argument("--model", "-m", default="qwen2.5-0.5b",
                   help="preset, config.json path or directory, or a cached HF id (default qwen2.5-0.5b)")
    p.add_argument("--layers", default=None, metavar="N",
                   help="build only the first N decoder layers (every width, expert and the "
                        "vocabulary as the model has them): a model too big to hold whole, "
                        "validated at reduced depth")
    p.add_argument("--gpu", "-g", default="local", help="only 'local': validation runs here")
    p.add_argument("--strategy", "-s", default=None,
                   help="the pruning families (static_depth, static_width, low_rank, dynamic_depth, "
                        "…) or combinations: first+second (each part at --sparsity) or "
                        "first@0.125+second@0.25 (the real combined model is built)")
    p.add_argument("--sparsity", default=None, help="one or more, e.g. 0.5 or 0.25,0.5")
    p.add_argument("--all", dest="all_", action="store_true",
                   help="the standard set: static_depth, static_width, low_rank, dynamic_depth (and "
                        "the other families) at 0.25 and 0.5, both phases; prints the accuracy table")
    p.add_argument("--core-only", action="store_true",
                   help="with --all: only the four families of the accuracy target")
    p.add_argument("--phase", choices=("prefill", "decode", "both"), default="both")
    g = p.add_argument_group("scenario")
    g.add_argument("--prefill-batch", default="1", help="one or more, e.g. 1,8 (default 1)")
    g.add_argument("--prompt-len", default="128")
    g.add_argument("--decode-batch", default="1,16", help="one or more, e.g. 1,16,64 (default 1,16)")
    g.add_argument("--context-len", default="256")
    g.add_argument("--dtype", default=None, help="fp32 (CPU default), bf16 (GPU default), fp16")
    g.add_argument("--precision", default=None, metavar="P",
                   help="serve every model quantized: int4 (= int4-g128), int4-g32|64|256 "
                        "(weight-only, torch's int4 kernels: real on the CPU and CUDA), fp8 / "
                        "fp8-tensor (W8A8 _scaled_mm: CUDA 8.9+ only); each model is built, its "
                        "linears quantized (not the lm_head, embeddings or routers), and "
                        "compared with the dense model at the same precision; the quantized "
                        "dense model is also timed against the unquantized one (the "
                        "quantization's own speedup).  --dtype stays the activation dtype")
    g.add_argument("--tp", type=tp_degree, default=1, metavar="N",
                   help="run each model as N tensor-parallel ranks of torch.distributed (gloo on "
                        "the CPU: a rank a core; NCCL on N GPUs), its linears sharded "
                        "explicitly, and compare with the per-rank prediction")
    p.add_argument("--repeats", default="5",
                   help="timed rounds per model (interleaved dense/pruned; medians)")
    p.add_argument("--warmup", default="1", help="untimed calls per model first")
    p.add_argument("--tolerance", default="0.05",
                   help="rounds of --repeats pairs go on until the measured speedup's ~95%% "
                        "interval is within this share of it (default 0.05: ±5%%)")
    p.add_argument("--max-rounds", default="4",
                   help="rounds before a speedup that has not settled is reported unstable "
                        "(default 4)")
    p.add_argument("--op-repeats", default=None,
                   help="timed batches per op measurement behind the predictions (default: the "
                        "timing engine's, 3 per round on the CPU, 7 on CUDA)")
    add_strategy_options(p)
    p.add_argument("--json", dest="json_out", metavar="FILE|-", default=None,
                   help="write the rows as a JSON list to FILE (or '-' for stdout); a file is "
                        "rewritten after every row")
    p.add_argument("--resume", action="store_true",
                   help="with --json FILE: keep the rows FILE already holds and time only the rest")
    p.add_argument("--routing-dir", metavar="DIR", default=None,
                   help="an MoE model: where the routing recorded from each model's timed "
                        "forwards is written (default: FILE.routing/ beside --json FILE, else a "
                        "new temporary directory); each row names its files")
    p.add_argument("--reuse-table", metavar="FILE", default=None,
                   help="op times measured on this device by 'pis-tui calibrate --out FILE' "
                        "(same torch/CUDA and timing method): used instead of measuring them again")
    add_store_arg(p)
    p.set_defaults(func=run)


def _strategies(args) -> list:
    from .. import families
    from ..families.strategy import Strategy
    from ..validation.compare import standard_strategies

    align = align_of(args)
    if args.all_:
        if args.strategy is not None:
            raise UserError("give either --all or --strategy, not both")
        sps = (0.25, 0.5) if args.sparsity is None else sweep_sparsities(args.sparsity, "--sparsity")
        # the standard set at the --align and --granularity asked (never silently the defaults)
        return [replace(st, granularity=args.granularity, align=align)
                for st in standard_strategies(extra=not args.core_only, sparsities=sps)]
    if args.strategy is None:
        raise UserError("--strategy is needed (or --all for the standard set)")
    from ..families.strategy import from_token

    tokens = [t.strip() for t in str(args.strategy).split(",") if t.strip()]
    points = [t for t in tokens if "@" in t]  # a combination at its parts' own sparsities
    named = ",".join(t for t in tokens if "@" not in t)
    # no combination point: the list as given (an error quotes it as typed)
    fams = [f for f in (parse_families(named if points else args.strategy, "--strategy",
                                       "use --all for the standard set")
                        if named or not points else ())
            if not families.get(f).is_baseline]
    out = [from_token(t, None, args.granularity, align) for t in points]
    for f in fams:
        if families.get(f).is_combo:  # each part at each --sparsity (a fixed part at its own)
            if args.sparsity is None:
                raise UserError(f"--sparsity is needed for {f} (each part's, e.g. --sparsity "
                                f"0.25), or give {f.replace('+', '@0.25+')}@0.25")
            out += [Strategy(f, s, args.granularity, align)
                    for s in sweep_sparsities(args.sparsity, "--sparsity")]
            continue
        fixed = families.get(f).fixed_sparsity
        if fixed is not None:
            out.append(Strategy(f, fixed, args.granularity, align))
            continue
        if args.sparsity is None:
            raise UserError(f"--sparsity is needed for {f} (e.g. --sparsity 0.5)")
        out += [Strategy(f, s, args.granularity, align)
                for s in sweep_sparsities(args.sparsity, "--sparsity")]
    return out


def run(args: argparse.Namespace) -> int:
    plan = _plan(args)
    spec, strategies, phases = plan.spec, plan.strategies, plan.phases
    if args.reuse_table and not __import__("os").path.isfile(args.reuse_table):
        raise UserError(f"--reuse-table {args.reuse_table}: no such file")
    quiet = args.json_out == "-"
    warn = (lambda m: print(f"pis-tui: warning: {m}", file=sys.stderr)) if quiet else None
    cache = open_store(args.cache, on_warning=warn)
    if getattr(cache, "read_only", False):  # refused before anything is measured
        cache.check_writable("validate: the op times and rows it measures could not be stored")

    from .. import validation as v
    from ..device.local import measuring_device
    from .common import console

    device = measuring_device()  # torch decides, as for profile and calibrate
    con = console() if not quiet else None
    if args.reuse_table:
        n, _ = reuse_table(cache, args.reuse_table, device.fingerprint)
        if con is not None:
            con.print(f"reusing {n} op times from {args.reuse_table}", markup=False)
    rows_out = _RowsOut(args, con, quiet, plan.precision)
    if con is not None:
        con.print(f"validating {spec.name} on {device.display_name}: {len(strategies)} strategies × "
                  f"{'prefill ' + ','.join(map(str, plan.prefill_batches)) + '×' + str(args.prompt_len) if 'prefill' in phases else ''}"
                  f"{' + ' if len(phases) == 2 else ''}"
                  f"{'decode batch ' + ','.join(map(str, plan.decode_batches)) + ' @ ' + str(args.context_len) if 'decode' in phases else ''}"
                  f", {args.repeats} interleaved rounds", markup=False)
    rows = _time_rows(args, plan, cache, rows_out)
    if args.json_out:
        from .common import dump_json

        dump_json(args.json_out, rows_out.done)
    if rows_out.seen and con is not None:
        con.print(f"resumed: {len(rows_out.seen)} row(s) kept from {args.json_out}, {len(rows)} "
                  "timed now", markup=False)
    if con is not None:
        con.print(_table(rows))
        summary = v.accuracy_summary(rows)
        if summary.get("quantization"):
            con.print(_quant_table(rows))
        _print_summary(con, summary, plan.tolerance, args)
        _print_row_warnings(con, rows)
    return 0


@dataclass
class _Plan:
    """What ``validate``'s arguments ask for, checked (one-line errors) before anything is
    measured."""
    spec: object
    model: object  # what validate builds: the --model as given, or its --layers config dict
    strategies: list
    phases: tuple
    prefill_batches: list
    decode_batches: list
    dtype: Optional[str]
    tolerance: float
    op_repeats: Optional[int]
    precision: str = ""  # a quantized format's canonical name ("" unquantized)


def _plan(args: argparse.Namespace) -> _Plan:
    """Check every argument (the integers are set on ``args`` as ints), the model and the
    tensor-parallel degree, and warn of strategies the alignment does not fit."""
    from ..device.gpus import LOCAL

    if args.gpu not in (LOCAL, None):
        raise UserError(f"validate builds and times models on this machine: use --gpu local "
                        f"(not {args.gpu!r}); to estimate another GPU use 'pis-tui sweep'")
    prefill_batches = parse_int_list(args.prefill_batch, "prefill batch")
    args.prompt_len = _one_int(args.prompt_len, "prompt length")
    args.context_len = _one_int(args.context_len, "context length")
    args.repeats = _one_int(args.repeats, "repeats")
    args.warmup = _one_int(args.warmup, "warmup", lo=0)
    op_repeats = _one_int(args.op_repeats, "op repeats") if args.op_repeats is not None else None
    args.max_rounds = _one_int(args.max_rounds, "max rounds")
    from .common import parse_fraction

    tolerance = parse_fraction(args.tolerance, "tolerance", 0.001, 0.5)
    strategies = _strategies(args)
    decode_batches = parse_int_list(args.decode_batch, "decode batch")
    phases = ("prefill", "decode") if args.phase == "both" else (args.phase,)
    if args.json_out and args.json_out != "-":
        check_writable(args.json_out)
    dtype = args.dtype
    if dtype is not None and dtype not in ("fp32", "bf16", "fp16"):
        raise UserError(f"validate runs fp32, bf16 or fp16 models, not {dtype!r}")
    dtype, precision_asked = _precision_arg(args, dtype)
    from ..model.scenario import Scenario

    Scenario(prefill_batch=max(prefill_batches), prompt_len=args.prompt_len,
             decode_batch=max(decode_batches), context_len=args.context_len,
             dtype=dtype or "fp32")  # validates the numbers (one-line errors)
    from ..hf.config import check_buildable, config_at_depth

    # unknown model → UserError before anything heavy
    raw, spec, model = config_at_depth(
        args.model, None if args.layers is None else _one_int(args.layers, "--layers"))
    check_buildable(spec)
    if args.all_:  # the standard set: the families this model can be pruned and built with
        strategies = [st for st in strategies if _fits(spec, st)]
    for st in strategies:  # a family this architecture cannot be built with: one line, now
        check_buildable(spec, st.family, st.granularity)
    if precision_asked and args.tp > 1:
        raise UserError("--precision is not offered with --tp: validate's tensor-parallel "
                        "ranks shard nn.Linear modules, not quantized ones")
    if args.tp > 1:
        _check_tp(args, spec)
    precision = ""
    if precision_asked:
        from ..validation.quantized import check_precision
        from ..validation.run import local_torch_device

        device = local_torch_device()
        precision = check_precision(spec, strategies, precision_asked, device,
                                    dtype or ("fp32" if device == "cpu" else "bf16"))
    from ._run import check_align

    for w in check_align(spec, [p for st in strategies
                                for p in (st.parts or ((st.family, st.sparsity),))], align_of(args),
                         Scenario(dtype=dtype or "fp32", precision=precision),
                         explicit=args.align is not None,
                         families_flag="" if args.all_ else "--strategy"):
        print(f"pis-tui: warning: {w}", file=sys.stderr)
    return _Plan(spec, model, strategies, phases, prefill_batches, decode_batches, dtype,
                 tolerance, op_repeats, precision)


def _precision_arg(args: argparse.Namespace, dtype: Optional[str]) -> tuple:
    """(the activation dtype, the quantized precision asked or ""): ``--precision bf16`` is
    ``--dtype bf16`` (a different --dtype beside it is refused)."""
    if not args.precision:
        return dtype, ""
    from ..model.precision import served_dtypes

    # a quantized precision's activations: the dtype asked, else bf16 (its kernels' fast path)
    return served_dtypes(dtype, args.precision, "bf16")


def _fits(spec, st) -> bool:
    """``st``'s family applies to ``spec`` (the expert-level ones need a mixture of experts)
    and validate can build it on this architecture."""
    from .. import families
    from ..hf.config import check_buildable

    if families.get(st.family).applies(spec):
        return False
    try:
        check_buildable(spec, st.family, st.granularity)
    except UserError:
        return False
    return True


def _check_tp(args: argparse.Namespace, spec) -> None:
    """``--tp N``: the model splits into N ranks, this machine can start their group, and no
    ``--resume``."""
    from ..device.local import local_device
    from ..model.tensor_parallel import check_model
    from ..timing.collectives import check_world

    if spec.moe is not None:
        raise UserError(f"{spec.name}: --tp is not offered for mixture-of-experts models (their "
                        "experts are not sharded by validate's tensor-parallel wrappers)")
    check_model(spec, args.tp)
    if local_device().kind == "cpu":
        check_world(args.tp, local_device())  # a group this CPU cannot start: exit 2 now
    if args.resume:
        raise UserError("--resume is not offered with --tp: the ranks time every row in "
                        "one group (run the rows you need)")


class _RowsOut:
    """Where the rows go as they are timed: ``done`` (with a resumed run's rows first), the
    --json file rewritten after each, and a line on the console; ``skip`` tells the rows
    already timed, ``progress`` shows a step on a terminal."""

    def __init__(self, args: argparse.Namespace, con, quiet: bool, precision: str = ""):
        self.args, self.con, self.quiet = args, con, quiet
        self.precision = precision
        self.done: list = _previous_rows(args) if args.resume else []
        other = {r.get("precision", "") for r in self.done} - {precision}
        if other:
            was = other.pop() or "unquantized"
            raise UserError(f"--resume: {args.json_out} holds {was} rows, and this run is "
                            f"{precision or 'unquantized'}: give another --json file")
        self.seen = {_row_key(r) for r in self.done}

    def progress(self, msg: str) -> None:
        if not self.quiet and sys.stderr.isatty():
            print(f"\r\033[K{msg[:110]}", end="", file=sys.stderr, flush=True)

    def skip(self, strat, phase, batch, length) -> bool:
        return (strat.token, round(strat.sparsity, 6), phase, batch, length,
                self.precision) in self.seen

    def on_row(self, r) -> None:
        self.done.append(r.to_dict())
        json_out = self.args.json_out
        if json_out and json_out != "-":  # as it goes: an error later loses no row
            from .common import dump_json

            dump_json(json_out, self.done)
        if not self.quiet and sys.stderr.isatty():
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        if self.con is not None:
            self.con.print(_row_line(r))

    def warning(self, m: str) -> None:
        print(f"\r\033[Kpis-tui: warning: {m}" if not self.quiet
              and sys.stderr.isatty() else f"pis-tui: warning: {m}", file=sys.stderr)


def _time_rows(args: argparse.Namespace, plan: _Plan, cache, out: _RowsOut) -> list:
    """Time every row: as ``--tp`` ranks, or on this one device."""
    if args.tp > 1:
        from ..validation.tp import validate_tp

        return validate_tp(plan.model, plan.strategies, plan.phases, tp=args.tp,
                           prefill_batches=plan.prefill_batches, prompt_len=args.prompt_len,
                           decode_batches=plan.decode_batches, context_len=args.context_len,
                           dtype=plan.dtype, repeats=args.repeats, warmup=args.warmup,
                           cache=cache, on_progress=out.progress, on_row=out.on_row,
                           op_repeats=plan.op_repeats)
    from .. import validation as v

    routing_dir = args.routing_dir
    if routing_dir is None and args.json_out and args.json_out != "-":
        routing_dir = args.json_out + ".routing"
    return v.validate(plan.model, plan.strategies, plan.phases,
                      prefill_batches=plan.prefill_batches, prompt_len=args.prompt_len,
                      decode_batches=plan.decode_batches, context_len=args.context_len,
                      dtype=plan.dtype, repeats=args.repeats, warmup=args.warmup, cache=cache,
                      on_progress=out.progress, on_row=out.on_row, op_repeats=plan.op_repeats,
                      tolerance=plan.tolerance, max_rounds=args.max_rounds,
                      on_warning=out.warning, skip=out.skip if out.seen else None,
                      routing_dir=routing_dir, precision=plan.precision)


def _print_summary(con, s: dict, tolerance: float, args: argparse.Namespace) -> None:
    """The accuracy summary: the errors over the stable rows, and how many rows were unstable
    or rest on a flagged prediction."""
    if s.get("n"):
        con.print(f"predicted speedup vs measured: median |error| {s['median_abs_error']:.1%}, "
                  f"worst {s['worst_abs_error']:.1%} ({s['worst']}); the FLOPs ratio: median "
                  f"{s['flops_median_abs_error']:.1%}, worst {s['flops_worst_abs_error']:.1%}"
                  f" (over the {s['n']} stable row(s))", markup=False)
        for key, who in (("dense_latency_error", "the dense model's"),
                         ("latency_error", "the pruned models'")):
            e = s.get(key) or {}
            if e:
                con.print(f"{who} latency, predicted vs measured: median {e['median']:+.1%} (the "
                          f"bias), |error| median {e['median_abs']:.1%}, p90 {e['p90_abs']:.1%}, "
                          f"worst {e['worst_abs']:.1%}", markup=False)
    q = s.get("quantization") or {}
    if q.get("n"):
        con.print(f"the quantization's own speedup, predicted vs measured: median |error| "
                  f"{q['median_abs_error']:.1%}, p90 {q['p90_abs_error']:.1%}, worst "
                  f"{q['worst_abs_error']:.1%} (over the {q['n']} stable case(s) of "
                  f"{q['cases']})", markup=False)
    elif q:
        con.print(f"the quantization's own speedup: none of its {q['cases']} case(s) settled "
                  "or went unflagged", markup=False)
    if s.get("unstable"):
        con.print(f"warning: {s['unstable']} row(s) unstable: their measured speedup did not "
                  f"settle within ±{tolerance:.0%} in {args.max_rounds} rounds of "
                  f"{args.repeats} pairs (the machine is too noisy for them); shown as an "
                  "interval and left out of the errors above", markup=False)
    if s.get("prediction_flagged"):
        con.print(f"warning: {s['prediction_flagged']} prediction(s) flagged (pred↑ above the "
                  "ceiling, pred≠ dense and pruned op times measured under different load, "
                  "pred~ op times measured under load) and "
                  "left out of the errors: 'pis-tui profile --remeasure all' on a quiet machine",
                  markup=False)


def _print_row_warnings(con, rows: list) -> None:
    """The rows to doubt (above the ceiling, timed while busy, eager after a failed capture,
    on unstable collectives), then every note the rows carry."""
    high = [r for r in rows if r.above_ceiling]
    if high:
        con.print(f"warning: {len(high)} row(s) measured above the family's physical ceiling "
                  "(↑): " + "; ".join(f"{r.strategy} {r.sparsity:g} {r.phase} b{r.batch}: "
                                      f"{r.measured_low:.2f}–{r.measured_high:.2f}× > "
                                      f"{r.ceiling:.2f}×" for r in high[:3])
                  + " — the dense model's run was slowed by something the pruned one escaped",
                  markup=False)
    busy = sum(1 for r in rows if r.contended)
    if busy:
        con.print(f"warning: {busy} row(s) timed while other processes used this machine's "
                  "cores (marked 'busy')", markup=False)
    failed = [r for r in rows if r.capture_failed]
    if failed:
        con.print(f"warning: {len(failed)} row(s) timed EAGER because a CUDA graph capture "
                  "failed (their measured times include host overhead the prediction does "
                  "not price): " + "; ".join(f"{r.strategy} {r.phase} b{r.batch}: {r.capture_error}"
                                             for r in failed[:3]), markup=False)
    shaky = [r for r in rows if r.tp and r.tp.get("unstable_collectives")]
    if shaky:
        colls = shaky[0].tp["collectives"]
        con.print(f"warning: {len(shaky)} row(s) rest on unstable collectives: the measured "
                  f"{shaky[0].tp['backend']} collectives ranged "
                  + "; ".join(f"{c['collective']} {c['bytes']:,} B {c['min_ms']:.3g}–"
                              f"{c['max_ms']:.3g} ms (median {c['ms']:.3g})" for c in colls[:4])
                  + ": measured speedups and their predictions are no better than that",
                  markup=False)
    notes = sorted({n for r in rows for n in r.notes})
    for n in notes:
        con.print(f"note: {n}", markup=False)


def _row_key(d: dict) -> tuple:
    return (d["strategy"], round(float(d["sparsity"]), 6), d["phase"], int(d["batch"]),
            int(d["length"]), d.get("precision", ""))


def _previous_rows(args) -> list:
    """The rows a --json file already holds (for --resume)."""
    import json
    import os

    if not args.json_out or args.json_out == "-":
        raise UserError("--resume needs --json FILE (the rows timed so far are read from it)")
    if not os.path.exists(args.json_out):
        return []
    try:
        with open(args.json_out, encoding="utf-8") as f:
            rows = json.load(f)
        [_row_key(r) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--resume: {args.json_out} is not a validate --json file ({e})") from None
    return rows


def _measured(r) -> str:
    """The measured speedup, or "unstable" with its interval (never a figure for it)."""
    if not r.stable:
        return f"unstable ({r.measured_low:.2f}–{r.measured_high:.2f})"
    return f"{r.measured_speedup:.2f}"


_PRED_FLAGS = {"above_ceiling": "pred↑", "mixed_conditions": "pred≠", "loaded_ops": "pred~"}


def _flags(r) -> str:
    return " ".join([f for f, on in (("↑ceiling", r.above_ceiling), ("busy", r.contended)) if on]
                    + [_PRED_FLAGS.get(f, f) for f in r.prediction_flags])


def _row_line(r) -> str:
    flag = " [capture failed: eager]" if r.capture_failed else ""
    flag += f" [{_flags(r)}]" if _flags(r) else ""
    err = f"error {r.error:+.1%}" if r.stable else f"±{(r.measured_high - r.measured_low) / (2 * r.measured_speedup):.0%} after {r.pairs} pairs"
    routed = f" [{r.routing['label']}]" if r.routing else ""
    return (f"{r.strategy} s={r.sparsity:g} {r.phase} b{r.batch}: predicted {r.predicted_speedup:.2f}× "
            f"measured {_measured(r)}× ({err}){flag}{routed}")


def _timing_label(r) -> str:
    return "FAILED→eager" if r.capture_failed else ("graph" if r.timing == "cuda-graph" else "eager")


def _pct_or_dash(x) -> str:
    return "—" if x is None else f"{x:+.1%}"


def _table(rows):
    from rich import box
    from rich.table import Table

    t = Table(title="predicted vs measured (median of interleaved pairs, ~95% interval)",
              box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    # in the JSON too: the lengths, the dense model's own ms, the ceiling
    for col in ("strategy", "s", "ach.", "phase", "b", "dense\npred ms", "dense\nmeas ms",
                "dense\nerror", "pred\nms", "meas\nms", "ms\nerror", "pred\n×", "meas\n×",
                "interval", "error", "FLOPs\n×", "timing"):
        t.add_column(col, justify="left" if col in ("strategy", "phase", "timing") else "right",
                     no_wrap=True)
    for r in rows:
        t.add_row(r.strategy, f"{r.sparsity:g}", f"{r.achieved_sparsity:.0%}", r.phase,
                  str(r.batch), f"{r.dense_predicted_ms:.2f}", f"{r.dense_measured_ms:.2f}",
                  _pct_or_dash(r.dense_latency_error),
                  f"{r.predicted_ms:.2f}", f"{r.measured_ms:.2f}", _pct_or_dash(r.latency_error),
                  f"{r.predicted_speedup:.2f}", "unstable" if not r.stable else f"{r.measured_speedup:.2f}",
                  f"{r.measured_low:.2f}–{r.measured_high:.2f}",
                  f"{r.error:+.1%}" if r.stable else "—",
                  f"{r.flops_speedup:.2f}",
                  " ".join(x for x in (_timing_label(r), "↑" if r.above_ceiling else "",
                                       "busy" if r.contended else "",
                                       *(_PRED_FLAGS.get(f, f) for f in r.prediction_flags)) if x))
    t.caption = ("↑: measured above the family's ceiling; busy: other processes held cores; "
                 "pred↑ / pred≠ / pred~: the prediction above the ceiling / its op times "
                 "measured under different load / under load (left out of the errors)")
    if rows and rows[0].precision:
        t.title = (f"{rows[0].precision}: predicted vs measured against the {rows[0].precision} "
                   "dense model (median of interleaved pairs, ~95% interval)")
    return t


def _quant_table(rows):
    """The quantization's own speedup, case by case: the quantized dense model against the
    unquantized one, predicted and measured."""
    from rich import box
    from rich.table import Table

    from ..validation.quantized import quantization_rows

    p, dt = rows[0].precision, rows[0].dtype
    t = Table(title=f"{p} dense vs {dt} dense: the quantization's own speedup",
              box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("phase", "b", f"{dt}\npred ms", f"{dt}\nmeas ms", f"{p}\npred ms",
                f"{p}\nmeas ms", "pred\n×", "meas\n×", "interval", "error", "flags"):
        t.add_column(col, justify="left" if col in ("phase", "flags") else "right", no_wrap=True)
    for q in quantization_rows(rows):
        t.add_row(q.phase, str(q.batch), f"{q.dense_predicted_ms:.2f}", f"{q.dense_measured_ms:.2f}",
                  f"{q.predicted_ms:.2f}", f"{q.measured_ms:.2f}", f"{q.predicted_speedup:.2f}",
                  "unstable" if not q.stable else f"{q.measured_speedup:.2f}",
                  f"{q.measured_low:.2f}–{q.measured_high:.2f}",
                  f"{q.error:+.1%}" if q.stable else "—", _flags(q))
    return t

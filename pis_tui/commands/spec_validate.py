"""`pis-tui validate-speculative`: self-speculative decoding run for real on this machine (an
early-exit draft of the dense model, a forced acceptance rate), timed against the plain greedy
decode and compared with the cost model plan prices it by."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from ..errors import UserError
from ._store import add_store_arg, open_store
from .common import check_writable, parse_int_list

NAME = "validate-speculative"


def register(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="run self-speculative decoding for real (an early-exit draft, forced α) and "
             "compare its speedup with the cost model's",
        description="Builds the dense model with random weights, prefills a random prompt and "
                    "decodes it twice, interleaved and repeated: plainly (one token a step) and "
                    "self-speculatively (γ steps of an early exit of the model's first layers, "
                    "one verification of γ+1 tokens a sequence, the cache rolled back to the "
                    "accepted tokens; each sequence's acceptances drawn with a forced α).  The "
                    "measured speedup (dense decode time over speculative) is compared with the "
                    "cost model's, priced from this machine's measured op times and the "
                    "iterations the run took.  Checks the cost of the draft steps, the "
                    "verification and the rollback, not α.")
    p.add_argument("--model", "-m", default="qwen2.5-0.5b",
                   help="preset, config.json path or directory, or a cached HF id (default "
                        "qwen2.5-0.5b)")
    p.add_argument("--layers", default=None, metavar="N",
                   help="build only the first N decoder layers (the model at reduced depth)")
    p.add_argument("--draft-sparsity", default="0.75",
                   help="the static-depth draft's sparsity: it keeps the first L − round(s·L) "
                        "layers (default 0.75)")
    p.add_argument("--gamma", default="4", help="drafted tokens an iteration (default 4)")
    p.add_argument("--alpha", default="0.9",
                   help="the forced acceptance rate, in [0, 1) (default 0.9)")
    p.add_argument("--prompt-len", default="64")
    p.add_argument("--output-len", default="64", help="tokens each sequence decodes (default 64)")
    p.add_argument("--decode-batch", default="1,8",
                   help="one or more static batches, e.g. 1,16,64 (default 1,8)")
    p.add_argument("--repeats", default="3", help="interleaved dense/speculative pairs (default 3)")
    p.add_argument("--warmup", default="1", help="short untimed runs of each first (default 1)")
    p.add_argument("--seed", default="0", help="weights, prompt and acceptance draws (default 0)")
    p.add_argument("--dtype", default="fp32", help="fp32 (default) or bf16")
    p.add_argument("--op-repeats", default=None,
                   help="timed batches per op measurement behind the predictions")
    p.add_argument("--json", dest="json_out", metavar="FILE|-", default=None,
                   help="write the rows and the error summary as JSON to FILE (or '-')")
    add_store_arg(p)
    p.set_defaults(func=run)


def _int(text, what: str, lo: int = 1, hi: int = 1 << 20) -> int:
    try:
        v = int(str(text).strip())
    except ValueError:
        raise UserError(f"{what} must be an integer, got {text!r}") from None
    if not lo <= v <= hi:
        raise UserError(f"{what} must be from {lo} to {hi}, got {v}")
    return v


def _float(text, what: str) -> float:
    try:
        v = float(str(text).strip())
    except ValueError:
        raise UserError(f"{what} must be a number, got {text!r}") from None
    if v != v:
        raise UserError(f"{what} must be a number, got {text!r}")
    return v


@dataclass
class _Plan:
    model: object  # what is built: --model, or its --layers config dict
    spec: object
    draft_sparsity: float
    draft_layers: int
    gamma: int
    alpha: float
    prompt_len: int
    output_len: int
    batches: tuple
    repeats: int
    warmup: int
    seed: int
    dtype: str
    op_repeats: object


def _plan(args: argparse.Namespace) -> _Plan:
    """Every argument checked (one line each) before anything is built or measured."""
    gamma = _int(args.gamma, "--gamma (γ, drafted tokens an iteration)", 1, 63)
    alpha = _float(args.alpha, "--alpha")
    if not 0.0 <= alpha < 1.0:
        raise UserError(f"--alpha {args.alpha} outside [0, 1): a forced acceptance rate (1 "
                        "would never reject)")
    s = _float(args.draft_sparsity, "--draft-sparsity")
    if not 0.0 < s < 1.0:
        raise UserError(f"--draft-sparsity {args.draft_sparsity} outside (0, 1)")
    prompt_len = _int(args.prompt_len, "--prompt-len")
    output_len = _int(args.output_len, "--output-len")
    batches = parse_int_list(args.decode_batch, "decode batch")
    if not batches:
        raise UserError(f"--decode-batch {args.decode_batch!r} gives no batch")
    repeats = _int(args.repeats, "--repeats")
    warmup = _int(args.warmup, "--warmup", 0)
    seed = _int(args.seed, "--seed", 0, 2 ** 31 - 1)
    op_repeats = _int(args.op_repeats, "--op-repeats") if args.op_repeats is not None else None
    if args.dtype not in ("fp32", "bf16"):
        raise UserError(f"--dtype {args.dtype!r}: validate-speculative runs fp32 or bf16")
    if args.json_out and args.json_out != "-":
        check_writable(args.json_out)
    from ..hf.config import check_buildable, config_at_depth
    from ..validation.speculative import check_spec, draft_layers_of

    raw, spec, model = config_at_depth(
        args.model, None if args.layers is None else _int(args.layers, "--layers"))
    check_spec(spec)
    check_buildable(spec)
    E = draft_layers_of(spec.num_layers, s, spec)
    return _Plan(model, spec, s, E, gamma, alpha, prompt_len, output_len, batches, repeats,
                 warmup, seed, args.dtype, op_repeats)


def run(args: argparse.Namespace) -> int:
    plan = _plan(args)
    quiet = args.json_out == "-"
    warnings: list = []

    def warn(m: str) -> None:
        warnings.append(m)
        print(f"pis-tui: warning: {m}", file=sys.stderr)

    cache = open_store(args.cache, on_warning=warn if quiet else None)
    if getattr(cache, "read_only", False):
        cache.check_writable(f"{NAME}: the op times it measures could not be stored")
    from ..validation import speculative as vs
    from .common import console

    con = console() if not quiet else None

    def progress(msg: str) -> None:
        if not quiet and sys.stderr.isatty():
            print(f"\r\033[K{msg[:110]}", end="", file=sys.stderr, flush=True)

    def on_row(r) -> None:
        if not quiet and sys.stderr.isatty():
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        if con is not None:
            con.print(f"batch {r.batch}: {r.iterations} iterations, dense {r.dense_measured_ms:.0f} "
                      f"ms, speculative {r.spec_measured_ms:.0f} ms: measured "
                      f"{r.measured_speedup:.2f}×, predicted {r.predicted_speedup:.2f}× "
                      f"({r.error:+.1%})", markup=False)

    if con is not None:
        con.print(f"{NAME} {plan.spec.name} ({plan.spec.num_layers} layers, {plan.dtype}): "
                  f"draft = its first {plan.draft_layers} layers (s {plan.draft_sparsity:g}), "
                  f"γ {plan.gamma}, forced α {plan.alpha:g}, prompt {plan.prompt_len}, output "
                  f"{plan.output_len}, decode batch {','.join(map(str, plan.batches))}, "
                  f"{plan.repeats} interleaved pairs", markup=False)
    try:
        rows = vs.validate_speculative(
            plan.model, plan.batches, draft_sparsity=plan.draft_sparsity, gamma=plan.gamma,
            alpha=plan.alpha, prompt_len=plan.prompt_len, out_tokens=plan.output_len,
            repeats=plan.repeats, warmup=plan.warmup, seed=plan.seed, dtype=plan.dtype,
            cache=cache, op_repeats=plan.op_repeats, on_progress=progress,
            on_warning=warn, on_row=on_row)
    finally:
        if hasattr(cache, "close"):
            cache.close()
    summ = vs.summary(rows)
    if args.json_out:
        from .common import dump_json

        dump_json(args.json_out, {"model": plan.spec.name, "layers": plan.spec.num_layers,
                                  "dtype": plan.dtype, "rows": [r.to_dict() for r in rows],
                                  "summary": summ, "warnings": warnings})
    if con is not None:
        con.print(table(rows))
        if summ.get("n"):
            con.print(f"predicted vs measured speedup over {summ['n']} batch(es): median |error| "
                      f"{summ['median_abs_error']:.1%}, p90 {summ['p90_abs_error']:.1%}, worst "
                      f"{summ['worst_abs_error']:.1%}", markup=False)
        con.print("checks the cost of the draft steps, the verification and the rollback on this "
                  "machine, given the acceptances drawn; not α (forced), and not a GPU",
                  markup=False)
    return 0


def table(rows):
    from rich import box
    from rich.table import Table

    t = Table(title="speculative vs dense decode (median of interleaved pairs)",
              box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("batch", "iterations\nreal / E", "tokens\nmin–max", "dense\nmeas ms",
                "spec\nmeas ms", "meas ×", "interval", "pred ×", "error", "dense\npred ms",
                "spec\npred ms", "draft step\npred / meas", "verify\npred / meas",
                "rollback\nms", "load", "flags"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        t.add_row(str(r.batch), f"{r.iterations} / {r.expected_iterations:.1f}",
                  f"{r.tokens_min}–{r.tokens_max}", f"{r.dense_measured_ms:.0f}",
                  f"{r.spec_measured_ms:.0f}", f"{r.measured_speedup:.2f}",
                  f"{r.measured_low:.2f}–{r.measured_high:.2f}", f"{r.predicted_speedup:.2f}",
                  f"{r.error:+.1%}", f"{r.dense_predicted_ms:.0f}", f"{r.spec_predicted_ms:.0f}",
                  f"{r.draft_step_predicted_ms:.1f} / {r.draft_step_measured_ms:.1f}",
                  f"{r.verify_predicted_ms:.1f} / {r.verify_measured_ms:.1f}",
                  f"{r.rollback_measured_ms:.2f}", f"{r.load[0]:.1f}",
                  " ".join(x for x in ("busy" if r.contended else "",
                                       f"ops~{r.loaded_ops}" if r.loaded_ops else "") if x))
    t.caption = ("speedup = dense decode time / speculative decode time (prefill excluded); "
                 "predicted from this machine's op times and the realised iterations; E: the "
                 "expected iterations of the static batch; busy: other processes held cores; ops~N: N op "
                 "times behind the prediction measured unstable")
    return t

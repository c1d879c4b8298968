"""``pis-tui quality``: measured quality of real pruning on a local Hugging Face model.

Loads the model and its tokenizer from a directory (offline), prunes a copy per family ×
sparsity (pis_tui.hf), and measures perplexity on the user's text file
(pis_tui.hf.perplexity).  The result per point is the relative perplexity increase
(ppl_pruned − ppl_dense) / ppl_dense, a metric of its own (``ppl_increase``), never
mixed with the accuracy-drop priors.

The first ``--calib-tokens`` tokens of the text calibrate the importance scores (Block
Influence, activation magnitudes, Wanda norms); perplexity is measured on the tokens after
them, so calibration and evaluation never overlap.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import MeasureError, UserError
from .common import add_cache, check_writable, dump_json, positive_int, sweep_sparsities

DEFAULT_SPARSITIES = "0.125,0.25,0.375,0.5"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json",
                    "spiece.model")
ROW_KEYS = ("model", "strategy", "sparsity", "achieved_sparsity", "ppl_dense", "ppl_pruned",
            "ppl_increase", "text_sha256", "n_tokens")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "quality", help="measure the perplexity cost of real pruning on a local model",
        description="Prune a local Hugging Face model for real, family by family, and measure the "
                    "relative perplexity increase on your text file (metric: ppl_increase). Runs "
                    "on CPU for small models; nothing is downloaded.")
    p.add_argument("--model", "-m", required=True, metavar="DIR",
                   help="directory of a Hugging Face causal LM (config, weights and tokenizer)")
    p.add_argument("--text", required=True, metavar="FILE", help="a UTF-8 text file to measure perplexity on")
    p.add_argument("--strategies", default=None,
                   help="comma-separated families (default: every family that can be applied to a "
                        "real model; dense, the baseline, is always measured) and combinations: "
                        "first+second (each part on --combo-sparsities), first@0.125+second@0.25 "
                        "(one real combined model), 'combos' for every combination")
    p.add_argument("--sparsities", default=DEFAULT_SPARSITIES,
                   help="comma-separated fractions (semi_structured_24 is always 0.5)")
    p.add_argument("--combo-sparsities", default="0.125,0.25",
                   help="each combination part's sparsities (a fixed-sparsity part at its own)")
    p.add_argument("--max-tokens", type=positive_int("max tokens"), default=4096,
                   help="evaluate on at most this many tokens after the calibration tokens")
    p.add_argument("--calib-tokens", type=positive_int("calibration tokens"), default=512,
                   help="tokens at the start of the text used for importance (at most a quarter of it)")
    p.add_argument("--seq-len", type=positive_int("sequence length"), default=512,
                   help="window length for perplexity")
    p.add_argument("--stride", type=positive_int("stride"), default=None,
                   help="new tokens scored per window (default seq-len − 1: disjoint windows)")
    p.add_argument("--batch-size", type=positive_int("batch size"), default=1)
    p.add_argument("--granularity", choices=("layer", "sublayer"), default="layer",
                   help="static_depth: drop whole layers or attention/MLP blocks separately")
    p.add_argument("--align", type=positive_int("alignment"), default=None,
                   help="static_width: MLP channels kept in multiples of this "
                        "(default 128, or 8 when the intermediate size is under 1024)")
    p.add_argument("--block", type=positive_int("block size"), default=64,
                   help="dynamic_sparse_attention: block size in tokens (capped at seq-len/4)")
    p.add_argument("--acceptance", action="store_true",
                   help="also measure each pruned model's acceptance rates as a speculative draft "
                        "of the dense model (greedy: argmax agreement; sampling: Σ min(p, q) at "
                        "--temperature), stored beside its perplexity for plan's speculative "
                        "candidates")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="the sampling temperature of --acceptance (default 1.0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                   help="default fp32 on CPU, bf16 on CUDA")
    add_cache(p)
    p.add_argument("--json", dest="json_out", metavar="FILE|-", default=None,
                   help="write the measured points as JSON to FILE (or '-' for stdout)")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------
# plain functions (also used by the TUI / cache)
# ---------------------------------------------------------------------------------------------

def measured_quality_rows(model: str, points, ppl_dense: float, text_sha256: str, n_tokens: int) -> list[dict]:
    """Plain dicts ready for the cache, one per measured point.

    ``points``: iterables of (strategy, sparsity, achieved_sparsity, ppl_pruned).
    ``ppl_increase`` = (ppl_pruned − ppl_dense) / ppl_dense, a fraction.
    """
    rows = []
    for strategy, sparsity, achieved, ppl in points:
        rows.append({
            "model": model, "strategy": strategy, "sparsity": float(sparsity),
            "achieved_sparsity": float(achieved), "ppl_dense": float(ppl_dense),
            "ppl_pruned": float(ppl), "ppl_increase": (float(ppl) - ppl_dense) / ppl_dense,
            "text_sha256": text_sha256, "n_tokens": int(n_tokens),
        })
    return rows


def open_quality_cache(cache_path: str | None):
    """The DuckDB cache (pis_tui.cache) or None when that module is absent.  Opened before
    measuring, so an unusable cache fails fast (CacheError, exit 4)."""
    try:
        from ..cache import Cache
    except ImportError:
        return None
    return Cache.open(cache_path)


def store_rows(cache, rows: list[dict], extra: dict | None = None) -> int:
    """Store measured rows (extra settings go to the cache's extra_json); returns how many."""
    if cache is None or not rows:
        return 0
    fn = getattr(cache, "put_quality_results", None)
    if fn is None:
        return 0
    fn([dict(r, **(extra or {})) for r in rows])
    return len(rows)


def parse_strategies(text: str) -> tuple[list[str], list[str]]:
    """(measurable strategies, unsupported ones) from a comma list; unknown names fail.  A
    combination (``first+second``, ``first@0.125+second@0.25``, or ``combos`` for all) is
    measurable when both its parts are."""
    from .. import families
    from ..families.prune import measurable, unsupported

    if text is None:
        return list(measurable()), []
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise UserError("no strategy given")
    expanded = []
    for n in names:
        expanded += list(families.combo_names()) if n == "combos" else [n]
    can, cannot = measurable(), unsupported()
    out, unsup = [], []
    for n in expanded:
        if families.SEP in n:
            from ..families.strategy import from_token

            base = from_token(n, 0.25).family  # UserError naming the combinations
            combo = families.get(base)
            target = out if combo.quality_supported else unsup
            if n not in target:
                target.append(n)
            continue
        if not families.is_family(n):
            raise UserError(f"unknown strategy {n!r} (families: {', '.join(families.names())})")
        if n in can and n not in out:
            out.append(n)
        elif n in cannot and n not in unsup:
            unsup.append(n)
    return out, unsup


def variants_of(strategies, sparsities, combo_sparsities) -> list[tuple[str, float, tuple]]:
    """(name to store, sparsity, parts) of every model to prune: a family at each sparsity of
    its grid; a combination at each pair of its parts' grid (stored by its token, its sparsity
    composed); a combination token at its own parts."""
    from .. import families
    from ..families.strategy import Strategy, from_token

    out = []
    for st in strategies:
        if families.SEP in st:
            if "@" in st:
                strat = from_token(st)
                out.append((strat.token, strat.sparsity, strat.parts))
                continue
            combo = families.get(st)
            for pair in combo.part_grid(combo_sparsities):
                strat = Strategy(st, 0.0, parts=tuple(zip(combo.part_names, pair)))
                out.append((strat.token, strat.sparsity, strat.parts))
            continue
        out += [(st, s, ()) for s in families.get(st).sparsity_grid(sparsities)]
    return out


def _check_inputs(args) -> tuple[Path, Path, str, bytes]:
    t = getattr(args, "temperature", 1.0)
    if not (0.0 < t <= 2.0):
        raise UserError(f"--temperature must be in (0, 2], got {t}")
    mdir = Path(args.model).expanduser()
    if not mdir.exists():
        raise UserError(f"{mdir}: no such directory")
    if not mdir.is_dir():
        raise UserError(f"{mdir}: not a directory (give the directory of a Hugging Face model)")
    if not (mdir / "config.json").is_file():
        raise UserError(f"{mdir}: no config.json in this directory")
    tpath = Path(args.text).expanduser()
    if not tpath.is_file():
        raise UserError(f"{tpath}: no such file" if not tpath.exists() else f"{tpath}: not a file")
    try:
        raw = tpath.read_bytes()
    except OSError as e:
        raise UserError(f"{tpath}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{tpath}: not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise UserError(f"{tpath}: the text is empty")
    return mdir, tpath, text, raw


def _load(mdir: Path, device: str, dtype_name: str | None, spec=None, seq_len: int = 512):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not any((mdir / f).is_file() for f in _TOKENIZER_FILES):
        raise UserError(f"{mdir}: no tokenizer (tokenizer.json, tokenizer.model…) in this directory: "
                        "perplexity on a text needs the model's tokenizer")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise MeasureError("--device cuda: no CUDA device is available")
    dtype_name = dtype_name or ("bf16" if device == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    if spec is not None:  # before loading: a model that does not fit is one line, not the OOM killer
        from ..validation.memory_check import check, quality_need

        check(quality_need(spec, dtype_name, seq_len), device,
              f"quality for {spec.name} ({dtype_name}: the model and one pruned copy)")
    try:
        tok = AutoTokenizer.from_pretrained(str(mdir), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds here
        raise UserError(f"{mdir}: cannot load the tokenizer offline ({_first_line(e)})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(mdir), local_files_only=True, dtype=dtype)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{mdir}: cannot load the model offline ({_first_line(e)})") from None
    model.to(device).eval()
    return model, tok, device, dtype_name


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def run(args) -> int:
    from ..model.spec import load_model_spec

    sparsities = sweep_sparsities(args.sparsities)
    combo_sps = sweep_sparsities(args.combo_sparsities, "--combo-sparsities")
    strategies, unsupported = parse_strategies(args.strategies)
    mdir, tpath, text, raw = _check_inputs(args)
    if args.json_out and args.json_out != "-":
        check_writable(args.json_out)
    spec = load_model_spec(str(mdir))  # one-line errors for MoE and non-decoder configs
    strategies = _applicable(spec, strategies, asked=args.strategies is not None)
    if args.align is not None:  # the default adapts to the model (pruning.auto_align)
        import sys

        from .. import families
        from ..model.scenario import Scenario
        from ._run import check_align

        pairs = [p for _, s, parts in variants_of(strategies, sparsities, combo_sps)
                 for p in (parts or ())]
        pairs += [(st, s) for st in strategies if families.SEP not in st
                  for s in families.get(st).sparsity_grid(sparsities)]
        for w in check_align(spec, pairs, args.align, Scenario(dtype="fp32")):
            print(f"pis-tui: warning: {w}", file=sys.stderr)
    import hashlib

    text_sha = hashlib.sha256(raw).hexdigest()
    cache = open_quality_cache(args.cache)
    try:
        args._combo_sps = combo_sps
        return _measure(args, cache, spec, sparsities, strategies, unsupported, mdir, tpath, text, text_sha)
    finally:
        if cache is not None:
            cache.close()


def _measure(args, cache, spec, sparsities, strategies, unsupported, mdir, tpath, text, text_sha) -> int:
    from rich.console import Console

    from .common import console

    err = Console(stderr=True, highlight=False, no_color=bool(os.environ.get("NO_COLOR")) or None)
    out = err if args.json_out == "-" else console()

    from .. import families

    # the expert-level families slice transformers' MoE classes as they are (hf/experts.py):
    # only the other families need the Llama layout
    experts_only = all(families.get(p).moe_only for st in strategies for p in _base(st).split("+"))
    ev = _prepare(args, spec, mdir, tpath, text, layout=not experts_only)
    variants = variants_of(strategies, sparsities, getattr(args, "_combo_sps", None))
    got = _Measured()
    t0 = time.time()
    err.print(f"pis-tui quality: {spec.name} ({spec.num_layers} layers) on {ev.device} {ev.dtype_name}; "
              f"{ev.n_calib} calibration + {ev.eval_ids.numel()} evaluation tokens, {len(ev.windows)} windows × "
              f"{1 + len(variants)} models", markup=False)
    try:
        _measure_points(args, cache, spec, ev, strategies, variants, text_sha, err, got)
    except KeyboardInterrupt:
        if got.n_stored:
            err.print(f"{got.n_stored} points measured before the interrupt are stored in the cache")
        raise
    stored = f"{got.n_stored} points stored in the cache" if got.n_stored else ""
    elapsed = time.time() - t0

    _print_results(out, spec, tpath, got, unsupported)
    _print_notes(err, strategies, sparsities, unsupported)
    err.print(f"done in {elapsed:.1f} s" + (f"; {stored}" if stored else ""))

    if args.json_out:
        _write_json(args, spec, mdir, tpath, text_sha, ev, got, unsupported)
    return 0


class _Eval:
    """The loaded model, and the text split into calibration and evaluation windows."""

    def __init__(self, model, device, dtype_name, n_calib, eval_ids, seq_len, windows, calib_wins,
                 block, settings):
        self.model, self.device, self.dtype_name = model, device, dtype_name
        self.n_calib, self.eval_ids, self.seq_len = n_calib, eval_ids, seq_len
        self.windows, self.calib_wins, self.block = windows, calib_wins, block
        self.settings = settings  # stored with each row (the cache's extra_json) and in the JSON


def _prepare(args, spec, mdir, tpath, text, layout: bool = True) -> _Eval:
    """Load the model (an unsupported layout fails now, before any measuring, unless
    ``layout`` is off: only expert-level families, which need none), tokenize the text and cut
    it into calibration tokens and evaluation windows."""
    import torch

    from ..hf import perplexity as P
    from ..hf.layout import decoder_layers

    model, tok, device, dtype_name = _load(mdir, args.device, args.dtype, spec, args.seq_len)
    if layout:
        decoder_layers(model)  # an unsupported layout fails now, before any measuring
    ids = torch.tensor(P.tokenize(tok, text), dtype=torch.long)
    if ids.numel() < 8:
        raise UserError(f"{tpath}: only {ids.numel()} tokens; need at least 8 (calibration + evaluation)")
    n_calib = min(args.calib_tokens, ids.numel() // 4)
    calib_ids = ids[:n_calib]
    eval_ids = ids[n_calib:n_calib + args.max_tokens]
    max_pos = getattr(model.config, "max_position_embeddings", None)
    seq_len = min(args.seq_len, max(2, eval_ids.numel()), max_pos if isinstance(max_pos, int) and max_pos > 1
                  else args.seq_len)
    windows = P.make_windows(eval_ids.numel(), seq_len, args.stride)
    calib_wins = P.calibration_windows(calib_ids, seq_len)
    block = max(2, min(args.block, seq_len // 4))

    settings = {"seq_len": seq_len, "stride": min(args.stride or seq_len - 1, seq_len - 1),
                "calib_tokens": int(n_calib), "max_tokens": args.max_tokens,
                "granularity": args.granularity, "align": args.align, "block": block,
                "device": device, "dtype": dtype_name, "model_dir": str(mdir.resolve())}
    return _Eval(model, device, dtype_name, n_calib, eval_ids, seq_len, windows, calib_wins, block,
                 settings)


class _Measured:
    """What the measuring has given so far (the points stored are kept on Ctrl-C)."""

    def __init__(self):
        self.results = []  # (strategy, sparsity, achieved, ppl, note)
        self.rows: list[dict] = []
        self.n_stored = 0
        self.dense = None
        self.ppl_dense = None
        self.acceptance: dict = {}  # (strategy, sparsity) -> AcceptanceResult (--acceptance)

    def add(self, cache, spec, st, s, res, r, text_sha, settings, acc=None) -> None:
        """One pruned model's point (with its acceptance rates as a draft, when measured),
        stored in the cache at once."""
        from .. import families

        achieved = res.final_achieved()
        self.results.append((st, s, achieved, r.ppl, res.note))
        # a quality oracle's point (every update computed, then skipped) is an upper bound on
        # quality: stored as such, so that --quality measured ranks and labels it so
        oracle = bool(families.get(_base(st)).quality_oracle)
        new = [dict(row, oracle=oracle, **(acc.to_row() if acc is not None else {})) for row in
               measured_quality_rows(spec.name, [(st, s, achieved, r.ppl)], self.ppl_dense,
                                     text_sha, self.dense.n_tokens)]
        self.acceptance[(st, s)] = acc
        self.rows.extend(new)
        self.n_stored += store_rows(cache, new, dict(settings, note=res.note))


def _measure_points(args, cache, spec, ev: _Eval, strategies, variants, text_sha, err,
                    got: _Measured) -> None:
    """Calibrate (when a family needs it), measure the dense model, then each variant pruned,
    under one progress bar; the results go to ``got`` as they come."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..hf import perplexity as P

    total = len(ev.calib_wins) + len(ev.windows) * (1 + len(variants))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as prog:
        task = prog.add_task("calibrating", total=total)
        base = [0]

        def on_prog(done, _n):
            prog.update(task, completed=base[0] + done)

        cal = _calibration(ev, strategies, on_prog)
        base[0] += len(ev.calib_wins)
        prog.update(task, description="dense", completed=base[0])
        got.dense = _ppl(P, ev.model, ev.eval_ids, ev.seq_len, args, on_prog, "dense")
        got.ppl_dense = got.dense.ppl
        base[0] += len(ev.windows)
        svd_cache: dict = {}
        recalibrate = _recalibrator(ev)

        for st, s, parts in variants:
            prog.update(task, description=f"{st} {s:.1%}", completed=base[0])
            res, r, acc = _prune_and_measure(args, ev, st, s, parts, cal, recalibrate, svd_cache,
                                             on_prog)
            got.add(cache, spec, st, s, res, r, text_sha, ev.settings, acc)
            base[0] += len(ev.windows)
            if (st, s) == next((v[0], v[1]) for v in reversed(variants) if v[0] == st):
                svd_cache.clear()  # this family's last variant: its decompositions are done


def _calibration(ev: _Eval, strategies, on_prog):
    """The importance scores on the calibration windows, or None when no family needs them."""
    from .. import families
    from ..hf.calibration import calibrate

    needs_cal = any(families.get(_base(st)).needs_calibration for st in strategies)
    cal = None
    if needs_cal:
        try:
            cal = calibrate(ev.model, ev.calib_wins, on_progress=on_prog)
        except RuntimeError as e:
            raise MeasureError(f"calibration failed: {_first_line(e)}") from None
    return cal


def _recalibrator(ev: _Eval):
    """A combination's calibration of its partly pruned model."""
    from ..hf.calibration import calibrate

    def recalibrate(mm):
        try:
            return calibrate(mm, ev.calib_wins)
        except RuntimeError as e:
            raise MeasureError(f"calibration of a partly pruned model failed: {_first_line(e)}") from None
    return recalibrate


def _prune_and_measure(args, ev: _Eval, st, s, parts, cal, recalibrate, svd_cache, on_prog):
    """(pruning result, perplexity, acceptance or None) of a copy of the model pruned by ``st``
    at ``s`` (a combination by its ``parts``); the copy is dropped before returning."""
    import copy

    from ..hf import perplexity as P
    from ..families.prune import apply, apply_combo

    m = copy.deepcopy(ev.model)
    acc = None
    try:
        if parts:
            res = apply_combo(m, _base(st), parts, cal, recalibrate=recalibrate,
                              align=args.align, granularity=args.granularity, block=ev.block)
        else:
            res = apply(m, st, s, cal, align=args.align, granularity=args.granularity,
                        block=ev.block, svd_cache=svd_cache)
        r = _ppl(P, m, ev.eval_ids, ev.seq_len, args, on_prog, f"{st} {s:g}")
        if getattr(args, "acceptance", False):
            acc = _acceptance(args, ev, m, f"{st} {s:g}")
    finally:
        del m
    return res, r, acc


def _acceptance(args, ev: _Eval, draft, what: str):
    """The pruned model's acceptance rates as a draft of the dense one, over the same text."""
    import torch

    from ..hf.acceptance import measure

    try:
        return measure(ev.model, draft, ev.eval_ids, seq_len=ev.seq_len, stride=args.stride,
                       temperature=args.temperature)
    except torch.OutOfMemoryError:
        raise MeasureError(f"{what}: out of memory measuring acceptance (lower --seq-len)") from None


def _print_results(out, spec, tpath, got: _Measured, unsupported) -> None:
    """The table of measured points (dense first, the unsupported families last)."""
    from rich.table import Table

    ppl_dense = got.ppl_dense
    table = Table(title=f"Measured quality: {spec.name}, perplexity on {tpath.name} "
                        f"({got.dense.n_tokens} tokens; dense ppl {ppl_dense:.3f})")
    accs = any(v is not None for v in got.acceptance.values())
    cols = [("strategy", {"no_wrap": True}), ("asked", {"justify": "right"}),
            ("achieved", {"justify": "right"}), ("ppl", {"justify": "right"}),
            ("Δ ppl", {"justify": "right"})]
    if accs:  # as a speculative draft of the dense model
        cols += [("α greedy", {"justify": "right"}), ("α sampling", {"justify": "right"})]
    for col, kw in cols + [("how", {"overflow": "fold", "ratio": 1})]:
        table.add_column(col, **kw)
    table.add_row("dense", "0%", "0%", f"{ppl_dense:.3f}", "0.0%", *(("", "") if accs else ()),
                  "baseline")
    oracles = {row["strategy"] for row in got.rows if row.get("oracle")}
    for st, s, a, ppl, note in got.results:
        inc = (ppl - ppl_dense) / ppl_dense
        mark = "ᵒ" if st in oracles else ""
        acc = got.acceptance.get((st, s))
        extra = ()
        if accs:
            extra = (f"{acc.greedy:.3f}±{acc.greedy_se:.3f}", f"{acc.sampling:.3f}±{acc.sampling_se:.3f}"
                     ) if acc is not None else ("", "")
        table.add_row(st, f"{s:.1%}", f"{a:.1%}", f"{ppl:.3f}", f"{inc:+.1%}{mark}", *extra, note)
    for st in unsupported:
        table.add_row(st, "", "", "", "", *(("", "") if accs else ()), "unsupported (see below)")
    out.print(table)
    if accs:
        t = next(v.temperature for v in got.acceptance.values() if v is not None)
        out.print(f"α: each pruned model as a speculative draft of the dense one, over the same "
                  f"positions (teacher-forced on your text): greedy = argmax agreement, sampling = "
                  f"Σ min(p, q) at temperature {t:g}; ± one standard error (positions are "
                  "correlated: a lower bound); random weights make them meaningless")
    out.print("Δ ppl = (ppl − dense ppl) / dense ppl (metric ppl_increase; not an accuracy drop)"
              + ("; ᵒ measured on an oracle (every update computed, then skipped): an upper "
                 "bound on quality, used by --quality measured only where nothing else is "
                 "measured at that point" if oracles else ""))


def _print_notes(err, strategies, sparsities, unsupported) -> None:
    """Why families were not measured, fixed sparsities, and quality oracles."""
    from .. import families

    for st in unsupported:
        err.print(f"unsupported: {families.get(_base(st)).quality_unsupported_reason}", markup=False)
    for st in strategies:
        if families.SEP in st:
            continue
        fixed = families.get(st).fixed_sparsity
        if fixed is not None and fixed not in sparsities:
            err.print(f"note: {st} is always {fixed:.0%} sparse; measured at {fixed:g}")
    oracles = [st for st in strategies if families.get(_base(st)).quality_oracle]
    if oracles:
        many = len(oracles) > 1
        err.print(f"note: {' and '.join(oracles)} {'are quality oracles' if many else 'is a quality oracle'} "
                  f"(every update / score still computed): {'they bound' if many else 'it bounds'} "
                  "a learned router's quality, not its speed")


def _write_json(args, spec, mdir, tpath, text_sha, ev: _Eval, got: _Measured, unsupported) -> None:
    """The measured points as a pis-tui/measured-quality/1 document (--json); a row's
    ``oracle``: measured on a quality oracle, an upper bound on quality."""
    from .. import families
    from ..quality.measured import ORACLE_RULE

    notes = {(st, s): note for st, s, _, _, note in got.results}
    doc = {
        "schema": "pis-tui/measured-quality/1",
        "model": spec.name, "model_dir": str(mdir.resolve()),
        "quality_metric": "ppl_increase", "quality_source": "measured",
        "text": {"path": str(tpath), "sha256": text_sha, "calib_tokens": int(ev.n_calib),
                 "n_tokens": int(got.dense.n_tokens)},
        "settings": ev.settings,
        "ppl_dense": got.ppl_dense,
        "results": [dict(r, quality_metric="ppl_increase", quality_source="measured",
                         note=notes.get((r["strategy"], r["sparsity"]), "")) for r in got.rows],
        "oracle_rule": ORACLE_RULE,
        "unsupported": [{"strategy": st, "reason": families.get(_base(st)).quality_unsupported_reason}
                        for st in unsupported],
        "provenance": _provenance(),
    }
    dump_json(args.json_out, doc)


def _applicable(spec, strategies: list, asked: bool) -> list:
    """The strategies whose families can prune ``spec`` (the expert-level ones need a mixture
    of experts): the default list leaves the others out, one asked by name is refused (one
    line)."""
    from .. import families

    out = []
    for st in strategies:
        why = families.get(_base(st)).applies(spec)
        if why and asked:
            raise UserError(f"{st}: {why}")
        if not why:
            out.append(st)
    return out


def _base(name: str) -> str:
    """A family's name, or a combination's (a token's part sparsities dropped)."""
    return "+".join(p.split("@", 1)[0] for p in name.split("+"))


def _ppl(P, model, ids, seq_len, args, on_prog, what):
    import torch

    try:
        return P.perplexity(model, ids, seq_len=seq_len, stride=args.stride, batch_size=args.batch_size,
                            on_progress=on_prog)
    except torch.OutOfMemoryError:
        raise MeasureError(f"{what}: out of memory (lower --seq-len or --batch-size)") from None


def _provenance() -> dict:
    import platform

    import torch
    import transformers

    from .. import __version__

    return {"tool": f"pis-tui {__version__}", "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

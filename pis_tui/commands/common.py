"""Arguments and output helpers shared by the subcommands (parsing only: no engine work)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import UserError
from ..families import MAX_SPARSITY
from ..present.output_paths import check_writable

DEFAULT_ALIGN = 128


def parse_fraction(text: str, what: str, lo: float = 0.0, hi: float = 1.0) -> float:
    """'0.10' or '10%' → 0.10, checked against [lo, hi]."""
    s = str(text).strip()
    try:
        v = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        raise UserError(f"{what} {text!r} is not a number (use a fraction like 0.10 or 10%)") from None
    if not (lo <= v <= hi) or v != v:
        hint = f" (a fraction: for {v:g} percent give {v / 100:g} or {v:g}%)" if 1 < v <= 100 * hi else ""
        raise UserError(f"{what} {text} is outside [{lo:g}, {hi:g}]{hint}")
    return v


def parse_sparsities(text: str, flag: str = "--sparsities") -> tuple[float, ...]:
    """'0.25,0.5' → (0.25, 0.5); an empty list is bad input, never the defaults."""
    vals = tuple(parse_fraction(t, "sparsity", 0.0, MAX_SPARSITY) for t in str(text).split(",")
                 if t.strip())
    if not vals:
        raise UserError(f"{flag} {text!r} gives no sparsity: list fractions like 0.25,0.5")
    return tuple(sorted(set(vals)))


def sweep_sparsities(text: str, flag: str = "--sparsities") -> tuple[float, ...]:
    """A sweep's sparsities: at least one above 0 (0 is the dense model, always included)."""
    vals = parse_sparsities(text, flag)
    if not any(v > 0 for v in vals):
        raise UserError(f"{flag} {text!r}: a sparsity of 0 is the dense model, which every sweep "
                        "includes; give at least one above 0, e.g. 0.25")
    return vals


#: list keywords of --strategies: every pruned family, every combination
STRATEGY_KEYWORDS = ("families", "combos")


def parse_families(text: "str | None", flag: str = "--strategies",
                   otherwise: str = "leave --strategies out for all of them",
                   combos: bool = True) -> "tuple[str, ...] | None":
    """'static_depth,low_rank,static_depth+static_width' → the families and combinations named
    (in the order given, no repeats; ``families`` and ``combos`` stand for all of them); None
    when the flag is not given (the caller's default).  A list naming no pruning family
    (``","``, ``""``, only ``dense``) is bad input: it would sweep dense alone.  A name with
    ``+`` must be a registered combination (``combos=False``: refused, for commands of
    families only)."""
    from .. import families

    if text is None:
        return None
    out: list[str] = []
    for t in (t.strip() for t in str(text).split(",")):
        if not t:
            continue
        if t in STRATEGY_KEYWORDS:
            if t == "combos" and not combos:
                raise UserError(f"{flag}: combinations are not offered here")
            out += families.pruned() if t == "families" else families.combo_names()
            continue
        if "@" in t:
            raise UserError(f"{flag} {t!r}: a combination's part sparsities (@) name one point; "
                            f"a list takes combinations by name ({families.combo_names()[0]}) and "
                            "runs each part on --combo-sparsities")
        fam = families.get(t)  # UserError naming the families (or the combinations)
        if fam.is_combo and not combos:
            raise UserError(f"{flag} {t!r}: combinations are not offered here; give families")
        out.append(t)
    names = tuple(dict.fromkeys(out))
    if not any(not families.get(n).is_baseline for n in names):
        raise UserError(f"{flag} {text!r} names no pruning family (dense, the baseline, is "
                        f"always included): give one or more of {', '.join(families.pruned())}, "
                        f"or {otherwise}")
    return names


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    out = []
    for t in str(text).split(","):
        t = t.strip()
        if not t:
            continue
        try:
            v = int(t)
        except ValueError:
            raise UserError(f"{what} {t!r} is not an integer") from None
        if v <= 0:
            raise UserError(f"{what} must be positive, got {v}")
        out.append(v)
    if not out:
        raise UserError(f"no {what} given")
    return tuple(out)


def positive_int(what: str):
    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{what} must be positive, got {v}")
        return v
    return conv


def tp_degree(text: str) -> int:
    """``--tp``: one of the degrees offered (tensor parallelism over the GPUs of one node)."""
    from ..model.tensor_parallel import DEGREES

    try:
        v = int(text)
    except ValueError:
        v = None
    if v not in DEGREES:
        raise argparse.ArgumentTypeError(
            f"--tp must be one of {', '.join(map(str, DEGREES))} (GPUs of one node; 1: none), "
            f"got {text!r}")
    return v


TP_HELP = ("tensor parallelism over N GPUs of one node (1, 2, 4, 8): one rank's GEMM shards, "
           "two all-reduces a layer, its heads and memory (default 1: one GPU)")


def add_tp(p) -> None:
    p.add_argument("--tp", type=tp_degree, default=1, metavar="N", help=TP_HELP)
    p.add_argument("--routing", default="balanced", metavar="R",
                   help="an MoE model's routing: balanced (default), powerlaw:<alpha> (expert i's "
                        "share ∝ (i+1)^-alpha) or a histogram .json of tokens per expert per layer")


def add_model_gpu(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    p.add_argument("--model", "-m", required=model_required, default=None if model_required else "llama-3.1-8b",
                   help="preset name, config.json path or directory, or a model id in the local HF cache")
    p.add_argument("--gpu", "-g", default=None,
                   help="GPU profile or 'local' (default: the local CUDA GPU if any, else h200-sxm)")


def add_scenario(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scenario")
    g.add_argument("--prefill-batch", type=positive_int("prefill batch"), default=1)
    g.add_argument("--prompt-len", type=positive_int("prompt length"), default=1024)
    g.add_argument("--decode-batch", type=positive_int("decode batch"), default=16)
    g.add_argument("--context-len", type=positive_int("context length"), default=1024)
    g.add_argument("--dtype", default=None, help="the activations' dtype: bf16 (GPU default), fp16, fp32 (CPU default)")
    add_precision(g)
    add_engine(g)
    add_tp(g)


PRECISION_HELP = ("the precision the model is served in: bf16/fp16/fp32 (unquantized: the dtype), "
                  "fp8 (W8A8, per-channel weights, per-token activations), fp8-tensor, int4 "
                  "(weight-only, group 128), int4-g32/64/256, mxfp4 (weight-only, estimated)")


def add_precision(p) -> None:
    p.add_argument("--precision", "-q", default=None, metavar="P", help=PRECISION_HELP)


def precision_from_args(args: argparse.Namespace, device) -> tuple[str, str]:
    """(activation dtype, quantized precision or "") from ``--dtype`` and ``--precision``.
    ``--precision bf16`` is ``--dtype bf16``; ``--dtype fp8`` / ``int8`` (the old spelling) is
    read as ``--precision fp8`` with a line saying so; a quantized precision's activations
    are the device's default dtype unless ``--dtype`` says otherwise."""
    from ..decide.sweep import default_dtype
    from ..model.precision import PLAIN, served_dtypes

    dtype = getattr(args, "dtype", None)
    asked = getattr(args, "precision", None)
    if dtype in ("fp8", "int8"):
        if asked:
            raise UserError(f"--dtype {dtype} and --precision {asked}: give the activations' dtype "
                            "(bf16, fp16, fp32) with --dtype and the served precision with --precision")
        print(f"pis-tui: --dtype {dtype} is read as --precision fp8 (W8A8: fp8 weights and "
              "activations, the output in bf16)", file=sys.stderr)
        asked, dtype = "fp8", None
    if dtype and dtype not in PLAIN:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(PLAIN)} (a quantized "
                        "precision goes in --precision)")
    return served_dtypes(dtype, asked, default_dtype(device))


def add_engine(p) -> None:
    from ..model.scenario import ENGINES

    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="how the serving stack launches each op's kernels: eager (transformers' "
                        "modules, as validate builds them; default) or fused (vLLM/SGLang-style "
                        "fused norms, rotary, SiLU·mul, merged q/k/v and gate/up)")


def add_strategy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--granularity", choices=("layer", "sublayer"), default="layer",
                   help="static_depth: drop whole layers or attention/MLP blocks separately")
    p.add_argument("--align", type=positive_int("alignment"), default=None,
                   help=f"static_width / static_width_hidden / expert_slimming: round kept channels to this "
                        f"multiple (default {DEFAULT_ALIGN}); larger than a width it rounds is an error")


def align_of(args: argparse.Namespace) -> int:
    """The channel alignment asked (``--align``), else the default."""
    return getattr(args, "align", None) or DEFAULT_ALIGN


def add_cache(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", default=None,
                   help="DuckDB cache file (default: $PIS_TUI_CACHE or the user cache dir)")


def add_outputs(p: argparse.ArgumentParser, csv: bool = True) -> None:
    p.add_argument("--json", dest="json_out", metavar="FILE|-", default=None,
                   help="write the pis-tui/1 JSON to FILE (or '-' for stdout)")
    if csv:
        p.add_argument("--csv", dest="csv_out", metavar="FILE", default=None, help="write the points as CSV")


def resolve_gpu(name: str | None) -> str:
    from ..device.choose import default_gpu
    from ..device.gpus import gpu_names

    if name is not None and not name.strip():  # `--gpu ''`: given, and empty
        raise UserError(f"--gpu is empty: give local or one of {', '.join(gpu_names())} "
                        "(or leave --gpu out for the default)")
    if name:
        return name
    d = default_gpu()
    print(f"pis-tui: --gpu not given, using {d}", file=sys.stderr)
    return d


def write_text(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        if not text.endswith("\n"):
            sys.stdout.write("\n")
        return
    p = check_writable(path)
    try:
        p.write_text(text, encoding="utf-8")
    except OSError as e:
        raise UserError(f"{p}: cannot write ({e.strerror})") from None


def dump_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False))


def console():
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:  # rich would exit 1; the CLI exits as the shell says
            raise BrokenPipeError

    # piped output (files, tests, CI logs) is not squeezed into 80 columns
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    return _Console(no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False, width=width)

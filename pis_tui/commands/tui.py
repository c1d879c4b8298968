"""`pis-tui tui` (and `pis-tui` alone): the Textual explorer."""

from __future__ import annotations

from ..tui.backend import DTYPES, PROTOCOLS
from .common import add_engine, positive_int, tp_degree


def register(sub) -> None:
    p = sub.add_parser("tui", help="open the explorer (the default when no command is given)")
    p.add_argument("--model", "-m", default=None, help="start with this model (else the last one used)")
    p.add_argument("--gpu", "-g", default=None, help="start with this GPU profile or 'local'")
    p.add_argument("--budget", "-b", default=None, help="start with this quality budget (0.10 or 10%%)")
    g = p.add_argument_group("scenario (each replaces the last session's value)")
    for flag, what in (("--prefill-batch", "prefill batch"), ("--prompt-len", "prompt length"),
                       ("--decode-batch", "decode batch"), ("--context-len", "context length")):
        g.add_argument(flag, type=positive_int(what), default=None)
    g.add_argument("--dtype", choices=DTYPES, default=None,
                   help="auto: bf16 on a GPU, fp32 on a CPU")
    add_engine(g)
    g.add_argument("--tp", type=tp_degree, default=None, metavar="N",
                   help="tensor parallelism over N GPUs of one node (1, 2, 4, 8)")
    p.add_argument("--protocol", choices=PROTOCOLS, default=None,
                   help="quality priors: LoRA-recovered (the study) or training-free")
    p.add_argument("--quality-method", default=None, metavar="mean|best|NAME",
                   help="whose quality curve: the family mean, the best method for the model, or "
                        "a method by name (replaces the last session's)")
    p.add_argument("--cache", default=None,
                   help="DuckDB cache file (default: $PIS_TUI_CACHE or the user cache dir)")
    p.add_argument("--no-restore", action="store_true", help="ignore the choices saved last time")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from ..errors import UserError
    from .common import parse_fraction

    overrides = {}
    if args.model:
        from ..tui.backend import resolve_model

        resolve_model(args.model)  # a clear one-line error before the screen opens
        overrides["model"] = args.model
    if args.gpu is not None:
        from ..device.choose import load_gpu
        from .common import resolve_gpu

        load_gpu(resolve_gpu(args.gpu))  # `--gpu ''` is refused, not the default
        overrides["gpu"] = args.gpu
    if args.budget is not None:
        overrides["budget"] = parse_fraction(args.budget, "budget", 0.0, 0.5)
    for name in ("prefill_batch", "prompt_len", "decode_batch", "context_len", "dtype", "engine",
                 "protocol", "tp"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.quality_method is not None:
        from ..quality.model import build_quality_model

        # a clear one-line error for an unknown method, against the protocol given (else
        # either: the restored session's protocol is not known yet)
        protocols = (args.protocol,) if args.protocol else PROTOCOLS
        errors = []
        for proto in protocols:
            try:
                build_quality_model(protocol=proto, method=args.quality_method)
                break
            except UserError as e:
                errors.append(e)
        else:
            raise errors[0]
        overrides["quality_method"] = args.quality_method.strip()
    if not sys.stdout.isatty() or not sys.stdin.isatty():
        raise UserError("the explorer needs a terminal; for scripts use 'pis-tui recommend' "
                        "or 'pis-tui sweep --json -'")
    from ..tui.app import PisApp
    from ..tui.backend import Backend

    app = PisApp(Backend(cache_path=args.cache), overrides=overrides, restore=not args.no_restore)
    app.run()
    return int(app.return_code or 0)

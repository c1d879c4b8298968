"""Entry point: ``pis-tui`` alone opens the explorer; subcommands run headless.

Each subcommand lives in its own module under ``pis_tui.commands`` with
``register(subparsers)`` and ``run(args) -> int``; they are discovered here, so
adding a command never touches this file.  Heavy imports (torch, transformers,
textual) happen inside the commands that need them, never at start-up.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__
from .errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_PIPE, PisError

#: the order subcommands are listed in ``--help``; others follow alphabetically
ORDER = ("models", "gpus", "ops", "sweep", "recommend", "frontier", "profile", "calibrate",
         "validate", "quality", "cache", "tui")


def _command_modules() -> list:
    from . import commands

    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")
             and m.name != "common"]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return [importlib.import_module(f"{commands.__name__}.{n}") for n in names]


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line too (argparse would print the usage block first); its
    subcommands' parsers are of this class as well."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pis-tui",
        description="How much faster do prefill and decode really get when you prune this LLM "
                    "this way, on this GPU, and what does it cost in quality? Run without a "
                    "subcommand to open the explorer.",
    )
    p.add_argument("--version", action="version", version=f"pis-tui {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["tui", *argv]  # `pis-tui --model X` opens the explorer with X, like `pis-tui tui --model X`
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    empty = [k for k, v in vars(args).items() if k.endswith(("out", "path")) and v == ""]
    if empty:  # `--json ''` would silently write nothing
        what = "PATH" if empty[0] == "path" else "--" + empty[0].removesuffix("_out").replace("_", "-")
        print(f"pis-tui: error: an empty path for {what}: give a file name", file=sys.stderr)
        return 2
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return rc
    except PisError as e:
        print(f"pis-tui: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("pis-tui: interrupted; everything measured so far is kept in the cache",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _pipe_closed()
    except Exception as e:  # a bug, not a user mistake: say so in one line, no traceback
        import os

        if os.environ.get("PIS_TUI_DEBUG"):
            raise
        print(f"pis-tui: internal error: {type(e).__name__}: {e} "
              "(set PIS_TUI_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def _pipe_closed() -> int:
    """The reader of stdout went away (``| head``): no bug and nothing to say.  What is still
    buffered goes to /dev/null (else the interpreter's final flush fails again and exits 1)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor
        pass
    return EXIT_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

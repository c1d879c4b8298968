"""Who may import whom: the core never imports textual or the CLI layer, the explorer imports
only the core (and textual, plotext), never pis_tui.commands."""

import ast

from helpers import ROOT

PKG = ROOT / "pis_tui"


def _imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:
                    for a in node.names:
                        yield f"{mod}.{a.name}"
                    continue
                yield mod
            else:
                yield node.module


def test_the_explorer_imports_only_the_core():
    for f in (PKG / "tui").glob("*.py"):
        bad = [m for m in _imports(f) if m.startswith(("pis_tui.commands", "pis_tui.cli"))]
        assert not bad, (f.name, bad)


def test_the_core_never_imports_textual_plotext_or_the_cli():
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG).parts
        if rel[0] in ("tui", "commands") or rel in (("cli.py",), ("__main__.py",)):
            continue
        bad = [m for m in _imports(f) if m.split(".")[0] in ("textual", "plotext", "textual_plotext")
               or m.startswith(("pis_tui.commands", "pis_tui.cli", "pis_tui.tui"))]
        assert not bad, (str(f.relative_to(ROOT)), bad)

"""The layering contract: who may import whom.

The layers are written once, in pyproject.toml's ``[tool.importlinter]`` (top to bottom: the
entry points, the commands, the explorer, the measuring side, the estimating side, the data
below them); import-linter checks them there (``lint-imports``), and this file checks them
again without it, function-body imports included:

* a lower layer never imports an upper one, and no module imports itself back through others
  (no import circle, function-body imports counted);
* the core never imports textual, plotext or the CLI layer; the explorer never imports the
  commands;
* the estimating paths (sweep, recommend, frontier, plan, ops, the explorer until ``m``) load
  no torch or transformers when they run (a family may call down into the torch kit inside a
  hook, so this is checked by running them, not by reading them).
"""

import ast
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from helpers import ROOT

PKG = ROOT / "pis_tui"


def _contract() -> list[list[str]]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = cfg["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    return [[p.strip() for p in row.replace(":", "|").split("|")] for row in layers]


def _modules() -> dict[str, object]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _imports(name: str, path) -> set[str]:
    """Every pis_tui module ``name`` imports, anywhere in the file (function bodies too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()

    def add(mod: str) -> None:
        while mod and mod not in MODULES and "." in mod:
            mod = mod.rsplit(".", 1)[0]
        if mod in MODULES and mod != name and mod != "pis_tui":
            out.add(mod)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                full = f"{mod}.{a.name}"
                add(full if full in MODULES else mod)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _layer_of(module: str, layers) -> int | None:
    rel = module[len("pis_tui."):] if module.startswith("pis_tui.") else ""
    top = rel.split(".")[0]
    for i, row in enumerate(layers):
        if top in row:
            return i
    return None


def test_every_module_has_a_layer():
    layers = _contract()
    homeless = [m for m in MODULES if m != "pis_tui" and _layer_of(m, layers) is None]
    assert not homeless, f"modules on no layer of pyproject's contract: {homeless}"


def test_no_lower_layer_imports_an_upper_one():
    layers = _contract()
    back = []
    for mod, targets in GRAPH.items():
        if mod == "pis_tui":
            continue
        mine = _layer_of(mod, layers)
        for t in targets:
            theirs = _layer_of(t, layers)
            if theirs is not None and theirs < mine:
                back.append(f"{mod} -> {t}")
            elif theirs == mine and mod.split(".")[1] != t.split(".")[1]:
                back.append(f"{mod} -> {t} (siblings of one layer are independent)")
    assert not back, "imports that run back up:\n" + "\n".join(sorted(back))


def test_no_import_circle():
    """Tarjan's strongly connected components over every import, function bodies included."""
    index, low, stack, on, circles = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_explorer_imports_only_the_core():
    for mod, targets in GRAPH.items():
        if mod.startswith("pis_tui.tui"):
            bad = [t for t in targets if t.startswith(("pis_tui.commands", "pis_tui.cli"))]
            assert not bad, (mod, bad)


def _external(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_the_core_never_imports_textual_plotext_or_the_cli():
    for mod, path in MODULES.items():
        if mod.startswith(("pis_tui.tui", "pis_tui.commands")) or mod in ("pis_tui.cli", "pis_tui.__main__"):
            continue
        bad = _external(path) & {"textual", "plotext", "textual_plotext"}
        bad |= {t for t in GRAPH[mod] if t.startswith(("pis_tui.commands", "pis_tui.cli", "pis_tui.tui"))}
        assert not bad, (mod, bad)


def test_import_linter_keeps_the_contract():
    """The same contract through import-linter (installed with the test extras)."""
    exe = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")
    if not os.path.exists(exe):
        pytest.skip("import-linter is not installed")
    p = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                       capture_output=True, text=True, cwd=str(ROOT), timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]


def _loads_nothing_heavy(probe: str, tmp_path, timeout: float) -> None:
    """Run ``probe`` (which prints ``IMPORTED [...]``) in a fresh interpreter, its own cache."""
    env = {**os.environ, "PIS_TUI_NO_CUDA": "1", "PIS_TUI_CACHE": str(tmp_path / "c.duckdb")}
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "IMPORTED []" in p.stderr


#: the estimating paths, each run as a user runs it; none may load torch or transformers
ESTIMATING = {
    "sweep": ["sweep", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--json", "-"],
    "recommend": ["recommend", "--model", "qwen2.5-0.5b", "--gpu", "h100-sxm", "--budget", "10%",
                  "--json", "-"],
    "frontier": ["frontier", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--json", "-"],
    "plan": ["plan", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--workload", "chat",
             "--json", "-"],
    "ops": ["ops", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--strategy", "static_width",
            "--sparsity", "0.25", "--tp", "2"],
}


@pytest.mark.parametrize("name", sorted(ESTIMATING))
def test_the_estimating_paths_load_no_torch_or_transformers(name, tmp_path):
    probe = ("import sys, io, contextlib\nfrom pis_tui.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             f"    rc = main({ESTIMATING[name]!r})\n"
             "bad = [m for m in ('torch', 'transformers', 'textual', 'plotext') if m in sys.modules]\n"
             "print('IMPORTED', bad, file=sys.stderr)\nsys.exit(rc or (3 if bad else 0))\n")
    _loads_nothing_heavy(probe, tmp_path, timeout=180)


def test_the_explorer_loads_no_torch_or_transformers_until_m(tmp_path):
    """The explorer opens, estimates and recomputes without torch; only measuring (``m``)
    may bring it in."""
    probe = (
        "import asyncio, sys\n"
        "from pis_tui.tui.app import PisApp\n"
        "from pis_tui.tui.backend import Backend, Choices\n"
        f"backend = Backend(cache_path={str(tmp_path / 'c.duckdb')!r})\n"
        "async def go():\n"
        "    app = PisApp(backend, Choices(model='qwen2.5-0.5b', gpu='h200-sxm'), restore=False)\n"
        "    async with app.run_test(size=(120, 36)) as pilot:\n"
        "        for _ in range(200):\n"
        "            await pilot.pause(0.05)\n"
        "            if app.snapshot is not None:\n"
        "                break\n"
        "        assert app.snapshot is not None, 'no estimate'\n"
        "        app.set_choice('model', 'llama-3.2-1b')\n"
        "        for _ in range(200):\n"
        "            await pilot.pause(0.05)\n"
        "            if app.snapshot.choices.model == 'llama-3.2-1b':\n"
        "                break\n"
        "asyncio.run(go())\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print('IMPORTED', bad, file=sys.stderr)\nsys.exit(3 if bad else 0)\n")
    _loads_nothing_heavy(probe, tmp_path, timeout=240)

"""profiles/ ships inside the wheel and the one loader finds it there and in the source tree."""

import subprocess
import sys
import zipfile

import pytest

from helpers import ROOT


def test_loader_finds_source_profiles():
    from pis_tui.shipped import profiles_dir
    d = profiles_dir()
    assert (d / "gpus" / "h200-sxm.json").is_file() and (d / "models" / "llama-3.1-8b.json").is_file()


@pytest.mark.slow
def test_wheel_contains_profiles_and_loader_finds_them(tmp_path):
    wheel_dir = tmp_path / "wheel"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(wheel_dir), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    whl = next(wheel_dir.glob("pis_tui-*.whl"))
    names = zipfile.ZipFile(whl).namelist()
    for needed in ("pis_tui/profiles/gpus/h200-sxm.json", "pis_tui/profiles/models/qwen2.5-0.5b.json",
                   "pis_tui/profiles/quality/literature.csv", "pis_tui/present/schema/pis-tui-1.schema.json",
                   "pis_tui/families/__init__.py", "pis_tui/families/static_depth.py",
                   "pis_tui/model/layer.py"):
        assert needed in names, needed
    # every module of the source tree ships (a package missing from pyproject's list would
    # still import from an editable install)
    src = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "pis_tui").rglob("*.py"))
    missing = [f for f in src if f not in names]
    assert not missing, missing
    site = tmp_path / "site"
    with zipfile.ZipFile(whl) as z:
        z.extractall(site)
    probe = ("import pis_tui.shipped as p, pis_tui; d = p.profiles_dir(); "
             "assert str(d).startswith(%r), d; "
             "from pis_tui.decide.sweep import sweep; r = sweep('qwen2.5-0.5b', 'h200-sxm', strategies=['static_depth'], sparsities=[0.25]); "
             "print(d, len(r.points))" % str(site))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=str(tmp_path), env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert str(site) in out.stdout

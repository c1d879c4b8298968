"""What a new user tripped over (issues 30 and 31): each case fails on the code before its fix."""

import os
import subprocess
import sys

import pytest

from helpers import run_cli


@pytest.mark.parametrize("command", ["sweep", "recommend", "frontier"])
def test_a_tp_degree_the_model_cannot_split_is_bad_input_before_any_width(command):
    r = run_cli(command, "--model", "qwen2.5-0.5b", "--gpu", "h200-sxm", "--tp", "4")
    assert r.returncode == 2, r.stderr
    assert "4 does not divide its 14 query heads" in r.stderr and "use --tp 1 or 2" in r.stderr
    assert "internal error" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("extra", [[], ["--json", "-"]])
def test_a_closed_pipe_exits_quietly_as_the_shell_says(extra):
    p = subprocess.Popen([sys.executable, "-m", "pis_tui", "sweep", "--model", "llama-3.1-8b",
                          "--gpu", "h200-sxm", *extra], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "PIS_TUI_NO_CUDA": "1"})
    p.stdout.readline()
    p.stdout.close()  # `| head -1`
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "error" not in err, err


def test_a_cache_path_that_cannot_be_created_is_bad_input_not_a_busy_cache(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    r = run_cli("profile", "--model", "qwen2.5-0.5b", "--cache", str(blocker / "sub" / "c.duckdb"))
    assert r.returncode == 2, r.stderr
    assert "cannot create its directory" in r.stderr and "another process" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_plan_names_only_the_target_it_misses():
    r = run_cli("plan", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--ttft-ms", "500",
                "--tpot-ms", "20")
    assert r.returncode == 0, r.stderr
    out = r.stdout[r.stdout.index("✗"):]
    why = out[: out.index("candidates:")].replace("\n", " ")
    assert "lowest TTFT" in why and "TPOT" not in why, why
    assert "relax it" in why, why


@pytest.mark.parametrize("args,needle", [
    (["sweep", "--model", "llama-3.1-8b", "--gpu", ""], "--gpu is empty"),
    (["tui", "--gpu", ""], "--gpu is empty"),
    (["recommend", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--quality-method", "FLAP,FLAP"],
     "names 'FLAP' twice"),
])
def test_inputs_that_slipped_through_are_one_line_exit_2(args, needle):
    r = run_cli(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_config_with_head_dim_0_is_refused_not_re_derived(tmp_path):
    import json

    from pis_tui.model.spec import load_preset_config

    cfg = dict(load_preset_config("qwen2.5-0.5b"), head_dim=0)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = run_cli("sweep", "--model", str(tmp_path), "--gpu", "h200-sxm")
    assert r.returncode == 2 and "head_dim=0 is not a positive integer" in r.stderr, r.stderr

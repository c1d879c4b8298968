"""The headless CLI: outputs, the JSON schema, and one clear line for every bad input."""

import json

import jsonschema
import pytest

from pis_tui.cli import main
from pis_tui.present.export import load_schema

from helpers import ROOT, run_cli


def call(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sweep_json_validates_against_schema(capsys, tmp_path):
    out = tmp_path / "out.json"
    code, _, err = call(capsys, "sweep", "--model", "llama-3.1-8b", "--gpu", "h200-sxm",
                        "--json", str(out), "--csv", str(tmp_path / "out.csv"))
    assert code == 0, err
    data = json.loads(out.read_text())
    jsonschema.validate(data, load_schema())
    assert data["schema"] == "pis-tui/1"
    fams = {r["strategy"] for r in data["results"]}
    assert {"dense", "static_depth", "dynamic_depth", "static_width", "static_width_hidden",
            "semi_structured_24", "unstructured", "low_rank", "dynamic_sparse_attention"} <= fams
    for r in data["results"]:
        assert r["dense_latency_ms"] / r["latency_ms"] == pytest.approx(r["speedup"], rel=1e-4)
    csv_lines = (tmp_path / "out.csv").read_text().splitlines()
    assert csv_lines[0].startswith("strategy,sparsity") and len(csv_lines) == len(data["results"]) + 1


def test_recommend_json_to_stdout(capsys):
    code, out, err = call(capsys, "recommend", "--model", "llama-3.1-8b", "--gpu", "h200-sxm",
                          "--budget", "10%", "--json", "-")
    assert code == 0, err
    data = json.loads(out)
    jsonschema.validate(data, load_schema())
    assert set(data["recommendations"]) == {"prefill", "decode"}
    assert data["recommendations"]["prefill"]["budget"] == pytest.approx(0.10)


def test_ops_table(capsys):
    code, out, _ = call(capsys, "ops", "--model", "llama-3.1-8b", "--gpu", "h200-sxm",
                        "--strategy", "static_width", "--sparsity", "0.25")
    assert code == 0
    assert "query heads: 32 → 24" in out and "gate_proj" in out and "M=1024 N=10752 K=4096" in out


def test_models_and_gpus(capsys):
    code, out, _ = call(capsys, "models")
    assert code == 0 and "llama-3.1-8b" in out and "qwen2.5-0.5b" in out
    code, out, _ = call(capsys, "gpus", "--json")
    names = {d["name"] for d in json.loads(out)["devices"]}
    assert {"local", "h200-sxm", "h100-sxm", "a100-80gb", "l40s", "rtx-4090", "rtx-pro-6000", "b200"} <= names


@pytest.mark.parametrize("args,needle", [
    (["sweep", "--model", "llama-9", "--gpu", "h200-sxm"], "unknown model"),
    (["sweep", "--model", "llama-3.1-8b", "--gpu", "tpu-v9"], "unknown GPU"),
    (["sweep", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--sparsities", "0.95"], "outside [0, 0.9]"),
    (["sweep", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--sparsities", "abc"], "not a number"),
    (["sweep", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--strategies", "magic"], "unknown strategy"),
    (["recommend", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--budget", "1.5"], "outside [0, 1]"),
    (["recommend", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--budget=-3%"], "outside [0, 1]"),
    (["sweep", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--json", "/nonexistent/dir/x.json"], "does not exist"),
    (["sweep", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--dtype", "fp64"], "unknown dtype"),
])
def test_bad_input_one_line_exit_2(capsys, args, needle):
    code, _, err = call(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("pis-tui: error:") and needle in lines[-1]
    assert "Traceback" not in err


@pytest.mark.parametrize("flag", ["--prefill-batch", "--prompt-len", "--decode-batch", "--context-len"])
def test_non_positive_sizes_rejected(capsys, flag):
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", flag, "0"])
    assert e.value.code == 2
    assert "must be positive" in capsys.readouterr().err


def test_bad_configs(capsys, tmp_path):
    (tmp_path / "config.json").write_text("{oops")
    code, _, err = call(capsys, "sweep", "--model", str(tmp_path), "--gpu", "h200-sxm")
    assert code == 2 and "malformed JSON" in err
    moe = tmp_path / "moe.json"
    moe.write_text(json.dumps({"model_type": "mixtral", "architectures": ["MixtralForCausalLM"],
                               "num_local_experts": 8, "hidden_size": 4096}))
    code, _, err = call(capsys, "sweep", "--model", str(moe), "--gpu", "h200-sxm")
    assert code == 2 and "needs at least one expert" in err
    code, _, err = call(capsys, "sweep", "--model", str(tmp_path / "missing.json"), "--gpu", "h200-sxm")
    assert code == 2 and "no such file" in err


def test_headless_never_imports_textual_torch_or_transformers():
    probe = ("import sys; from pis_tui.cli import main; "
             "rc = main(['recommend', '--model', 'llama-3.1-8b', '--gpu', 'h200-sxm', '--json', '-']); "
             "bad = [m for m in ('textual', 'torch', 'transformers', 'plotext') if m in sys.modules]; "
             "print('IMPORTED', bad, file=sys.stderr); sys.exit(rc or (3 if bad else 0))")
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "IMPORTED []" in p.stderr


def test_subprocess_entry_point_and_default_gpu_is_printed():
    p = run_cli("sweep", "--model", "qwen2.5-0.5b", "--strategies", "static_depth",
                "--sparsities", "0.25", "--json", "-", env={"PIS_TUI_NO_CUDA": "1"})
    assert p.returncode == 0, p.stderr
    assert "using h200-sxm" in p.stderr
    assert json.loads(p.stdout)["gpu"]["name"] == "h200-sxm"


def test_top_level_options_open_the_explorer_and_budget_hint():
    # `pis-tui --budget 10` goes to the explorer's parser (no "invalid choice"), whose check
    # explains fractions; nothing opens since the value is refused first
    r = run_cli("--budget", "10")
    assert r.returncode == 2 and "invalid choice" not in r.stderr
    assert "for 10 percent give 0.1 or 10%" in r.stderr
    r = run_cli("--model", "qwen2.5-0.5b", "--prompt-len", "128", "--dtype", "fp32", "--protocol",
                "training-free")  # scenario flags reach the explorer; no terminal here, so it stops
    assert r.returncode == 2 and "needs a terminal" in r.stderr
    r = run_cli("--version")  # stays a top-level option
    assert r.returncode == 0 and r.stdout.startswith("pis-tui ")


def test_recommend_prints_bracketed_caveats_verbatim():
    # "[quality borrowed ...]" in a reason must not be eaten as console markup
    r = run_cli("recommend", "--model", "qwen2.5-0.5b", "--gpu", "h100-sxm", "--budget", "0.1")
    assert r.returncode == 0, r.stderr
    # (intervals overlap: the tighter, lower-loss static depth point wins; its caveat is printed)
    assert "[quality borrowed from Llama-3.1-8B, secondary source]" in r.stdout


def test_output_path_mistakes_are_one_clear_line(tmp_path):
    r = run_cli("sweep", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--json", "")
    assert r.returncode == 2 and "empty path for --json" in r.stderr
    f = tmp_path / "afile"
    f.write_text("x")
    r = run_cli("sweep", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--json", str(f / "x.json"))
    assert r.returncode == 2 and "is a file, not a directory" in r.stderr
    r = run_cli("ops", "--model", "llama-3.1-8b", "--gpu", "h200-sxm", "--sparsity", "0.5")
    assert r.returncode == 2 and "--sparsity needs a pruning --strategy" in r.stderr


def test_usage_mistakes_are_one_line_too():
    for args in (("sweep", "--prompt-len", "0"), ("cache",), ("nonsense",), ("recommend", "--bogus")):
        r = run_cli(*args)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and "--help" in lines[0], (args, r.stderr)


# ---------------------------------------------------------------- no silent fallbacks (issue 21)

Q = ("--model", "qwen2.5-0.5b", "--gpu", "h200-sxm")


def _one_error_line(code, err, needle):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("pis-tui: error:"), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("cmd", ["sweep", "recommend", "frontier"])
@pytest.mark.parametrize("flag,value,needle", [
    ("--strategies", ",", "names no pruning family"),
    ("--strategies", "", "names no pruning family"),
    ("--strategies", "dense", "names no pruning family"),
    ("--sparsities", "", "gives no sparsity"),
    ("--sparsities", ",", "gives no sparsity"),
    ("--sparsities", "0", "a sparsity of 0 is the dense model"),
    ("--align", "100000", "--align 100000 is not smaller than the qwen2.5-0.5b widths"),
])
def test_empty_lists_and_idle_alignments_are_bad_input(capsys, cmd, flag, value, needle):
    code, out, err = call(capsys, cmd, *Q, flag, value)
    _one_error_line(code, err, needle)
    assert out == ""  # nothing was swept


def test_an_alignment_too_large_names_each_width_and_family(capsys):
    code, _, err = call(capsys, "sweep", *Q, "--align", "100000")
    _one_error_line(code, err, "MLP channels 4864 (static_width), hidden size 896 (static_width_hidden)")
    # larger than the hidden size only: an error for the family it idles, named alone
    code, _, err = call(capsys, "sweep", *Q, "--align", "1024")
    _one_error_line(code, err, "hidden size 896 (static_width_hidden); give --align below 896")
    assert "MLP channels" not in err
    # without that family the same alignment is fine: the MLP's 4864 channels are rounded to it
    code, out, err = call(capsys, "sweep", *Q, "--align", "1024", "--strategies", "static_width")
    assert code == 0 and "warning" not in err, err


def test_an_alignment_that_removes_nothing_at_one_sparsity_warns(capsys):
    # 896 × (1 − 12.5%) = 784 → a multiple of 512 is 1024, capped at 896: nothing removed
    code, out, err = call(capsys, "sweep", *Q, "--align", "512", "--strategies",
                          "static_width_hidden", "--sparsities", "0.125,0.5")
    assert code == 0, err
    warn = [ln for ln in err.splitlines() if "warning" in ln]
    assert warn == ["pis-tui: warning: --align 512 removes nothing from static_width_hidden's "
                    "hidden size at 12.5% (784 → 896): rounded to a multiple of 512 the kept "
                    "hidden size is the full 896"]
    # the default alignment removes something at every default sparsity: no warning
    code, _, err = call(capsys, "sweep", *Q, "--strategies", "static_width_hidden,static_width")
    assert code == 0 and "warning" not in err, err


@pytest.mark.parametrize("args,needle", [
    (["ops", *Q, "--strategy", "static_width", "--sparsity", ""], "--sparsity '' is empty"),
    (["ops", *Q, "--strategy", "static_width_hidden", "--align", "4096"],
     "hidden size 896 (static_width_hidden); give --align below 896 (default 128)"),
    (["profile", "--model", "qwen2.5-0.5b", "--strategies", ","], "names no pruning family"),
    (["profile", "--model", "qwen2.5-0.5b", "--sparsities", ""], "gives no sparsity"),
    (["profile", "--model", "qwen2.5-0.5b", "--align", "5000"], "--align 5000 is not smaller"),
    (["validate", "--strategy", ","], "--strategy ',' names no pruning family"),
    (["validate", "--strategy", "static_depth", "--sparsity", ""], "--sparsity '' gives no sparsity"),
    (["validate", "--all", "--sparsity", ""], "--sparsity '' gives no sparsity"),
    (["validate", "--strategy", "static_width", "--sparsity", "0.5", "--align", "9999"],
     "MLP channels 4864 (static_width)"),
])
def test_every_command_refuses_empty_lists_and_idle_alignments(capsys, args, needle):
    code, out, err = call(capsys, *args)
    _one_error_line(code, err, needle)


def test_ops_warns_when_the_alignment_removes_nothing(capsys):
    code, out, err = call(capsys, "ops", *Q, "--strategy", "static_width_hidden", "--sparsity",
                          "0.125", "--align", "512")
    assert code == 0 and "hidden size: 896 → 896 (align 512)" in out
    assert "warning: --align 512 removes nothing from static_width_hidden's hidden size" in err


def test_validate_all_keeps_the_alignment_asked():
    from argparse import Namespace

    from pis_tui.commands.validate import _strategies

    args = Namespace(all_=True, strategy=None, sparsity=None, core_only=True, granularity="sublayer",
                     align=64)
    sts = _strategies(args)
    assert sts and {(s.align, s.granularity) for s in sts} == {(64, "sublayer")}


@pytest.mark.parametrize("args,needle", [
    (["--strategies", ","], "no strategy given"),
    (["--sparsities", ""], "gives no sparsity"),
    (["--sparsities", "0"], "a sparsity of 0 is the dense model"),
    (["--strategies", "static_width", "--align", "100000"], "MLP channels 4864 (static_width)"),
])
def test_quality_refuses_them_before_loading_anything(capsys, tmp_path, args, needle):
    mdir = tmp_path / "model"
    mdir.mkdir()
    (mdir / "config.json").write_text((ROOT / "profiles" / "models" / "qwen2.5-0.5b.json").read_text())
    (tmp_path / "t.txt").write_text("some text " * 50)
    code, _, err = call(capsys, "quality", "--model", str(mdir), "--text", str(tmp_path / "t.txt"), *args)
    _one_error_line(code, err, needle)


def test_sweep_shows_asked_and_achieved_where_they_differ(capsys):
    code, out, err = call(capsys, "sweep", *Q, "--strategies", "static_width,static_depth",
                          "--sparsities", "0.25,0.5")
    assert code == 0, err
    rows = [ln.split() for ln in out.splitlines() if ln.strip().startswith("static_")]
    # qwen2.5-0.5b's 2 KV groups: heads asked 25 % are cut by 50 %; whole layers: 24 × 25 % = 6
    assert ["static_width", "25.0%", "→", "26.9%"] == rows[0][:4]
    assert ["static_width", "50.0%"] == rows[1][:2] and rows[1][2] != "→"
    assert ["static_depth", "25.0%"] == rows[2][:2] and rows[2][2] != "→"
    assert "sparsity: asked → achieved where the family's rounding made them differ" in out
    data = json.loads(call(capsys, "sweep", *Q, "--strategies", "static_width", "--sparsities",
                           "0.25", "--json", "-")[1])
    r = next(r for r in data["results"] if r["strategy"] == "static_width")
    assert (r["sparsity"], round(r["achieved_sparsity"], 3)) == (0.25, 0.269)  # what the table shows


def test_frontier_and_recommend_print_the_legend_of_their_marks(capsys):
    for cmd in ("frontier", "recommend"):
        code, out, err = call(capsys, cmd, *Q)
        assert code == 0, err
        assert "ᵇˢ" in out  # marks in the table...
        assert "ᵇ borrowed from another model, ˢ secondary source" in out  # ...and what they mean
        assert "quality: accuracy_drop (lora protocol)" in out
    assert "◀ recommended" in out


def test_gpus_says_nominal_and_never_measured_where_nothing_is(capsys, tmp_path):
    from helpers import seed_local_timings

    empty = str(tmp_path / "none.duckdb")
    code, out, _ = call(capsys, "gpus", "--cache", empty)
    local = next(ln for ln in out.splitlines() if ln.startswith("│ local "))
    assert code == 0 and "not measured yet" in local and "cache" not in local
    if "local CPU" in local:  # no CUDA here: the CPU's peaks are guesses until a profile
        assert "fp32, nominal" in local and "nominal" in local.split("fp32, nominal")[1]
        assert "measured" not in local.replace("not measured yet", "")
    assert not (tmp_path / "none.duckdb").exists()  # a look creates no cache
    seeded = tmp_path / "seeded.duckdb"
    seed_local_timings(seeded, ok=2, unsupported=1)  # an unsupported record is no timing
    code, out, _ = call(capsys, "gpus", "--cache", str(seeded))
    local = next(ln for ln in out.splitlines() if ln.startswith("│ local "))
    assert "2 op timings cached" in local
    data = json.loads(call(capsys, "gpus", "--cache", str(seeded), "--json")[1])
    assert next(d for d in data["devices"] if d["name"] == "local")["op_timings_cached"] == 2


def test_recommend_measured_labels_an_oracles_quality_everywhere(capsys, tmp_path):
    # pis-tui quality's dynamic depth is an oracle (its stored row notes so): recommend
    # --quality measured shows its figure marked ᵒ, says it is an upper bound, and the JSON
    # flags it (a new key) and states the rule
    from pis_tui.cache import Cache

    cache = tmp_path / "c.duckdb"
    c = Cache.open(str(cache))
    base = dict(model="llama-3.1-8b", text_sha256="ab", n_tokens=100, ppl_dense=10.0)
    c.put_quality_results([
        dict(base, strategy="dynamic_depth", sparsity=0.5, achieved_sparsity=0.5, ppl_pruned=10.5,
             ppl_increase=0.05, note="oracle: smallest-norm sublayer updates zeroed per token"),
        dict(base, strategy="static_depth", sparsity=0.5, achieved_sparsity=0.5, ppl_pruned=22.0,
             ppl_increase=1.2, note="")])
    c.close()
    out = tmp_path / "r.json"
    code, text, err = call(capsys, "recommend", "--model", "llama-3.1-8b", "--gpu", "h200-sxm",
                           "--quality", "measured", "--ppl-budget", "0.5", "--cache", str(cache),
                           "--strategies", "dynamic_depth,static_depth", "--sparsities", "0.5",
                           "--phase", "prefill", "--json", str(out))
    assert code == 0, err
    assert "+5.0% pplᵒ" in text and "upper bound" in text and "measured here on an oracle" in text
    data = json.loads(out.read_text())
    jsonschema.validate(data, load_schema())
    flags = {r["strategy"]: r["quality_flags"]["oracle"] for r in data["results"]}
    assert flags == {"dense": False, "dynamic_depth": True, "static_depth": False}
    assert "only where nothing else is measured" in data["quality"]["oracle_rule"]
    rec = data["recommendations"]["prefill"]
    assert rec["strategy"] == "dynamic_depth" and rec["flags"]["oracle"] is True

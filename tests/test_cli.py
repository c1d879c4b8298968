"""The headless CLI: outputs, the JSON schema, and one clear line for every bad input."""

import json

import jsonschema
import pytest

from pis_tui.cli import main
from pis_tui.export import load_schema

from helpers import run_cli


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
    assert code == 2 and "mixture-of-experts" in err
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
    assert "[quality borrowed from LLaMA-7B, quality extrapolated]" in r.stdout


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

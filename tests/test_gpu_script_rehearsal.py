"""The prepared GPU-server script (tests/gpu/run.sh) rehearsed on this CPU: a tiny model, with
duckdb, textual, plotext, platformdirs and jsonschema hidden from the import path (the GPU
machine has none of them).  Only the timing loops are stubbed (one call per measurement, a
1 MB "last-level cache", one interleaved round), so the rehearsal takes seconds on a
2-core machine: what it checks is the script (steps, limits, results as they come, one
archive and a summary, resuming) and that every command it runs works without those
packages; the measurements themselves are tested elsewhere.  Then `gpu-run import` turns
the archive into a measured table and a validation table."""

import json
import os
import subprocess
import sys
import tarfile

import pytest

from helpers import ROOT

pytest.importorskip("torch")

STEPS = ("env", "gpu-kernels", "calibrate", "validate-prefill", "validate-decode", "gpu-commands")
HIDDEN = ("duckdb", "textual", "plotext", "textual_plotext", "platformdirs", "jsonschema")
TINY = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True}

STUB = '''
import runpy, sys, time
from pis_tui.pricing.measured_table import now_iso
import pis_tui.device.local as hw
import pis_tui.timing as t, pis_tui.timing.measure as m, pis_tui.timing.peaks as pk
import pis_tui.validation.compare as vc, pis_tui.validation.probe as vp, pis_tui.validation.run as vr
import pis_tui.validation.stability as vs

def one_call(fn, copies, repeats, warmup, target_s, max_s):
    fn(0)
    t0 = time.perf_counter()
    fn(1 % copies)
    dt = time.perf_counter() - t0
    return dt * 1e3, dt * 1e3, 0.0, 1, "rehearsal: one call"

def peaks(ctx, dtype):
    return {"peak_tflops": 0.1, "bandwidth_gbs": 10.0, "dtype": dtype, "matmul_n": 0, "copy_mb": 0,
            "threads": ctx.threads, "method": "rehearsal", "measured_at": now_iso()}

def one_round(runs, repeats=5, warmup=1, target_ms=None):
    return vr.measure_interleaved(runs, 1, 0, target_ms=1.0)

m.time_cpu = one_call
t.measure_device_peaks = pk.measure_device_peaks = peaks
hw._llc_mb = lambda: 1.0
vs.measure_interleaved = vp.measure_interleaved = one_round
for name in HIDDEN_NAMES:
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(f"{name} should be hidden in this rehearsal")
assert sys.argv[1] == "-m"
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
'''.replace("HIDDEN_NAMES", repr(HIDDEN))


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu-rehearsal")
    hide = base / "hide"
    for name in HIDDEN:
        (hide / name).mkdir(parents=True)
        (hide / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    (base / "stub.py").write_text(STUB)
    py = base / "python"
    py.write_text(f"#!/bin/sh\nexec {sys.executable} {base / 'stub.py'} \"$@\"\n")
    py.chmod(0o755)
    model = base / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIS_")}
    env.update(PYTHONPATH=str(hide), PYTHON=str(py), OUT=str(base / "out"),
               PIS_GPU_WORK=str(base / "work"), PIS_GPU_MODEL=str(model), PIS_GPU_DTYPE="fp32",
               PIS_GPU_STRATEGIES="static_depth", PIS_GPU_SPARSITIES="0.5",
               PIS_GPU_PROMPT_LEN="32", PIS_GPU_PREFILL_BATCHES="1,2", PIS_GPU_DECODE_BATCHES="2",
               PIS_GPU_CONTEXT_LEN="32", PIS_GPU_REPEATS="1",
               PIS_GPU_CALIBRATE_ARGS="--quick --repeats 1", PIS_GPU_VALIDATE_ARGS="--op-repeats 1",
               PIS_GPU_KERNEL_TESTS="tests/gpu/test_cuda_flex.py tests/gpu/test_cuda_quant.py",
               PIS_GPU_COMMAND_TESTS="tests/gpu/test_cuda_commands.py")

    def run(**over):
        e = dict(env, **over)
        return subprocess.run(["bash", str(ROOT / "tests" / "gpu" / "run.sh")], capture_output=True,
                              text=True, env=e, cwd=str(ROOT), timeout=600)
    first = run()
    return {"base": base, "run": run, "first": first, "env": env}


def _members(archive):
    with tarfile.open(archive) as tar:
        return {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}, \
            {os.path.basename(m.name): tar.extractfile(m).read().decode() for m in tar.getmembers()
             if m.isfile()}


def test_the_script_runs_every_step_without_duckdb_textual_plotext(rehearsal):
    r, base = rehearsal["first"], rehearsal["base"]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = base / "out"
    # what comes back: two files, well under the limits
    assert sorted(os.listdir(out)) == ["pis-gpu-run.tar.gz", "summary.log"]
    assert (out / "pis-gpu-run.tar.gz").stat().st_size < 16 << 20
    summary = (out / "summary.log").read_text()
    for step in STEPS:
        assert f"{step}: ok in" in summary, summary
    assert "validate: 3 rows" in summary and "calibrate:" in summary
    _, files = _members(out / "pis-gpu-run.tar.gz")
    for name in ("env.json", "steps.jsonl", "gpu-kernels.xml", "gpu-commands.xml", "calibrate.json",
                 "validate-prefill.json",
                 "validate-decode.json", "store.json", "summary.log", "calibrate.log"):
        assert name in files, sorted(files)
    env = json.loads(files["env.json"])
    assert env["importable"]["duckdb"] is False and env["importable"]["textual"] is False
    assert env["device"]["kind"] == "cpu"
    cal = json.loads(files["calibrate.json"])
    assert cal["partial"] is False and cal["entries"]
    # the analytical model's figures, measured from the kernels it timed (a profile's block):
    # the floor from the small kernels that passed the rules; on a loaded machine every small
    # kernel can come out unstable, and then no floor is claimed (never one from unstable ones)
    from pis_tui.pricing.efficiency_fit import SMALL_BYTES
    from pis_tui.model.ops import op_from_dict

    small = [m["status"] for m in cal["entries"]
             if op_from_dict({"count": 1.0, **m["op"]}).bytes() < SMALL_BYTES]
    assert small, "calibrate timed no small kernel"
    if "ok" in small:
        assert cal["efficiency"]["kernel_floor_us"]["source"].startswith("measured by pis-tui calibrate")
    else:
        assert set(small) == {"unstable"} and "kernel_floor_us" not in cal["efficiency"], small
    rows = json.loads(files["validate-prefill.json"]) + json.loads(files["validate-decode.json"])
    assert {(x["phase"], x["batch"]) for x in rows} == {("prefill", 1), ("prefill", 2), ("decode", 2)}
    assert all("timing" in x and x["capture_failed"] is False for x in rows)
    # the validate steps reused the calibrate table and kept the store without duckdb
    assert "reusing" in files["validate-prefill.log"] and "in memory" not in files["validate-prefill.log"]
    steps = [json.loads(x) for x in files["steps.jsonl"].splitlines()]
    assert [s["step"] for s in steps] == list(STEPS)
    assert all(s["limit_s"] <= 110 for s in steps)


def test_a_second_run_skips_what_is_done_and_a_step_cut_short_is_resumed(rehearsal):
    base, run = rehearsal["base"], rehearsal["run"]
    again = run()
    assert again.returncode == 0
    assert again.stderr.count("skipped (done earlier)") == len(STEPS), again.stderr
    # calibrate cut short by its limit: recorded as such, the archive still comes back
    (base / "work" / "results" / "calibrate.done").unlink()
    cut = run(PIS_GPU_STEP_S_calibrate="1")
    assert "calibrate: timeout in" in cut.stderr, cut.stderr
    assert not (base / "work" / "results" / "calibrate.done").exists()
    _, files = _members(base / "out" / "pis-gpu-run.tar.gz")
    assert '"step": "calibrate", "status": "timeout"' in files["steps.jsonl"]
    # the next run resumes it from the table it has (nothing measured again)
    resumed = run()
    assert "calibrate: ok in" in resumed.stderr, resumed.stderr
    log = (base / "work" / "results" / "calibrate.log").read_text()
    assert "resuming:" in log and "already in it" in log
    # a fresh work folder resumes from the archive in $OUT
    fresh = run(PIS_GPU_WORK=str(base / "work2"))
    assert fresh.stderr.count("skipped (done earlier)") == len(STEPS) and "resumed from" in fresh.stderr


def test_import_turns_the_archive_into_a_measured_table_and_a_validation_table(rehearsal, tmp_path):
    from pis_tui.pricing.measured_table import read_table

    archive = rehearsal["base"] / "out" / "pis-gpu-run.tar.gz"
    base_cmd = [sys.executable, "-m", "pis_tui", "gpu-run", "import", str(archive), "--gpu", "h200-sxm",
                "--table-out", str(tmp_path / "h200.json"), "--validation-out", str(tmp_path / "val")]
    refused = subprocess.run(base_cmd, capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert refused.returncode == 2 and "not on a NVIDIA H200" in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stderr.count("\n") == 1
    r = subprocess.run(base_cmd + ["--force"], capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    t = read_table(tmp_path / "h200.json")
    assert t.entries and t.method == "cpu-wall" and t.extra["partial"] is False
    md = (tmp_path / "val.md").read_text()
    assert "| strategy | s | achieved |" in md and "static_depth" in md and "Core families" in md
    doc = json.loads((tmp_path / "val.json").read_text())
    assert len(doc["rows"]) == 3 and doc["summary"]["n"] == 3
    assert all(r_.get("flops_speedup") for r_ in doc["rows"])  # completed from the store
    bad = subprocess.run([sys.executable, "-m", "pis_tui", "gpu-run", "import", str(tmp_path / "nope.tgz"),
                          "--gpu", "h200-sxm"], capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    assert bad.returncode == 2 and "no such file" in bad.stderr


def test_import_links_the_gpu_profile_to_its_new_table(rehearsal, tmp_path, monkeypatch, capsys):
    import shutil

    from pis_tui.pricing import measured_table
    from pis_tui import shipped as profiles
    from pis_tui.cli import main

    prof = tmp_path / "profiles"
    shutil.copytree(ROOT / "profiles" / "gpus", prof / "gpus")
    shutil.copytree(ROOT / "profiles" / "models", prof / "models")
    monkeypatch.setattr(profiles, "profiles_dir", lambda: prof)
    profiles.read_json.cache_clear()
    measured_table.load_shipped.cache_clear()
    try:
        archive = rehearsal["base"] / "out" / "pis-gpu-run.tar.gz"
        assert main(["gpu-run", "import", str(archive), "--gpu", "h200-sxm", "--force",
                     "--validation-out", str(tmp_path / "val")]) == 0
        d = json.loads((prof / "gpus" / "h200-sxm.json").read_text())
        assert d["measured_table"] == "h200-sxm.json" and d["sources"]  # nothing else lost
        table, problem = measured_table.load_shipped("h200-sxm.json")
        assert problem is None and table.entries
        from pis_tui.device.choose import load_gpu

        assert load_gpu("h200-sxm").measured_table == "h200-sxm.json"
        assert "measured_table = h200-sxm.json" in capsys.readouterr().out
    finally:
        profiles.read_json.cache_clear()
        measured_table.load_shipped.cache_clear()

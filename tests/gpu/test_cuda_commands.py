"""On a CUDA GPU, the commands end to end in subprocesses, as a GPU server runs them (no
duckdb needed: a JSON store): ``profile`` of a small model (then served from the store),
``validate`` with prefill and decode replayed from CUDA graphs, ``calibrate --quick``, and
CUDA_VISIBLE_DEVICES hiding the GPU from every command alike."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
MODEL = os.environ.get("PIS_GPU_TEST_MODEL", "qwen2.5-0.5b")


def cli(*args, env=None, timeout=240):
    e = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
             PYTHONUNBUFFERED="1")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "pis_tui", *args], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=str(ROOT))


def events(stdout: str) -> list:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_profile_small_model_end_to_end_then_from_the_store(tmp_path):
    store = tmp_path / "store.json"
    # (FlexAttention is test_cuda_flex's: its compiles would double this test's time)
    args = ["profile", "--model", MODEL, "--gpu", "local", "--strategies",
            "static_depth,low_rank,semi_structured_24", "--sparsities", "0.5",
            "--grid", "none", "--prompt-len", "256", "--decode-batch", "4", "--context-len", "256",
            "--progress-jsonl", "--cache", str(store)]
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    ev = events(r.stdout)
    done = ev[-1]
    assert done["event"] == "done" and done["failed"] == 0 and done["measured"] > 10, done
    assert "bf16" in done["calibrated"] and done["calibration"]["peak_tflops"] > 50
    meas = [e for e in ev if e["event"] == "measurement"]
    assert not [e for e in meas if "flex-compile failed" in (e["note"] or "")]
    assert not [e for e in meas if "graph capture failed" in (e["note"] or "")]
    assert any(e["status"] == "ok" and e["op"]["m"] >= 256 for e in meas if e["op"].get("op_type") == "gemm")
    assert done["sources"].get("measured", 0) > 10
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    d2 = events(again.stdout)[-1]
    assert d2["measured"] == 0 and d2["reused"] == done["total"], d2


def test_validate_prefill_and_decode_under_cuda_graphs(tmp_path):
    out = tmp_path / "rows.json"
    r = cli("validate", "--model", MODEL, "--strategy", "static_depth", "--sparsity", "0.5",
            "--prefill-batch", "1", "--prompt-len", "256", "--decode-batch", "1,8",
            "--context-len", "256", "--repeats", "3", "--json", str(out),
            "--cache", str(tmp_path / "store.json"), timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 3
    for x in rows:
        assert x["timing"] == "cuda-graph" and x["capture_failed"] is False, x
        assert x["measured_ms"] > 0 and x["predicted_ms"] > 0
    for x in rows:
        if x["strategy"] == "static_depth":
            # half the layers: a real speedup, and a prediction from graph-timed ops near it
            assert x["measured_speedup"] > 1.25, x
            assert abs(x["error"]) < 0.25, x
    assert "graph" in r.stdout and "FAILED" not in r.stdout


def test_calibrate_quick_writes_a_cuda_graph_table(tmp_path):
    out = tmp_path / "table.json"
    r = cli("calibrate", "--gpu", "local", "--quick", "--models", MODEL, "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    t = json.loads(out.read_text())
    assert t["method"] == "cuda-graph" and t["partial"] is False
    assert t["device"]["kind"] == "gpu" and t["device"]["capability"]
    cal = t["calibration"]["bf16"]
    assert cal["peak_tflops"] > 50 and cal["bandwidth_gbs"] > 500
    ok = [e for e in t["entries"] if e["status"] == "ok"]
    assert len(ok) >= 20 and all(e["ms"] > 0 for e in ok)
    assert sum(e["ms"] <= e["eager_ms"] * 1.05 for e in ok) >= 0.9 * len(ok)
    assert t["conditions_at_start"].get("clocks.sm", 0) > 0


def test_hidden_gpus_mean_the_cpu_for_every_command():
    code = ("from pis_tui import hardware; d = hardware.measuring_device(); "
            "print(d.kind, hardware.local_device().kind)")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120, cwd=str(ROOT))
    assert p.stdout.split() == ["cpu", "cpu"], p.stdout + p.stderr[-1000:]
    r = cli("gpus", "--json", env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0 and json.loads(r.stdout)["local"]["kind"] == "cpu"

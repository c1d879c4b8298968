"""Planning and running a measurement sweep: dedupe, order, M grid, cache reuse, progress,
cancellation and Ctrl-C keeping what was measured; the profile and calibrate commands."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pis_tui import profiling
from pis_tui.cache import Cache
from pis_tui.device.local import local_device
from pis_tui.pricing.measured_table import read_table
from pis_tui.model.spec import spec_from_config
from pis_tui.model.ops import Attention, Elementwise, Gemm
from pis_tui.model.scenario import Scenario

ROOT = Path(__file__).resolve().parents[1]

TINY = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2,
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 256, "tie_word_embeddings": False,
        "hidden_act": "silu"}
SCEN = Scenario(prefill_batch=1, prompt_len=32, decode_batch=2, context_len=32, dtype="fp32")


@pytest.fixture
def spec():
    return spec_from_config(TINY, "tiny")


@pytest.fixture
def config_path(tmp_path):
    p = tmp_path / "tiny.json"
    p.write_text(json.dumps(TINY))
    return str(p)


def test_plan_dedupes_orders_and_adds_a_grid(spec):
    dev = local_device()
    scen = Scenario(prefill_batch=1, prompt_len=256, decode_batch=2, context_len=256, dtype="fp32")
    planned = profiling.worklist_detailed(spec, dev, scen)
    keys = [p.op.key() for p in planned]
    assert len(keys) == len(set(keys))
    ops = [p.op for p in planned]
    assert all(o.count == 1.0 for o in ops)
    # unstructured GEMMs run the dense kernel: measured as dense, never separately
    assert not any(isinstance(o, Gemm) and o.kind == "unstructured" for o in ops)
    assert any(isinstance(o, Gemm) and o.kind == "sparse_24" for o in ops)
    assert any(isinstance(o, Attention) and o.block_density < 1 for o in ops)
    assert {o.kind for o in ops if isinstance(o, Elementwise)} >= {
        "rmsnorm", "rotary", "silu_mul", "residual_add", "embedding", "kv_write", "topk",
        "gather", "scatter", "block_pool"}
    sweep = [p for p in planned if not p.grid]
    grid = [p for p in planned if p.grid]
    assert planned[: len(sweep)] == sweep  # the sweep's ops come before the grid
    shares = [p.share for p in sweep]
    assert shares == sorted(shares, reverse=True)
    # every dense-model GEMM pair gets M points around tile boundaries, within the scenario
    max_m = scen.prompt_len * scen.prefill_batch
    by_pair = {}
    for p in planned:
        if isinstance(p.op, Gemm) and p.op.kind == "dense":
            by_pair.setdefault((p.op.n, p.op.k), set()).add(p.op.m)
    assert by_pair[(128, 64)] >= {1, 2, 4, 8, 16, 32, 64, 127, 128, 129, 255, 256}  # gate/up
    assert all(p.op.m <= max_m for p in grid)
    # the lm_head runs at M = batch: its grid stops at the first point above that
    assert max(by_pair[(256, 64)]) == 2
    # with the pieces a strategy sweep needs: every op of every strategy is planned
    from pis_tui.families.strategy import Strategy
    from pis_tui.families.phase_ops import build_phase_ops

    for fam, s in (("dense", 0.0), ("low_rank", 0.5), ("static_width", 0.25), ("unstructured", 0.5)):
        for ph in ("prefill", "decode"):
            for o in build_phase_ops(spec, Strategy(fam, s), scen, ph).ops:
                if o.op_type == "overhead":  # the dispatch probe's, not a kernel
                    assert o.key() not in set(keys)
                    continue
                assert profiling.measuring_form(o).key() in set(keys)
    assert len(profiling.worklist(spec, dev, scen, options={"grid": "none"})) == len(sweep)
    assert len(profiling.worklist(spec, dev, scen, options={"grid": "all"})) > len(planned)


def small_ops():
    return [Gemm("a", 8, 64, 32, dtype="fp32"), Gemm("b", 4, 32, 64, dtype="fp32"),
            Elementwise("n", "rmsnorm", 8, 64, dtype="fp32"),
            Elementwise("r", "residual_add", 8, 64, dtype="fp32"),
            Elementwise("s", "silu_mul", 8, 128, dtype="fp32"),
            Attention("at", 1, 4, 2, 8, 8, 16, dtype="fp32"),
            Gemm("sp", 8, 64, 64, dtype="fp32", kind="sparse_24", density=0.5)]


@pytest.fixture(scope="module")
def ctx():
    pytest.importorskip("torch")
    from pis_tui import timing

    return timing.open_device("local")


def test_run_profile_stores_then_reuses(tmp_path, ctx, monkeypatch):
    cache = Cache.open(str(tmp_path / "c.duckdb"))
    events = []
    ops = small_ops()
    rep = profiling.run_profile(ops, ctx, cache, on_progress=lambda *a: events.append(a),
                                repeats=2, calibrate=False)
    assert (rep.measured, rep.reused, rep.failed, rep.cancelled) == (len(ops), 0, 0, False)
    assert [f[1] for f in rep.failures] == ["unsupported"]  # 2:4 on the CPU
    stored = {m.key: m for m in cache.get_measurements(ctx.fingerprint)}
    assert set(stored) == {o.key() for o in ops}
    assert stored[ops[0].key()].ms > 0 and stored[ops[-1].key()].status == "unsupported"
    dones = [e[0] for e in events]
    # done and total never go down; re-measures (unstable ops on a busy machine) add to both
    totals = [e[1] for e in events]
    assert dones == sorted(dones) and totals == sorted(totals)
    assert events[-1][0] == events[-1][1] == len(ops) + rep.remeasured
    assert all(len(e) == 5 and e[3] >= 0 for e in events)
    assert any(e[4] is not None for e in events[1:])  # an ETA once something was timed
    # a chunk's ops finish together after their last round: the count and the ETA still move
    # while its rounds run (the explorer's bar does not sit at 0 for the first chunk)
    assert any(0 < d < len(ops) for d in dones)
    assert any(e[4] is not None and e[0] < len(ops) for e in events)
    # a second run measures nothing and does not even open the device
    from pis_tui import timing

    monkeypatch.setattr(timing, "open_device", lambda *a, **k: pytest.fail("opened the device"))
    rep2 = profiling.run_profile(ops, None, cache, calibrate=False)
    assert (rep2.measured, rep2.reused) == (0, len(ops))


def test_errors_are_retried_but_results_are_not(tmp_path, ctx):
    cache = Cache.open(str(tmp_path / "c.duckdb"))
    bad = Elementwise("r", "rotary", 4, 100, dtype="fp32", extra=64)  # not a multiple: error
    rep = profiling.run_profile([bad], ctx, cache, calibrate=False)
    assert rep.failed == 1 and rep.failures[0][1] == "error"
    rep = profiling.run_profile([bad], ctx, cache, calibrate=False)
    assert rep.reused == 0 and rep.failed == 1


def test_cancel_between_measurements_keeps_what_was_measured(tmp_path, ctx):
    cache = Cache.open(str(tmp_path / "c.duckdb"))
    ops = small_ops()
    stop = threading.Event()
    seen = []

    def on_m(m):
        seen.append(m.key)
        if len(seen) == 3:
            stop.set()
    rep = profiling.run_profile(ops, ctx, cache, cancel=stop, on_measurement=on_m, repeats=2,
                                calibrate=False, flush_s=3600)
    assert rep.cancelled and rep.measured == 3
    assert {m.key for m in cache.get_measurements(ctx.fingerprint)} == set(seen)
    rep = profiling.run_profile(ops, ctx, cache, repeats=2, calibrate=False)
    assert (rep.reused, rep.measured, rep.cancelled) == (3, len(ops) - 3, False)
    # a callable works as the cancel flag too
    rep = profiling.run_profile([Gemm("z", 3, 8, 8, dtype="fp32")], ctx, cache, cancel=lambda: True)
    assert rep.cancelled and rep.measured == 0


def test_ctrl_c_mid_profile_loses_nothing(tmp_path, ctx):
    cache = Cache.open(str(tmp_path / "c.duckdb"))
    n = []

    def on_m(m):
        n.append(m.key)
        if len(n) == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        profiling.run_profile(small_ops(), ctx, cache, on_measurement=on_m, repeats=2,
                              calibrate=False, flush_s=3600)
    assert {m.key for m in cache.get_measurements(ctx.fingerprint)} == set(n)


def test_oom_marks_the_shape_and_goes_on(tmp_path, ctx, monkeypatch):
    import torch

    from pis_tui import timing

    real = timing.measure.build_case

    def build(op, c, check=False, **kw):
        if isinstance(op, Gemm) and op.m == 8 and op.n == 64 and op.k == 32:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 99 GiB")
        return real(op, c, check, **kw)
    monkeypatch.setattr(timing.measure, "build_case", build)
    cache = Cache.open(str(tmp_path / "c.duckdb"))
    rep = profiling.run_profile(small_ops()[:3], ctx, cache, repeats=2, calibrate=False)
    assert rep.failed == 1 and rep.measured == 2
    st = {m.key: m.status for m in cache.get_measurements(ctx.fingerprint)}
    assert st[small_ops()[0].key()] == "oom"
    # an out-of-memory shape is not retried on the next run
    assert profiling.run_profile(small_ops()[:3], ctx, cache, calibrate=False).reused == 3


def test_measure_ops_for_validation(tmp_path, ctx):
    cache = Cache.open(str(tmp_path / "c.duckdb"))
    msgs = []
    ops = [Gemm("a", 8, 64, 32, count=24.0, dtype="fp32"),
           Gemm("u", 8, 64, 32, dtype="fp32", kind="unstructured", density=0.5)]
    got = profiling.measure_ops(ops, cache=cache, dtype="fp32", on_progress=msgs.append, ctx=ctx)
    assert [m.key for m in got] == [Gemm("a", 8, 64, 32, dtype="fp32").key()]
    assert msgs and msgs[0].startswith("measuring op 1/1")
    again = profiling.measure_ops(ops, cache=cache, dtype="fp32", ctx=ctx)
    assert again[0].ms == got[0].ms  # served from the cache


def _env(tmp_path):
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["PIS_TUI_CACHE"] = str(tmp_path / "cli.duckdb")
    return e


def _cli(args, tmp_path, timeout=240, pre=""):
    code = pre + "import sys; from pis_tui.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(tmp_path), cwd=str(ROOT))


SCEN_ARGS = ["--prompt-len", "32", "--decode-batch", "2", "--context-len", "32"]


def test_profile_command_twice_second_from_cache(tmp_path, config_path):
    # device peaks already known (measuring them is timing's test): the command skips them
    Cache.open(str(tmp_path / "cli.duckdb")).put_calibration(local_device().fingerprint, "fp32", 0.1, 10.0)
    args = ["profile", "--model", config_path, "--gpu", "local", *SCEN_ARGS, "--grid", "none",
            "--strategies", "static_depth", "--sparsities", "0.5", "--repeats", "2"]
    r1 = _cli(args, tmp_path)
    assert r1.returncode == 0, r1.stderr
    assert " 0 reused" in r1.stdout and "measured" in r1.stdout
    r2 = _cli(args, tmp_path)
    assert r2.returncode == 0, r2.stderr
    assert "0 measured" in r2.stdout and " 0 reused" not in r2.stdout
    assert "sweep ops by timing source now:" in r2.stdout and "measured" in r2.stdout
    r3 = _cli(["profile", "--model", config_path, "--gpu", "h200-sxm"], tmp_path)
    assert r3.returncode == 2 and "only measure the local device" in r3.stderr
    assert "Traceback" not in r3.stderr


def test_profile_jsonl_and_interrupt(tmp_path, config_path):
    """The TUI's measuring subprocess: JSON lines; SIGINT stops cleanly, keeping the cache."""
    args = ["profile", "--model", config_path, *SCEN_ARGS, "--strategies", "static_width",
            "--repeats", "2", "--progress-jsonl"]
    code = "import sys; from pis_tui.cli import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env(tmp_path), cwd=str(ROOT))
    events = []
    for line in p.stdout:
        ev = json.loads(line)
        events.append(ev)
        if ev["event"] == "measurement" and sum(e["event"] == "measurement" for e in events) == 2:
            p.send_signal(signal.SIGINT)
    rc = p.wait(60)
    kinds = [e["event"] for e in events if e["event"] not in ("warning", "message")]
    plan = next(e for e in events if e["event"] == "plan")
    assert kinds[0] == "plan" and kinds[-1] == "done" and "progress" in kinds
    assert rc == 130 and events[-1]["cancelled"] is True
    done = events[-1]
    n_meas = sum(1 for e in events if e["event"] == "measurement")
    assert n_meas >= 2 and done["measured"] + done["failed"] == n_meas < plan["total"]
    cache = Cache.open(str(tmp_path / "cli.duckdb"))
    keys = {m.key for m in cache.get_measurements(local_device().fingerprint)}
    assert {e["key"] for e in events if e["event"] == "measurement"} <= keys


def test_calibrate_writes_a_table_without_duckdb(tmp_path, config_path):
    out = tmp_path / "table.json"
    # duckdb, textual and rich are not importable: calibrate must not need them
    block = "import sys\nfor m in ('duckdb', 'textual', 'rich', 'plotext', 'platformdirs'): sys.modules[m] = None\n"
    r = _cli(["calibrate", "--gpu", "local", "--out", str(out), "--models", config_path, "--quick",
              "--repeats", "2"], tmp_path, pre=block)
    assert r.returncode == 0, r.stderr
    t = read_table(out)
    dev = local_device()
    assert t.fingerprint == dev.fingerprint and t.method == "cpu-wall" and t.software["torch"]
    assert t.date and t.calibration["fp32"]["peak_tflops"] > 0
    assert t.extra["partial"] is False
    timed = [m for m in t.entries if m.status in ("ok", "unstable")]
    assert len(timed) > 10 and all(m.ms > 0 for m in timed)  # on a busy machine some are unstable
    # the estimator can use it as a shipped table
    from pis_tui.pricing.estimator import Estimator

    est = Estimator(dev, (), [m.to_entry() for m in t.entries], t.calibration)
    ok = t.ok_entries()
    if ok:
        priced = est.price(ok[0].to_op())
        assert priced.source == "shipped" and priced.ms_per_call == ok[0].ms
    shaky = [m for m in timed if m.status == "unstable"]
    if shaky:  # kept, never priced as a measurement
        assert est.price(shaky[0].to_op()).source in ("unstable", "interpolated")
    r = _cli(["calibrate", "--gpu", "h200-sxm", "--out", str(out)], tmp_path)
    assert r.returncode == 2


def test_measured_table_round_trip(tmp_path):
    from pis_tui.pricing.measured_table import (Measurement, TableError, build_table, read_table,
                                                write_table)

    m = Measurement(key="k", op={"op_type": "gemm", "name": "x", "m": 1, "n": 2, "k": 3, "count": 1.0,
                                 "dtype": "bf16", "kind": "dense", "density": 1.0}, ms=0.5,
                    method="cuda-graph", method_version=1)
    t = build_table([m], {"fingerprint": "cuda:X", "kind": "gpu", "driver": "570"},
                    software={"torch": "2.11", "cuda": "13.0", "cusparselt": "0.7"},
                    calibration={"bf16": {"peak_tflops": 900.0, "bandwidth_gbs": 4000.0}})
    write_table(tmp_path / "t.json", t)
    back = read_table(tmp_path / "t.json")
    assert back.entries[0].ms == 0.5 and back.entries[0].fingerprint == "cuda:X"
    assert back.software["cuda"] == "13.0" and back.method == "cuda-graph" and back.dtypes == ["bf16"]
    assert "CUDA graph" in json.loads((tmp_path / "t.json").read_text())["method_doc"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(TableError):
        read_table(tmp_path / "bad.json")


def test_a_busy_cpu_is_reported(tmp_path, ctx, monkeypatch):
    """Another process on a core makes every multithreaded kernel wait: say so."""
    from pis_tui import timing

    probe = timing.contention_probe(ctx)
    assert probe["ratio"] > 0 and isinstance(probe["contended"], bool)
    fake = {"contended": True, "ratio": 200.0, "threads_ms": 15.0, "single_thread_ms": 0.07,
            "threads": 2}
    monkeypatch.setattr(timing, "contention_probe", lambda c: fake)
    monkeypatch.setattr(timing, "open_device", lambda *a, **k: ctx)
    warnings = []
    cache = Cache.open(str(tmp_path / "c.duckdb"))
    rep = profiling.run_profile(small_ops()[:1], None, cache, calibrate=False, on_warning=warnings.append)
    assert rep.contention == fake and len(warnings) == 1 and "15.00 ms on 2 threads" in warnings[0]


def test_remeasures_have_their_own_count_and_eta(tmp_path, monkeypatch, capsys):
    """Issue 31: while unstable ops were re-measured at the end of a run the bar sat at its end
    (274/274) with "ETA 0s" for minutes (their extra rounds counted as done).  A re-measure
    pass has its own count (re-measuring 1/3) and its own ETA, from its own calls' time."""
    import dataclasses
    import time
    import types

    from pis_tui import timing
    from pis_tui.commands.profile import _Jsonl
    from pis_tui.pricing.measured_table import METHOD_VERSIONS, Measurement

    fp = "cpu:fake:2t"
    ctx = types.SimpleNamespace(is_cuda=False, fingerprint=fp, software={"torch": "x"},
                                device_info=lambda: {"fingerprint": fp}, threads=2)
    monkeypatch.setattr(timing, "contention_probe", lambda c: {"contended": False, "ratio": 1.0})
    calls = {}

    def noisy(op, c, repeats=None, **kw):  # n=32: steady; the others' rounds never agree
        time.sleep(0.01)
        calls[op.key()] = calls.get(op.key(), 0) + 1
        ms = 1.0 if op.n == 32 else float(calls[op.key()] % 6 + 1)
        return Measurement(key=op.key(), op=dataclasses.asdict(op), ms=ms, eager_ms=ms, spread=0.0,
                           repeats=3, method="cpu-wall", method_version=METHOD_VERSIONS["cpu-wall"],
                           fingerprint=fp, software={"torch": "x", "cuda": "", "cusparselt": ""})
    monkeypatch.setattr(timing, "measure_op", noisy)
    ops = [Gemm("s", 8, 32, 32, dtype="fp32")] + [Gemm(f"g{n}", 8, n, 64, dtype="fp32")
                                                   for n in (48, 80, 112)]
    legacy, statuses = [], []
    rep = profiling.run_profile(ops, ctx, None, calibrate=False, on_status=statuses.append,
                                on_progress=lambda *a: legacy.append((time.monotonic(), *a)))
    end = time.monotonic()
    assert rep.remeasured == 3 and rep.unstable == 3 and all(len(e) == 6 for e in legacy)
    re = [s.remeasure for s in statuses if s.remeasure is not None]
    assert len(re) == 3 * 6  # the pass: 3 ops, 6 rounds each (their rounds never agree)
    assert {(r.total, r.what) for r in re} == {(3, "unstable ops")}
    dones = [r.done for r in re]
    assert dones == sorted(dones) and dones[0] == 0 and 0 < dones[-1] < 3
    assert {r.current for r in re} == {f"GEMM 8×{n}×64 fp32" for n in (48, 80, 112)}
    # the pass's ETA is its own, never 0 while it runs (the old one read 0 s in the extra
    # rounds); the run's ETA (the legacy callback's too) is the pass's meanwhile
    ev = [e for e in legacy if e[3].startswith("re-measuring ")]
    assert len(ev) == len(re) and ev[0][3].startswith("re-measuring 0/3 unstable ops: ")
    assert all(e[5] is not None and e[5] > 0 for e in ev), [e[5] for e in ev]
    for t, *_, eta in ev[3:]:  # once its first calls are timed: near the time left
        assert eta >= 0.5 * (end - t) - 0.02, (eta, end - t)
    assert [s.eta_s for s in statuses if s.remeasure] == [r.eta_s for r in re]
    # the NDJSON progress event: the keys it had, and the pass in a key of its own
    _Jsonl().status(next(s for s in statuses if s.remeasure and s.remeasure.done == 1))
    out = json.loads(capsys.readouterr().out)
    assert {"event", "done", "total", "current", "elapsed_s", "eta_s"} <= set(out)
    assert out["remeasure"]["done"] == 1 and out["remeasure"]["total"] == 3
    assert out["remeasure"]["what"] == "unstable ops" and out["remeasure"]["eta_s"] > 0
    assert out["current"].startswith("re-measuring 1/3 unstable ops: ")
    _Jsonl().status(statuses[0])
    assert "remeasure" not in json.loads(capsys.readouterr().out)

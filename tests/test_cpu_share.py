"""The CPU other processes take (pis_tui.timing.cpu_share) and what the timing does with it:
rounds it overlapped are contended (profile, validate's pairs), a prediction resting on op
times taken under load is not compared (issue 15: two busy loops on two cores, which the
one-core contention probe cannot see)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pis_tui import profiling
from pis_tui.pricing import uncertainty
from pis_tui.model.ops import Attention, Gemm
from pis_tui.pricing.estimates import PhaseEstimate, PricedOp
from pis_tui.timing import cpu_share
from pis_tui.timing.cpu_share import CpuSnapshot, OthersMeter, others_cores, snapshot
from pis_tui.validation import stability as st

from test_trust import K_BIG, fake_ctx, meas

STAT = """cpu  900 0 100 1000 0 0 0 0 0 0
cpu0 400 0 50 500 0 0 0 0 0 0
cpu1 500 0 50 500 0 0 0 0 0 0
intr 1 2 3
"""


def test_snapshot_counts_the_cores_this_process_may_run_on(tmp_path, monkeypatch):
    f = tmp_path / "stat"
    f.write_text(STAT)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    s = snapshot(str(f))
    assert (s.busy_ticks, s.total_ticks, s.cores) == (1000, 2000, 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1})  # a cpuset container: one core
    s = snapshot(str(f))
    assert (s.busy_ticks, s.total_ticks, s.cores) == (550, 1050, 1)
    assert snapshot(str(tmp_path / "missing")) is None
    (tmp_path / "bad").write_text("cpu x y\n")
    assert snapshot(str(tmp_path / "bad")) is None


def test_others_are_the_busy_ticks_less_our_own_over_the_window():
    hz = os.sysconf("SC_CLK_TCK")
    # 2 cores, 1 s (hz ticks each): 1.5 s of busy CPU of which 0.5 s ours → 1 core's worth
    a = CpuSnapshot(0.0, 0, 0, 10.0, 2)
    b = CpuSnapshot(1.0, int(1.5 * hz), 2 * hz, 10.5, 2)
    assert others_cores(a, b) == pytest.approx(1.0)
    assert others_cores(a, CpuSnapshot(1.0, int(0.4 * hz), 2 * hz, 10.5, 2)) == 0.0  # never < 0
    assert others_cores(a, CpuSnapshot(0.05, 10, 20, 10.0, 2)) is None  # too short to tell
    assert others_cores(None, b) is None and others_cores(a, None) is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux's /proc/stat")
def test_a_busy_loop_on_a_core_reads_as_about_one_core():
    hog = subprocess.Popen([sys.executable, "-c",
                            "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)  # it is running
        with OthersMeter() as m:
            time.sleep(0.8)
    finally:
        hog.kill()
        hog.wait()
    assert m.cores is not None and m.cores > cpu_share.CONTENDED_CORES and m.contended
    assert "other processes used" in m.words()


class FakeMeter:
    """An OthersMeter whose readings are given: one per round, in order."""

    readings: list = []

    def __init__(self, threshold: float = cpu_share.CONTENDED_CORES):
        self.threshold, self.cores = threshold, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cores = FakeMeter.readings.pop(0)

    @property
    def contended(self):
        return self.cores is not None and self.cores > self.threshold


def test_rounds_during_which_others_loaded_every_core_are_contended(monkeypatch):
    from pis_tui import timing
    from pis_tui.profiling import rounds

    # the probe before each round sees nothing (load on every core alike); the meter sees
    # two cores' worth of others in the first two rounds, whose times are 3× slow
    FakeMeter.readings = [2.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    monkeypatch.setattr(rounds, "OthersMeter", FakeMeter)
    times = iter([1.5, 1.5, 0.5, 0.51, 0.5, 0.5])
    monkeypatch.setattr(timing, "measure_op", lambda op, ctx, repeats=None, **kw: meas(op, next(times)))
    got = profiling.measure_rounds([K_BIG], fake_ctx(), 3,
                                   probe=lambda: {"contended": False, "ratio": 1.0})[K_BIG.key()]
    assert got.status == "ok" and got.ms == pytest.approx(0.51)  # the quiet rounds only
    assert got.conditions["contended_rounds"] == 2
    assert got.conditions["others_cores"][:3] == [2.0, 2.0, 0.0]
    # every round under load: no quiet round to trust, stored unstable
    FakeMeter.readings = [2.0] * 6
    times = iter([1.5] * 6)
    bad = profiling.measure_rounds([K_BIG], fake_ctx(), 3,
                                   probe=lambda: {"contended": False, "ratio": 1.0})[K_BIG.key()]
    assert bad.status == "unstable" and bad.conditions["loaded"]


class SteadyRun:
    cuda = False

    def __init__(self, ms):
        self.ms = ms

    def sample(self):
        return self.ms

    def calibrate(self, target_ms):
        pass


def test_validate_rounds_metered_busy_are_contended(monkeypatch):
    FakeMeter.readings = [1.6]
    monkeypatch.setattr(st, "OthersMeter", FakeMeter)
    heard = []
    r = st.measure_speedup(SteadyRun(10.0), SteadyRun(5.0), repeats=3, warmup=0,
                           contention=lambda: False, others=heard.append)
    assert r.contended and heard == [1.6]
    FakeMeter.readings = [0.1]
    r = st.measure_speedup(SteadyRun(10.0), SteadyRun(5.0), repeats=3, warmup=0,
                           contention=lambda: False, others=heard.append)
    assert not r.contended and heard == [1.6]
    # no listener: no meter (the readings are left alone)
    FakeMeter.readings = []
    assert not st.measure_speedup(SteadyRun(10.0), SteadyRun(5.0), repeats=3, warmup=0).contended


def _est(parts):
    """A PhaseEstimate of (op, ms, source, loaded) parts."""
    ops = tuple(PricedOp(o, ms, src, loaded=ld) for o, ms, src, ld in parts)
    return PhaseEstimate("dense", 0.0, 0.0, "decode", ops, sum(p.total_ms for p in ops), 1.0,
                         "measured")


def test_a_prediction_on_op_times_taken_under_load_is_not_compared():
    g = Gemm("gate_proj", 1, 4864, 896, dtype="fp32")
    a = Attention("attn", 1, 14, 2, 1, 256, 64, dtype="fp32")
    quiet = _est([(g, 9.0, "measured", False), (a, 1.0, "measured", False)])
    assert uncertainty.loaded_ops(quiet, quiet) is None
    # the attention (10 % of the time) measured under load: at the share, not over it
    edge = _est([(g, 9.0, "measured", False), (a, 1.0, "measured", True)])
    assert uncertainty.loaded_ops(edge, quiet) is None
    # the GEMM (90 %) under load on both sides: conditions are not mixed, still not comparable
    both = _est([(g, 9.0, "measured", True), (a, 1.0, "measured", False)])
    assert uncertainty.mixed_conditions(both, both) is None
    why = uncertainty.loaded_ops(both, both)
    assert why and why.startswith("90% of the dense prediction and 90% of the pruned one")
    # an op stored unstable counts as under load; a loaded flag on a roofline price does not
    assert uncertainty.loaded_ops(quiet, _est([(g, 9.0, "unstable", False), (a, 1.0, "measured", False)]))
    assert uncertainty.loaded_ops(_est([(g, 9.0, "roofline", True), (a, 1.0, "measured", False)]), quiet) is None


def test_the_meter_not_the_lagging_load_average_says_a_quiet_round_was_loaded(monkeypatch):
    from pis_tui import timing
    from pis_tui.profiling import rounds

    # the hogs stopped: the load average still reads 3.4 on 2 cores for a minute, the meter
    # reads the rounds themselves as quiet
    monkeypatch.setattr(rounds, "_load", lambda: 3.4)
    monkeypatch.setattr(rounds, "OthersMeter", FakeMeter)
    FakeMeter.readings = [0.05] * 6
    times = iter([0.5, 0.51, 0.5, 0.5, 0.5, 0.5])
    monkeypatch.setattr(timing, "measure_op", lambda op, ctx, repeats=None, **kw: meas(op, next(times)))
    got = profiling.measure_rounds([K_BIG], fake_ctx(), 3,
                                   probe=lambda: {"contended": False, "ratio": 1.0})[K_BIG.key()]
    assert got.status == "ok" and not got.conditions["loaded"]
    # without a meter reading the load average still decides
    FakeMeter.readings = [None] * 6
    times = iter([0.5, 0.51, 0.5, 0.5, 0.5, 0.5])
    got = profiling.measure_rounds([K_BIG], fake_ctx(), 3,
                                   probe=lambda: {"contended": False, "ratio": 1.0})[K_BIG.key()]
    assert got.conditions["loaded"]


def test_validate_remeasures_what_load_left_unstable_once_quiet(monkeypatch):
    from pis_tui import timing
    from pis_tui.validation.op_times import OpTimes

    g = Gemm("gate_proj", 16, 4864, 896, dtype="fp32")
    a = Attention("attn", 16, 14, 2, 1, 256, 64, dtype="fp32")
    times = OpTimes("fp32")
    times._ctx = object()  # no device opened: measure_op is faked
    times.add([meas(g, 9.0, status="unstable"), meas(a, 1.0)])
    assert [o.key() for o in times.unstable([g, a])] == [g.key()]
    again = iter([meas(g, 3.0, status="unstable"), meas(g, 2.0)])
    monkeypatch.setattr(timing, "measure_op", lambda op, ctx, repeats=None, **kw: next(again))
    assert times.remeasure([g]) == 0  # unstable again: kept as it was (nothing lost)
    assert times._mem[g.key()].ms == 9.0
    assert times.remeasure([g]) == 1 and times._mem[g.key()].ms == 2.0
    assert times.unstable([g, a]) == []


def test_machine_quiet_reads_the_meter_before_the_load_average(monkeypatch):
    monkeypatch.setattr(st, "OthersMeter", FakeMeter)
    monkeypatch.setattr(st, "cpu_contended", lambda threads=None: {"contended": True, "ratio": 1.0, "load": 3.5})
    FakeMeter.readings = [0.02]
    assert st.machine_quiet(0.0)  # the load average lags; the meter saw nobody
    FakeMeter.readings = [1.9]
    assert not st.machine_quiet(0.0)
    FakeMeter.readings = [None]  # no meter (not Linux): the probe and the load average
    assert not st.machine_quiet(0.0)

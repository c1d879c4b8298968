"""Which device is local (one decision for profile, calibrate and validate), an unknown GPU's
profile from its own properties, and the GPU's conditions from NVML or nvidia-smi: all
with fakes, on the CPU."""

import os
import stat
import sys
import types

import pytest

from pis_tui.device import local as hardware
from pis_tui.device.gpus import efficiency, efficiency_sources, profile_from_dict
from pis_tui.device.choose import default_gpu, load_gpu
from pis_tui.errors import MeasureError
from pis_tui.device.local import CudaInfo, choose_local_gpu, visible_devices

H200 = CudaInfo(name="NVIDIA H200", source="torch", selector="0", uuid="GPU-1", memory_gb=139.8,
                capability="9.0", sm_count=132, l2_mb=60.0)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    hardware.local_device.cache_clear()
    monkeypatch.setattr(hardware, "_NVML_STATE", None)
    yield
    hardware.local_device.cache_clear()


@pytest.mark.parametrize("raw,expected", [
    (None, None), ("", []), ("-1", []), ("0", ["0"]), ("2,0", ["2", "0"]),
    ("GPU-8f1a,1", ["GPU-8f1a", "1"]), ("1,-1,0", ["1"]), ("MIG-abc", ["MIG-abc"]),
    ("nonsense", []),
])
def test_cuda_visible_devices_is_read_as_cuda_reads_it(raw, expected):
    env = {} if raw is None else {"CUDA_VISIBLE_DEVICES": raw}
    assert visible_devices(env) == expected


def test_torch_decides_when_measuring_and_probes_name_it_otherwise():
    asked = []

    def nvml(sel):
        asked.append(("nvml", sel))
        return CudaInfo("NVIDIA A100-SXM4-80GB", "nvml", sel)

    def smi(sel):
        asked.append(("smi", sel))
        return CudaInfo("never", "nvidia-smi", sel)

    def torch_probe():
        asked.append(("torch", None))
        return H200

    # measuring: torch alone decides (it honours CUDA_VISIBLE_DEVICES itself)
    assert choose_local_gpu({}, torch_probe=torch_probe, nvml_probe=nvml) is H200
    assert asked == [("torch", None)]
    # a torch that sees no GPU: the CPU, even where NVML would name one
    assert choose_local_gpu({}, torch_probe=lambda: None, nvml_probe=nvml) is None
    asked.clear()
    # the estimate path: NVML names the first visible GPU; nvidia-smi only without NVML
    got = choose_local_gpu({"CUDA_VISIBLE_DEVICES": "3,1"}, nvml_probe=nvml, smi_probe=smi)
    assert got.name.startswith("NVIDIA A100") and asked == [("nvml", "3")]
    asked.clear()
    got = choose_local_gpu({}, nvml_probe=lambda s: None, smi_probe=smi)
    assert got.source == "nvidia-smi" and asked == [("smi", "0")]


@pytest.mark.parametrize("env", [{"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "-1"},
                                 {"PIS_TUI_NO_CUDA": "1"}])
def test_hidden_gpus_mean_the_cpu_for_every_command(env):
    def never(*a):
        raise AssertionError("no probe may run when every GPU is hidden")
    assert choose_local_gpu(env, torch_probe=never, nvml_probe=never, smi_probe=never) is None


def test_measuring_device_is_pinned_for_the_process(monkeypatch):
    monkeypatch.delenv("PIS_TUI_NO_CUDA", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(hardware, "_named_gpu", lambda: None)
    dev = hardware.measuring_device(torch_probe=lambda: H200)
    assert dev.kind == "gpu" and dev.fingerprint == "cuda:NVIDIA_H200" and dev.capability == "9.0"
    # the estimate path now says the same (no second decision with another answer)
    assert hardware.local_device() is dev
    assert hardware.local_cuda_name().startswith("NVIDIA H200")
    assert default_gpu() == "local"
    hardware.local_device.cache_clear()
    assert hardware.local_device().kind == "cpu"


def test_a_gpu_torch_cannot_use_is_an_error_not_a_cpu_measurement(monkeypatch):
    monkeypatch.delenv("PIS_TUI_NO_CUDA", raising=False)
    monkeypatch.setattr(hardware, "_named_gpu", lambda: CudaInfo("NVIDIA H200", "nvml", "0"))
    with pytest.raises(MeasureError, match="cannot use CUDA.*PIS_TUI_NO_CUDA=1"):
        hardware.measuring_device(torch_probe=lambda: None)
    monkeypatch.setenv("PIS_TUI_NO_CUDA", "1")
    assert hardware.measuring_device(torch_probe=lambda: H200).kind == "cpu"


def test_a_known_gpu_takes_its_profile():
    dev = hardware._gpu_profile(H200)
    assert dev.name == "local" and not dev.unknown and dev.sparse_24
    assert dev.peak("bf16") == load_gpu("h200-sxm").peak("bf16")
    assert dev.display_name == "NVIDIA H200 (local)"


def test_an_unknown_gpu_is_measurable_from_its_own_properties():
    info = CudaInfo(name="NVIDIA Z900 Prototype", source="torch", memory_gb=94.0, capability="9.0",
                    sm_count=100, l2_mb=40.0, max_sm_mhz=1800.0, max_mem_mhz=2600.0,
                    bus_width_bits=5120)
    dev = hardware._gpu_profile(info)
    assert dev.unknown and dev.kind == "gpu" and dev.fingerprint == "cuda:NVIDIA_Z900_Prototype"
    assert "no profile" in dev.display_name and "no profile in profiles/gpus" in dev.notes
    # nominal: 100 SMs × 4096 FLOP/clock (Hopper) × 1.8 GHz; bandwidth from the bus
    assert dev.peak("bf16") == pytest.approx(100 * 4096 * 1.8e9, rel=1e-3)
    assert dev.bandwidth_gbs == pytest.approx(2 * 2600e6 * 640 / 1e9, rel=1e-3)
    assert dev.sparse_24 and dev.peak("bf16", sparse=True) == pytest.approx(2 * dev.peak("bf16"))
    assert dev.l2_mb == 40.0 and dev.memory_gb == 94.0 and dev.sm_count == 100
    assert "nominal" in dev.sources["peak_tflops"]
    # measured peaks replace the nominal figures, and the sources say so
    m = hardware.unknown_gpu_profile(info, {"bf16": {"peak_tflops": 612.0, "bandwidth_gbs": 2900.0}})
    assert m.peak("bf16") == pytest.approx(612e12) and m.bandwidth_gbs == 2900.0
    assert "measured" in m.sources["peak_tflops"] and "measured" in m.sources["memory_bandwidth_gbs"]
    # an old GPU: no bf16, no 2:4
    old = hardware._gpu_profile(CudaInfo("Tesla V100-SXM2-16GB", "nvml", capability="7.0", sm_count=80))
    assert not old.sparse_24 and "bf16" not in old.peak_tflops and old.unknown


def test_gpus_command_lists_an_unknown_local_gpu(monkeypatch, capsys):
    from pis_tui.cli import main

    monkeypatch.setattr(hardware, "_named_gpu",
                        lambda: CudaInfo("NVIDIA Z900 Prototype", "nvml", "0", memory_gb=94.0,
                                         capability="9.0"))
    assert main(["gpus", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    local = out["devices"][0]
    assert out["default"] == "local" and local["name"] == "local"
    assert "no profile" in local["display_name"] and local["fingerprint"] == "cuda:NVIDIA_Z900_Prototype"


class _Proc:
    def __init__(self, pid, mem):
        self.pid, self.usedGpuMemory = pid, mem


def _fake_pynvml(**over):
    m = types.ModuleType("pynvml")
    m.NVML_CLOCK_SM, m.NVML_CLOCK_MEM, m.NVML_TEMPERATURE_GPU = 1, 2, 0
    m.nvmlInit = lambda: None
    m.nvmlDeviceGetHandleByIndex = lambda i: ("h", i)
    m.nvmlDeviceGetHandleByUUID = lambda u: ("h", u)
    m.nvmlDeviceGetName = lambda h: b"NVIDIA H200"
    m.nvmlSystemGetDriverVersion = lambda: "580.159.04"
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=143771 * 2**20)
    m.nvmlDeviceGetCudaComputeCapability = lambda h: (9, 0)
    m.nvmlDeviceGetUUID = lambda h: "GPU-abc"
    m.nvmlDeviceGetClockInfo = lambda h, c: {1: 1755, 2: 3201}[c]
    m.nvmlDeviceGetMaxClockInfo = lambda h, c: {1: 1980, 2: 3201}[c]
    m.nvmlDeviceGetMemoryBusWidth = lambda h: 6144
    m.nvmlDeviceGetTemperature = lambda h, s: 41
    m.nvmlDeviceGetPowerUsage = lambda h: 312_000
    m.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    m.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 0x4 | 0x1
    m.nvmlDeviceGetComputeRunningProcesses = lambda h: [_Proc(os.getpid(), 10 << 20),
                                                        _Proc(4242, 2048 << 20)]
    for k, v in over.items():
        setattr(m, k, v)
    return m


def test_nvml_names_the_gpu_and_reports_conditions(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    info = hardware._nvml_probe("0")
    assert info.name == "NVIDIA H200" and info.capability == "9.0" and info.source == "nvml"
    assert info.memory_gb == pytest.approx(140.4, abs=0.1) and info.bus_width_bits == 6144
    c = hardware.gpu_conditions("0")
    assert c["source"] == "nvml" and c["clocks.sm"] == 1755 and c["clocks.max.sm"] == 1980
    assert c["power.draw"] == 312 and c["power.limit"] == 700
    assert c["throttle"] == ["gpu_idle", "sw_power_cap"] and c["throttle_mask"] == "0x5"
    # this process is not "another process on the GPU"
    assert c["other_processes"] == [{"pid": 4242, "used_mb": 2048}]


def _fake_smi(tmp_path, monkeypatch, gpu_line: str, apps: str = ""):
    exe = tmp_path / "nvidia-smi"
    exe.write_text("#!/bin/sh\ncase \"$1\" in\n"
                   f"  --query-gpu=*) echo '{gpu_line}' ;;\n"
                   f"  --query-compute-apps=*) printf '{apps}' ;;\n"
                   "esac\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def test_nvidia_smi_is_the_fallback(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed
    _fake_smi(tmp_path, monkeypatch, "1980, 3201, 1980, 3201, 40, 95.5, 700.00, 0x0000000000000004",
              "4242, 2048\\n")
    c = hardware.gpu_conditions()
    assert c["source"] == "nvidia-smi" and c["clocks.sm"] == 1980 and c["power.draw"] == 95.5
    assert c["throttle"] == ["sw_power_cap"]
    assert c["other_processes"] == [{"pid": 4242, "used_mb": 2048.0}]
    _fake_smi(tmp_path, monkeypatch, "NVIDIA H200, 143771, 580.159.04, GPU-abc, 9.0, 1980, 3201")
    info = hardware._smi_probe("0")
    assert info.name == "NVIDIA H200" and info.capability == "9.0" and info.max_sm_mhz == 1980


def test_no_nvml_no_nvidia_smi_no_conditions(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert hardware.gpu_conditions() == {}
    assert hardware._nvml_probe("0") is None and hardware._smi_probe("0") is None


def test_calibrate_suggests_a_profile_file_that_loads():
    from pis_tui.commands.calibrate import _suggested_profile

    info = CudaInfo(name="NVIDIA Z900 Prototype", source="torch", memory_gb=94.0, capability="9.0",
                    sm_count=100, l2_mb=40.0, max_sm_mhz=1800.0)
    eff = {"gemm": {"value": 0.71, "source": "measured by pis-tui calibrate on Z900: (12 kernels)"}}
    d = _suggested_profile(hardware.unknown_gpu_profile(info, {"bf16": {"peak_tflops": 612.0,
                                                                        "bandwidth_gbs": 2900.0}}), eff)
    assert d["name"] == "nvidia-z900-prototype" and d["match"] == ["NVIDIA Z900 Prototype"]
    prof = profile_from_dict(d)
    assert prof.peak("bf16") == pytest.approx(612e12) and prof.bandwidth_gbs == 2900.0
    assert prof.sm_count == 100 and prof.l2_mb == 40.0 and prof.sparse_24
    assert efficiency(prof)["gemm"] == 0.71  # the measured block travels with it
    assert efficiency_sources(prof)["gemm"].startswith("measured by pis-tui calibrate")
    assert hardware._match_profile("NVIDIA H200, 580, 143771 MiB").name == "h200-sxm"

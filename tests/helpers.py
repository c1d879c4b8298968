"""Helpers shared by the tests (importable as `helpers`: tests/ is on sys.path)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None, timeout=120):
    """Run the CLI in a subprocess; returns CompletedProcess."""
    import subprocess

    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "pis_tui", *args], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=str(ROOT))


def seed_local_timings(cache_path, ok: int = 2, unsupported: int = 1) -> None:
    """A cache holding `ok` usable timings and `unsupported` kernel-less records for this
    machine's device (what `pis-tui profile` leaves: 2:4 on a CPU is recorded unsupported)."""
    from pis_tui.cache import Cache
    from pis_tui.device.local import local_device
    from pis_tui.pricing.measured_table import METHOD_VERSIONS, Measurement, software_versions

    fp = local_device().fingerprint
    rows = []
    for i in range(ok + unsupported):
        kind = "dense" if i < ok else "sparse_24"
        op = {"op_type": "gemm", "name": "q", "m": 16 * (i + 1), "n": 64, "k": 32, "count": 1.0,
              "dtype": "fp32", "kind": kind, "density": 1.0}
        rows.append(Measurement(key=f"gemm:{kind}:fp32:{16 * (i + 1)}x64x32", op=op,
                                ms=1.0 if i < ok else None, status="ok" if i < ok else "unsupported",
                                method="cpu-wall", method_version=METHOD_VERSIONS["cpu-wall"],
                                fingerprint=fp, software=software_versions(),
                                measured_at="2026-01-02T03:04:05+00:00"))
    c = Cache.open(str(cache_path))
    c.put_measurements(rows, {"fingerprint": fp, "kind": "cpu"})
    c.close()


def tiny_config(preset="qwen2.5-0.5b", **over):
    """A preset's config at a tiny size (4 layers, hidden 128, vocab 512): what validate's
    and the quantization's tests build with random weights."""
    from pis_tui.model.spec import load_preset_config

    cfg = load_preset_config(preset)
    cfg = {k: val for k, val in cfg.items() if not k.startswith("_")}
    cfg.update(num_hidden_layers=4, hidden_size=128, intermediate_size=384, num_attention_heads=4,
               num_key_value_heads=2, head_dim=32, vocab_size=512, max_position_embeddings=2048)
    cfg.update(over)
    return cfg

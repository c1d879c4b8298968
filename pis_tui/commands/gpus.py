"""`pis-tui gpus`: GPU profiles and the local device."""

from __future__ import annotations


def register(sub) -> None:
    from .common import add_cache

    p = sub.add_parser("gpus", help="list GPU profiles and the local device")
    p.add_argument("--json", dest="json_out", action="store_true", help="print JSON")
    add_cache(p)
    p.set_defaults(func=run)


def _local_state(device, cache_path) -> tuple[int, dict | None]:
    """(usable op timings cached, measured peaks at the device's default dtype) of the local
    device; (0, None) without a cache file (none is created for a look)."""
    from pathlib import Path

    from ..cache import Cache, default_path
    from ..decide.sweep import default_dtype

    path = cache_path or default_path()
    if not Path(path).expanduser().exists():
        return 0, None
    cache = Cache.open(path)
    try:
        n = len(cache.get_measurements(device.fingerprint, statuses=("ok",)))
        return n, cache.get_calibration(device.fingerprint, default_dtype(device))
    finally:
        cache.close()


def run(args) -> int:
    import json

    from rich.table import Table

    from ..display import timings_label
    from ..decide.sweep import default_dtype
    from ..device.choose import default_gpu, load_gpu
    from ..device.gpus import gpu_names
    from ..device.local import local_device
    from .common import console

    local = local_device()
    devices = [local] + [load_gpu(n) for n in gpu_names()]
    cached, cal = _local_state(local, args.cache)
    about = {"kind": local.kind, "capability": local.capability, "profile_matched": not local.unknown,
             "notes": local.notes, "sources": local.sources}
    if args.json_out:
        rows = [dict(d.to_dict(), op_timings_cached=cached if d.is_local else 0) for d in devices]
        print(json.dumps({"default": default_gpu(), "local": about, "devices": rows}, indent=2))
        return 0
    t = Table(title=f"devices (default --gpu: {default_gpu()})", title_justify="left")
    for c in ("name", "device", "dense TFLOP/s", "2:4", "GB/s", "memory GB", "L2 MB", "timings"):
        t.add_column(c, justify="left" if c in ("name", "device", "timings") else "right")
    for d in devices:
        dtype = default_dtype(d)
        peak, bw = f"{d.peak(dtype) / 1e12:.1f} {dtype}", f"{d.bandwidth_gbs:.0f}"
        if d.kind == "cpu":  # a guess from core count and SIMD width until a profile measures it
            tf, gbs, how = ((cal["peak_tflops"], cal["bandwidth_gbs"], "measured") if d.is_local and cal
                            else (d.peak(dtype) / 1e12, d.bandwidth_gbs, "nominal"))
            peak, bw = f"{tf:.3g} {dtype}, {how}", f"{gbs:.0f} {how}"
        if d.is_local:
            timings = timings_label(cached)
        else:
            timings = "shipped table" if d.measured_table else "datasheet roofline"
        t.add_row(d.name, d.display_name, peak, "yes" if d.sparse_24 else "no", bw,
                  f"{d.memory_gb:.0f}", f"{d.l2_mb:.0f}", timings)
    console().print(t)
    if local.unknown:
        console().print(f"local: {local.notes}", markup=False)
    return 0

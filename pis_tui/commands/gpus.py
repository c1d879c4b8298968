"""`pis-tui gpus`: GPU profiles and the local device."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("gpus", help="list GPU profiles and the local device")
    p.add_argument("--json", dest="json_out", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from rich.table import Table

    from ..hardware import default_gpu, gpu_names, load_gpu, local_device
    from .common import console

    local = local_device()
    devices = [local] + [load_gpu(n) for n in gpu_names()]
    about = {"kind": local.kind, "capability": local.capability, "profile_matched": not local.unknown,
             "notes": local.notes, "sources": local.sources}
    if args.json_out:
        print(json.dumps({"default": default_gpu(), "local": about,
                          "devices": [d.to_dict() for d in devices]}, indent=2))
        return 0
    t = Table(title=f"devices (default --gpu: {default_gpu()})", title_justify="left")
    for c in ("name", "device", "bf16 dense TFLOP/s", "2:4", "GB/s", "memory GB", "L2 MB", "measured table"):
        t.add_column(c, justify="left" if c in ("name", "device", "measured table") else "right")
    for d in devices:
        t.add_row(d.name, d.display_name, f"{d.peak('bf16') / 1e12:.1f}",
                  "yes" if d.sparse_24 else "no", f"{d.bandwidth_gbs:.0f}", f"{d.memory_gb:.0f}",
                  f"{d.l2_mb:.0f}", d.measured_table or ("cache" if d.is_local else "–"))
    console().print(t)
    if local.unknown:
        console().print(f"local: {local.notes}", markup=False)
    return 0

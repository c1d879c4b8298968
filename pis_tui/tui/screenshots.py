"""Write the README's screenshots (SVG and PNG) from the real app with real data.

    python -m pis_tui.tui.screenshots [--out screenshots]

Uses the real engine: llama-3.1-8b on the H200 profile with literature priors (Pareto,
Beyond FLOPs, points table, op drill-down, export dialog, help, the Plan tab) at 120×36, the
same at 80×24, and qwen2.5-0.5b being measured on the local device (stopped after a few dozen kernels).  A throwaway cache is used, so your saved
choices are neither read nor changed.  PNGs need cairosvg (``pip install pis-tui[screenshots]``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from dataclasses import replace
from pathlib import Path

SHOTS = (
    # name, size, choices overrides, keys
    ("pareto", (120, 36), {}, ()),
    ("beyond-flops", (120, 36), {}, ("2",)),
    ("points", (120, 36), {}, ("s", "3")),  # setup hidden: every column in view
    ("ops", (120, 36), {}, ("3", "d")),
    ("export", (120, 36), {}, ("e",)),
    ("help", (120, 36), {}, ("question_mark",)),
    ("small-80x24", (80, 24), {}, ()),
    # one model for a workload across both phases (chat preset), setup hidden: the whole view
    ("plan", (120, 36), {}, ("s", "4")),
    # served in int4 (weight-only): weights, sequences and the plan at that precision
    ("plan-int4", (120, 36), {"precision": "int4-g128"}, ("s", "4")),
    # a mixture of experts: decode speedup against decode batch, and the experts a step touches
    ("batch-moe", (120, 36), {"model": "qwen3-30b-a3b"}, ("s", "5")),
    # measuring on this machine: the charts mid-profile, with measured kernels in them
    ("measuring-local", (120, 36), {"model": "qwen2.5-0.5b", "gpu": "local", "prompt_len": 128,
                                    "decode_batch": 4, "context_len": 128}, ("m",)),
)
MEASURED_OPS = 60  # the measuring shot waits for this many measured kernels (~30 s on 2 cores)


async def _shot(name, size, overrides, keys, out: Path, cache: str) -> Path:
    from .app import PisApp
    from .backend import Backend, Choices

    app = PisApp(Backend(cache_path=cache), replace(Choices(), **overrides), restore=False)
    async with app.run_test(size=size) as pilot:
        while app.snapshot is None or app._sweeping or not app._full:
            await pilot.pause(0.05)
        await pilot.pause(0.3)
        if keys:
            await pilot.press(*keys)
            await pilot.pause(0.4)
        while "4" in keys and (app.plan_snapshot is None or app._planning):
            await pilot.pause(0.05)
        if "4" in keys:
            await pilot.pause(0.3)
        if "m" in keys:
            await _measured(app, pilot)
        svg = out / f"{name}.svg"
        app.save_screenshot(str(svg))
        if app.runner is not None and app.runner.running:
            await pilot.press("x")
            while app.runner.running:
                await pilot.pause(0.1)
    return svg


async def _measured(app, pilot, timeout_s: float = 180.0) -> None:
    """Wait until the profile has measured MEASURED_OPS kernels and the charts show them."""
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        snap = app.snapshot
        if app.profile_error:
            raise SystemExit(f"measuring failed: {app.profile_error}")
        if snap is not None and snap.measured_ops >= MEASURED_OPS and not app._sweeping:
            await pilot.pause(0.5)
            return
        await pilot.pause(0.2)
    raise SystemExit(f"fewer than {MEASURED_OPS} kernels measured in {timeout_s:g} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pis_tui.tui.screenshots")
    ap.add_argument("--out", default="screenshots")
    ap.add_argument("--only", default=None, help="comma-separated names")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PIS_TUI_NO_CUDA", os.environ.get("PIS_TUI_NO_CUDA", ""))
    try:
        import cairosvg
    except ImportError:
        cairosvg = None
        print("cairosvg missing: writing SVGs only")
    only = set(args.only.split(",")) if args.only else None
    with tempfile.TemporaryDirectory() as d:
        for name, size, overrides, keys in SHOTS:
            if only and name not in only:
                continue
            svg = asyncio.run(_shot(name, size, overrides, keys, out, str(Path(d) / "cache.duckdb")))
            msg = f"wrote {svg}"
            if cairosvg is not None:
                png = svg.with_suffix(".png")
                cairosvg.svg2png(url=str(svg), write_to=str(png), output_width=size[0] * 12)
                msg += f" and {png.name}"
            print(msg, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`pis-tui gpu-run`: the prepared GPU-server run (``tests/gpu/run.sh``) and what comes of it.

* ``gpu-run env FILE`` (run there): the machine as the run saw it: versions, the GPU as torch
  and NVML report it, its conditions (read-only), the device decision and its profile.
* ``gpu-run summary DIR|ARCHIVE``: one screen of the results (tests passed and failed, the
  calibration's peaks and ops, the validation's errors).
* ``gpu-run import ARCHIVE --gpu h200-sxm`` (run here, in the repository): checks the
  archive's calibrate table (a complete ``cuda-graph`` table of that GPU), writes it to
  ``profiles/measured/<gpu>.json``, points the GPU profile's ``measured_table`` at it, and
  writes the validation table ``tests/benchmarks/validate_<model>_<gpu>.result.md`` (and
  ``.json``) from the validate rows.

Needs neither duckdb nor textual (the GPU server has neither).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Optional

from ..errors import UserError

RESULT_FILES = ("env.json", "steps.jsonl", "summary.log", "gpu-kernels.xml", "gpu-commands.xml",
                "calibrate.json", "validate-prefill.json", "validate-decode.json", "store.json")


def register(sub) -> None:
    p = sub.add_parser("gpu-run", help="the prepared GPU-server run (tests/gpu/run.sh): "
                                       "describe the machine, summarise, import the results",
                       description="Helpers of tests/gpu/run.sh: 'env' describes the machine "
                                   "(run there), 'summary' prints the results, 'import' turns "
                                   "an archive that came back into profiles/measured/<gpu>.json "
                                   "and the committed validation table.")
    s = p.add_subparsers(dest="action", metavar="ACTION")
    e = s.add_parser("env", help="write the machine's description (versions, GPU, conditions)")
    e.add_argument("out", help="JSON file to write")
    m = s.add_parser("summary", help="print a summary of a run's results")
    m.add_argument("source", help="the results folder or the archive (pis-gpu-run.tar.gz)")
    i = s.add_parser("import", help="results → profiles/measured/<gpu>.json + the validation table")
    i.add_argument("source", help="the archive (pis-gpu-run.tar.gz) or its results folder")
    i.add_argument("--gpu", required=True, help="the GPU profile it was measured on (e.g. h200-sxm)")
    i.add_argument("--table-out", default=None,
                   help="where the measured table goes (default profiles/measured/<gpu>.json)")
    i.add_argument("--validation-out", default=None, metavar="PREFIX",
                   help="the validation table, PREFIX.md and PREFIX.json (default "
                        "tests/benchmarks/validate_<model>_<gpu>.result)")
    i.add_argument("--no-link", action="store_true",
                   help="do not set measured_table in profiles/gpus/<gpu>.json")
    i.add_argument("--allow-partial", action="store_true",
                   help="accept a calibrate table a time limit cut short (marked partial)")
    i.add_argument("--force", action="store_true",
                   help="accept a table whose device does not match the GPU profile (a rehearsal)")
    p.set_defaults(func=run, action=None, _parser=p)


def run(args) -> int:
    if args.action == "env":
        text = json.dumps(environment(), indent=2, default=str)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        print(text)
        return 0
    if args.action == "summary":
        print("\n".join(summary_lines(load_results(args.source))))
        return 0
    if args.action == "import":
        return import_run(args)
    args._parser.print_help()
    return 0


# ------------------------------------------------------------------ on the GPU server


def environment() -> dict:
    """What the run measured on: versions, the device decision, the GPU and its conditions."""
    import importlib.metadata as md
    import os
    import platform

    from .. import __version__
    from ..device import local

    def ver(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None
    out = {"pis_tui": __version__, "python": platform.python_version(), "platform": platform.platform(),
           "packages": {n: ver(n) for n in ("torch", "transformers", "huggingface-hub", "triton",
                                            "nvidia-ml-py", "pytest", "rich", "duckdb", "textual",
                                            "platformdirs", "jsonschema")},
           "importable": {n: _importable(n) for n in ("duckdb", "textual", "plotext",
                                                      "platformdirs", "jsonschema", "pynvml")},
           "env": {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
                                                  "PIS_TUI_NO_CUDA")}}
    named = local._named_gpu()
    out["named_without_torch"] = named.__dict__ if named else None
    try:
        import torch

        out["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                        "cuda_available": torch.cuda.is_available(),
                        "device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0}
        dev = local.measuring_device()
        out["device"] = {**dev.to_dict(), "capability": dev.capability, "unknown": dev.unknown,
                         "notes": dev.notes, "sources": dev.sources}
        info = local.measuring_gpu()
        out["gpu"] = info.__dict__ if info else None
        if info is not None:
            try:
                out["torch"]["cusparselt"] = torch.backends.cusparselt.version()
            except Exception:  # noqa: BLE001
                out["torch"]["cusparselt"] = None
        out["conditions"] = local.gpu_conditions(info.uuid if info else None) if info else {}
    except Exception as e:  # noqa: BLE001 - the description must not fail the run
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def _importable(name: str) -> bool:
    import importlib

    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - ImportError, or a package that fails as it loads
        return False
    return True


# ------------------------------------------------------------------ reading results


def load_results(source: str) -> dict:
    """{file name: text} of a run's results, from its folder or its archive."""
    p = Path(source).expanduser()
    files: dict = {}
    if p.is_dir():
        base = p / "results" if (p / "results").is_dir() else p
        for f in base.iterdir():
            if f.is_file() and (f.name in RESULT_FILES or f.suffix in (".log", ".json", ".xml")):
                files[f.name] = f.read_text(encoding="utf-8", errors="replace")
    elif p.is_file():
        import tarfile

        try:
            with tarfile.open(p, "r:gz") as tar:
                for m in tar.getmembers():
                    name = Path(m.name).name
                    if m.isfile() and (name in RESULT_FILES or name.endswith((".log", ".json", ".xml"))):
                        fh = tar.extractfile(m)
                        if fh is not None:
                            files[name] = fh.read().decode("utf-8", errors="replace")
        except (tarfile.TarError, OSError) as e:
            raise UserError(f"{p}: not a readable .tar.gz archive ({e})") from None
    else:
        raise UserError(f"{p}: no such file or folder")
    if not files:
        raise UserError(f"{p}: no results of tests/gpu/run.sh in it")
    return files


def _json(files: dict, name: str):
    if name not in files:
        return None
    try:
        return json.loads(files[name])
    except json.JSONDecodeError as e:
        raise UserError(f"{name} in the results is malformed ({e.msg}, line {e.lineno})") from None


def test_report(files: dict) -> Optional[dict]:
    """Counts and failures of the test steps (their JUnit XML files)."""
    xmls = sorted(n for n in files if n.startswith("gpu-") and n.endswith(".xml"))
    if not xmls:
        return None
    import xml.etree.ElementTree as ET

    rep = {"passed": 0, "failed": 0, "skipped": 0, "failures": [], "steps": [n[:-4] for n in xmls]}
    cases = []
    for n in xmls:
        try:
            cases += list(ET.parse(io.StringIO(files[n])).getroot().iter("testcase"))
        except ET.ParseError as e:
            rep["error"] = f"{n} unreadable ({e})"
    for c in cases:
        name = f"{c.get('classname', '')}.{c.get('name', '')}".split("tests.gpu.")[-1]
        bad = c.find("failure")
        if bad is None:
            bad = c.find("error")
        if bad is not None:
            rep["failed"] += 1
            rep["failures"].append(f"{name}: {(bad.get('message') or '').splitlines()[0][:200] if bad.get('message') else ''}")
        elif c.find("skipped") is not None:
            rep["skipped"] += 1
        else:
            rep["passed"] += 1
    return rep


def validation_rows(files: dict) -> list:
    """The validate rows of the run, completed from the store's full records (FLOPs ratio,
    spreads, notes) where it has them."""
    rows = []
    for name in ("validate-prefill.json", "validate-decode.json"):
        rows += _json(files, name) or []
    store = _json(files, "store.json") or {}
    full = {}
    for r in store.get("validations", []):
        full[(r["strategy"], round(float(r["sparsity"]), 6), r["phase"], int(r["batch"]),
              int(r["length"]))] = r
    out = []
    for r in rows:
        k = (r["strategy"], round(float(r["sparsity"]), 6), r["phase"], int(r["batch"]), int(r["length"]))
        out.append({**full.get(k, {}), **r})
    return out


def accuracy(rows: list) -> dict:
    import statistics

    from ..validation.compare import standard_families

    core = [r for r in rows if r["strategy"] in standard_families()]
    pruned = [r for r in rows if r["strategy"] != "dense"]

    def stats(rs, key):
        errs = [abs(r[key]) for r in rs if r.get(key) is not None]
        return (statistics.median(errs), max(errs)) if errs else (None, None)
    out = {"n": len(rows), "core_n": len(core)}
    out["core_median"], out["core_worst"] = stats(core, "error")
    out["all_median"], out["all_worst"] = stats(pruned, "error")
    out["flops_core_median"], out["flops_core_worst"] = stats(core, "flops_error")
    dense = [abs(r["measured_speedup"] - 1) for r in rows
             if r["strategy"] == "dense" and r.get("measured_speedup") is not None]
    out["unstable"] = sum(1 for r in rows if r.get("status") == "unstable")
    out["dense_noise"] = max(dense) if dense else None
    out["capture_failed"] = sum(1 for r in rows if r.get("capture_failed"))
    out["graph_rows"] = sum(1 for r in rows if r.get("timing") == "cuda-graph")
    if core:
        w = max(core, key=lambda r: abs(r["error"]) if r.get("error") is not None else -1.0)
        out["core_worst_row"] = f"{w['strategy']} {w['sparsity']:g} {w['phase']} b{w['batch']}"
    return out


def _pct(x) -> str:
    return "–" if x is None else f"{x:.1%}"


def summary_lines(files: dict) -> list:
    lines = []
    env = _json(files, "env.json") or {}
    dev = env.get("device") or {}
    if env:
        pk = env.get("packages", {})
        lines.append(f"machine: {dev.get('display_name', '?')} (capability {dev.get('capability')}), "
                     f"torch {pk.get('torch')} (CUDA {env.get('torch', {}).get('cuda')}), "
                     f"transformers {pk.get('transformers')}, nvidia-ml-py {pk.get('nvidia-ml-py')}")
    for line in (files.get("steps.jsonl") or "").splitlines():
        try:
            s = json.loads(line)
        except json.JSONDecodeError:
            continue
        lines.append(f"step {s.get('step')}: {s.get('status')}"
                     + (f" in {s['seconds']} s (limit {s.get('limit_s')} s)" if "seconds" in s else ""))
    t = test_report(files)
    if t:
        lines.append(f"gpu tests: {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
                     f"{t.get('skipped', 0)} skipped" + (f" ({t['error']})" if t.get("error") else ""))
        lines += [f"  FAILED {f}" for f in t.get("failures", [])[:20]]
    cal = _json(files, "calibrate.json")
    if cal:
        ents = cal.get("entries", [])
        by = {}
        for e in ents:
            by[e.get("status")] = by.get(e.get("status"), 0) + 1
        c = next(iter(cal.get("calibration", {}).values()), {}) or {}
        flex_fb = sum(1 for e in ents if "flex-compile failed" in (e.get("note") or ""))
        lines.append(f"calibrate: {len(ents)} ops ({', '.join(f'{v} {k}' for k, v in sorted(by.items()))})"
                     f"{' PARTIAL' if cal.get('partial') else ''}; peaks {c.get('peak_tflops', 0):.1f} "
                     f"TFLOP/s, {c.get('bandwidth_gbs', 0):.0f} GB/s; FlexAttention fallbacks: {flex_fb}")
    rows = validation_rows(files)
    if rows:
        a = accuracy(rows)
        lines.append(f"validate: {a['n']} rows ({a['graph_rows']} under CUDA graphs, "
                     f"{a['capture_failed']} capture failed); core families |error| median "
                     f"{_pct(a['core_median'])}, worst {_pct(a['core_worst'])}"
                     f"{' (' + a['core_worst_row'] + ')' if a.get('core_worst_row') else ''}; all pruned "
                     f"median {_pct(a['all_median'])}, worst {_pct(a['all_worst'])}; FLOPs ratio core "
                     f"median {_pct(a['flops_core_median'])}, worst {_pct(a['flops_core_worst'])}; "
                     f"dense vs dense {_pct(a['dense_noise'])}")
    return lines or ["no results"]


# ------------------------------------------------------------------ importing


def import_run(args) -> int:
    from ..device.gpus import gpu_names
    from ..pricing.measured_table import TableError, table_from_dict, write_table
    from ..shipped import profile_path, read_json

    files = load_results(args.source)
    if args.gpu not in gpu_names():
        raise UserError(f"unknown GPU {args.gpu!r}; choose one of {', '.join(gpu_names())}")
    prof = read_json("gpus", args.gpu + ".json")
    raw = _json(files, "calibrate.json")
    if raw is None:
        raise UserError(f"{args.source}: no calibrate.json (the calibrate step did not run)")
    try:
        table = table_from_dict(raw, "calibrate.json")
    except TableError as e:
        raise UserError(str(e)) from None
    name = str(table.device.get("display_name") or table.device.get("name") or "")
    matches = [m for m in prof.get("match", []) if m.lower() in name.lower()]
    if not args.force:
        if table.method != "cuda-graph" or not matches:
            raise UserError(f"calibrate.json was measured on {name or '?'} ({table.method}), not on "
                            f"a {prof['display_name']} (its profile matches "
                            f"{', '.join(prof.get('match', []))}); --force to import it anyway")
    if table.extra.get("partial") and not args.allow_partial:
        raise UserError("calibrate.json is partial (a time limit cut it short): run the GPU "
                        "script again to resume it, or --allow-partial")
    table_out = Path(args.table_out) if args.table_out else profile_path("measured", args.gpu + ".json")
    table_out.parent.mkdir(parents=True, exist_ok=True)
    write_table(table_out, table)
    print(f"measured table: {len(table.entries)} ops ({len(table.ok_entries())} ok) → {table_out}")
    if not args.no_link and not args.table_out:
        gp = profile_path("gpus", args.gpu + ".json")
        d = json.loads(gp.read_text(encoding="utf-8"))
        if d.get("measured_table") != table_out.name:
            d["measured_table"] = table_out.name
            gp.write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            read_json.cache_clear()  # this process reads the profile anew
            print(f"{gp}: measured_table = {table_out.name}")
    rows = validation_rows(files)
    if rows:
        model = str((table.extra.get("models") or ["model"])[0])
        prefix = Path(args.validation_out) if args.validation_out else (
            Path.cwd() / "tests" / "benchmarks" /
            f"validate_{model.replace('.', '').replace('-', '_')}_{args.gpu.replace('-', '_')}.result")
        prefix.parent.mkdir(parents=True, exist_ok=True)
        md, doc = validation_table(rows, files, args.gpu)
        Path(str(prefix) + ".md").write_text(md, encoding="utf-8")
        Path(str(prefix) + ".json").write_text(json.dumps(doc, indent=2, default=str) + "\n",
                                               encoding="utf-8")
        print(f"validation table: {len(rows)} rows → {prefix}.md, {prefix}.json")
    for line in summary_lines(files):
        print(line, file=sys.stderr)
    return 0


def validation_table(rows: list, files: dict, gpu: str) -> tuple[str, dict]:
    env = _json(files, "env.json") or {}
    dev = env.get("device") or {}
    pk = env.get("packages", {})
    a = accuracy(rows)
    tests = test_report(files)
    model = rows[0].get("model") or "the model"
    dtype = rows[0].get("dtype") or "bf16"
    head = [f"# validate on {gpu}: predicted vs end-to-end measured speedups", "",
            f"{model}, {dtype}, on {dev.get('display_name', gpu)} (capability {dev.get('capability')}); "
            f"torch {pk.get('torch')} (CUDA {env.get('torch', {}).get('cuda')}), transformers "
            f"{pk.get('transformers')}; made by `tests/gpu/run.sh`, imported with "
            f"`pis-tui gpu-run import`.", "",
            "Both models of a row are timed as CUDA-graph replays of a whole prefill forward or "
            "decode step (timing `cuda-graph`), the way the ops behind the prediction are timed; "
            "a row timed `eager` had a capture that failed (`capture failed`) and carries host "
            "overhead the prediction does not price.  error = predicted speedup / measured "
            "speedup − 1.", "",
            f"**Core families** (static_depth, static_width, low_rank, dynamic_depth): median "
            f"|error| {_pct(a['core_median'])}, worst {_pct(a['core_worst'])}"
            f"{' (' + a['core_worst_row'] + ')' if a.get('core_worst_row') else ''}; the FLOPs "
            f"ratio: median {_pct(a['flops_core_median'])}, worst {_pct(a['flops_core_worst'])}.  "
            f"All pruned rows: median {_pct(a['all_median'])}, worst {_pct(a['all_worst'])}.  "
            f"Dense against dense (the noise floor): {_pct(a['dense_noise'])}.", ""]
    if tests:
        head += [f"GPU tests of the same run: {tests.get('passed', 0)} passed, {tests.get('failed', 0)} "
                 f"failed, {tests.get('skipped', 0)} skipped."] + [f"- FAILED {f}" for f in tests.get("failures", [])] + [""]
    cols = ["strategy", "s", "achieved", "phase", "batch", "len", "pred ms", "meas ms", "dense pred",
            "dense meas", "pred ×", "meas ×", "error", "FLOPs ×", "timing"]
    lines = head + ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        timing = "capture failed → eager" if r.get("capture_failed") else r.get("timing", "?")
        lines.append("| " + " | ".join([
            r["strategy"], f"{r['sparsity']:g}", f"{r['achieved_sparsity']:.1%}", r["phase"],
            str(r["batch"]), str(r["length"]), f"{r['predicted_ms']:.3f}", f"{r['measured_ms']:.3f}",
            f"{r['dense_predicted_ms']:.3f}", f"{r['dense_measured_ms']:.3f}",
            f"{r['predicted_speedup']:.3f}",
            f"{r['measured_speedup']:.3f}" if r.get("measured_speedup") is not None else
            "unstable {:.3f}–{:.3f}".format(*(r.get("measured_interval") or (0, 0))),
            f"{r['error']:+.1%}" if r.get("error") is not None else "–",
            f"{r['flops_speedup']:.3f}" if r.get("flops_speedup") is not None else "–", timing]) + " |")
    notes = sorted({n for r in rows for n in r.get("notes", [])})
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    doc = {"gpu": gpu, "model": model, "dtype": dtype, "environment": env, "summary": a,
           "gpu_tests": tests, "rows": rows}
    return "\n".join(lines) + "\n", doc

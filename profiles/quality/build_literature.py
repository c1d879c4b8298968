"""One-off build step: normalise the research table into ``literature.csv``.

Run by hand when the research table changes (pis-tui never runs it and never reads
the research table at run time)::

    python profiles/quality/build_literature.py SOURCE.csv profiles/quality/literature.csv

See README.md beside this file for what each column means and which rows were checked.
"""

from __future__ import annotations

import csv
import re
import sys

FAMILIES = {"dense", "static_depth", "dynamic_depth", "static_width", "static_width_hidden",
            "semi_structured_24", "unstructured", "low_rank", "dynamic_sparse_attention"}

#: parameter counts (billions) of the models the literature rows use
PARAMS_B = {"Llama-3.1-8B": 8.03, "Llama-3.1-8B-Instruct": 8.03, "Llama-3-8B": 8.03,
            "Llama-3-8B-Instruct": 8.03, "Llama-2-7B": 6.74, "Llama-2-13B": 13.0, "LLaMA-7B": 6.74}

#: rows whose figures were compared with the cited source (citation prefix -> what was read)
CHECKED = {
    "locuslab/wanda README": "matches locuslab/wanda README.md @1317b0b (LLaMA-2 table)",
    "OWL repo README": "matches luuyin/OWL README.md @289a966 (70% table)",
    "RIA repo README": "matches Relative-importance-and-activation-pruning Readme.md @32bb115 (LLaMA3-8B table)",
    "microsoft/SeerAttention eval/README.md": "matches microsoft/SeerAttention eval/README.md @0830ff9 (PG19 table)",
}



def _checked(r: dict) -> str:
    src = r["source"]
    if src.startswith("MaskLLM (arXiv:2409.17481, NeurIPS'24) Tab.1") and r["metric_kind"] == "perplexity":
        if r["method"].startswith("MaskLLM"):
            return "dense 5.12 and MaskLLM 6.72 match the arXiv:2409.17481 abstract"
        if r["method"].startswith("SparseGPT"):
            return "10.42 matches a third-party summary of arXiv:2409.17481 (not the paper)"
    return next((v for k, v in CHECKED.items() if src.startswith(k)), "")


OUT_COLUMNS = ["family", "method", "protocol", "model", "params_b", "ratio", "sparsity",
               "metric_kind", "measure", "metric", "dense", "pruned", "quality_loss",
               "reported_gap", "on_curve", "secondary", "uncertain", "citation", "checked", "note"]


def protocol_of(p: str) -> str:
    p = p.strip().lower()
    if p.startswith("trained"):
        return "trained"
    if p in ("lora", "training-free"):
        return p
    return "unknown"


def sparsity_of(ratio: str) -> float:
    r = ratio.strip()
    m = re.search(r"density\s+([\d.]+)%", r)
    if m:
        return round(1.0 - float(m.group(1)) / 100.0, 6)
    m = re.search(r"([\d.]+)\s*%", r)
    if m:
        return round(float(m.group(1)) / 100.0, 6)
    m = re.fullmatch(r"(\d+):(\d+)", r)
    if m:  # N:M keeps N of every M... both 2:4 and 4:8 remove half the weights
        n, mm = int(m.group(1)), int(m.group(2))
        return round((mm - n) / mm, 6)
    raise ValueError(f"cannot read a sparsity from ratio {ratio!r}")


def main(src: str, dst: str) -> None:
    with open(src, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    dropped = 0
    for r in rows:
        fam = r["pis_family"].strip()
        if fam.startswith("other"):
            dropped += 1
            continue
        ratio = r["ratio"].strip()
        note = []
        # the research table filed the Wanda/RIA/SparseGPT 2:4 rows under 'unstructured';
        # a 2:4 pattern is pis-tui's semi_structured_24
        if fam == "unstructured" and ratio.startswith("2:4"):
            fam = "semi_structured_24"
            note.append("filed under unstructured in the research table; a 2:4 pattern")
        assert fam in FAMILIES, fam
        model = r["model"].strip()
        uncertain = "[uncertain]" in r["source"]
        if "[model not stated" in model:
            model = model.split("[")[0].strip()
            uncertain = True
            note.append("model not stated in the summary read")
        secondary = "secondary" in r["source"].lower()
        q = r["relative_loss"].strip()
        dense, pruned = r["dense"].strip(), r["pruned"].strip()
        # check the arithmetic of the research table where both values are given
        if q and dense and pruned:
            d, p = float(dense), float(pruned)
            calc = (d - p) / d if r["metric_kind"] == "accuracy" else (p - d) / d
            if abs(calc - float(q)) > max(5e-4, 1e-3 * abs(calc)):
                raise SystemExit(f"relative_loss mismatch {calc:.4f} vs {q}: {r}")
        on_curve = bool(q)
        if not q:
            note.append("no dense value: the loss cannot be computed")
        method = r["method"].strip()
        src_l = r["source"]
        if src_l.startswith("Beyond FLOPs") and not method.startswith(("static M (", "dynamic M", "static NK",
                                                                          "static K", "dynamic NK")):
            on_curve = False
            note.append("a method behind the study's family mean at this sparsity: shown, not averaged in")
        if ratio.startswith("4:8"):
            on_curve = False
            note.append("4:8 pattern: neither 2:4 nor unstructured; kept for reference")
        if "of attention sublayers" in ratio or "of MLP sublayers" in ratio:
            on_curve = False
            note.append("ratio counts one kind of sublayer only, not the family's parameters")
        if "RULER" in r["metric"]:
            on_curve = False
            note.append("RULER long-context accuracy, not the zero-shot average")
        out.append({
            "family": fam, "method": method, "protocol": protocol_of(r["protocol"]),
            "model": model, "params_b": PARAMS_B[model], "ratio": ratio,
            "sparsity": sparsity_of(ratio), "metric_kind": r["metric_kind"].strip(),
            "measure": r["metric"].strip(),
            "metric": "accuracy_drop" if r["metric_kind"].strip() == "accuracy" else "ppl_increase",
            "dense": dense, "pruned": pruned, "quality_loss": q,
            "reported_gap": r["reported_gap"].strip(),
            "on_curve": str(on_curve).lower(), "secondary": str(secondary).lower(),
            "uncertain": str(uncertain).lower(), "citation": r["source"].strip(),
            "checked": _checked(r),
            "note": "; ".join(note),
        })
    with open(dst, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=OUT_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(out)
    print(f"{len(out)} rows written, {dropped} 'other' rows dropped", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

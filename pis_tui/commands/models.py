"""`pis-tui models`: presets and models in the local Hugging Face cache."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("models", help="list model presets and local HF cache entries")
    p.add_argument("--json", dest="json_out", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from rich.table import Table

    from ..model.spec import hf_cache_models, load_model_spec, preset_names
    from .common import console

    specs = [load_model_spec(n) for n in preset_names()]
    cached = hf_cache_models()
    if args.json_out:
        print(json.dumps({"presets": [s.to_dict() for s in specs], "hf_cache": cached}, indent=2))
        return 0
    t = Table(title="model presets (profiles/models)", title_justify="left")
    for c in ("name", "class", "params", "layers", "hidden", "MLP", "heads", "KV heads", "head_dim", "vocab"):
        t.add_column(c, justify="left" if c in ("name", "class") else "right")
    for s in specs:
        t.add_row(s.name, s.arch_name, f"{s.total_params() / 1e9:.2f}B", str(s.num_layers),
                  str(s.hidden_size), str(s.intermediate_size), str(s.num_heads), str(s.num_kv_heads),
                  str(s.head_dim), str(s.vocab_size))
    con = console()
    con.print(t)
    from ..model.architecture import shipped_types

    con.print("architectures shipped (profiles/architectures): " + ", ".join(shipped_types())
              + "; another decoder type is traced from its transformers class on first use")
    con.print("local Hugging Face cache: " + (", ".join(cached) if cached else "no models found"))
    return 0

"""`pis-tui routing`: run a real mixture-of-experts model (transformers' own class) and record,
per MoE layer, the tokens each expert got in a prefill forward and in decode steps: the
histogram file ``--routing`` reads."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from ..errors import UserError
from .common import check_writable, positive_int


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed must be an integer, got {text!r}") from None
    if not 0 <= v < 2 ** 63:
        raise argparse.ArgumentTypeError(f"--seed must be within 0…2^63−1, got {v}")
    return v


def register(sub) -> None:
    p = sub.add_parser(
        "routing",
        help="record an MoE model's routing (tokens per expert per layer, prefill and decode) "
             "as a --routing histogram",
        description="Runs transformers' own class of an MoE model (real weights from a local "
                    "model directory, else random weights from the config) with grouped_mm "
                    "experts, counts the tokens each expert gets per MoE layer in one prefill "
                    "forward and in decode steps over a KV cache, and writes the "
                    "pis-tui-routing/1 JSON that --routing reads.")
    p.add_argument("--model", "-m", required=True,
                   help="preset name, config.json path, or a local model directory (its weights "
                        "and tokenizer are used when it has them)")
    p.add_argument("--text", metavar="FILE", default=None,
                   help="a UTF-8 text to route (needs the model directory's tokenizer); default: "
                        "seeded random token ids")
    p.add_argument("--layers", type=positive_int("--layers"), default=None, metavar="N",
                   help="only the first N decoder layers (memory; default all)")
    p.add_argument("--prompt-len", type=positive_int("--prompt-len"), default=512, metavar="L",
                   help="prefill tokens per sequence (default 512)")
    p.add_argument("--batch", type=positive_int("--batch"), default=1, metavar="B",
                   help="prefill sequences (default 1)")
    p.add_argument("--decode-batch", type=positive_int("--decode-batch"), default=16, metavar="B",
                   help="decode sequences, one token each per step (default 16)")
    p.add_argument("--decode-steps", type=positive_int("--decode-steps"), default=4, metavar="S",
                   help="decode steps recorded (default 4)")
    p.add_argument("--decode-prompt-len", type=positive_int("--decode-prompt-len"), default=32,
                   metavar="P", help="each decode sequence's prompt, in the KV cache first and "
                                     "not counted (default 32)")
    p.add_argument("--phase", choices=("prefill", "decode", "both"), default="both")
    p.add_argument("--seed", type=_seed, default=0, metavar="S",
                   help="seed of the random weights and token ids (default 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model runs (auto: CUDA if available)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                   help="fp32 (CPU default) or bf16 (CUDA default), fp16")
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="the histogram .json to write")
    p.set_defaults(func=run)


def _read_text(path: str) -> tuple[str, str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"--text {p}: no such file" if not p.exists() else f"--text {p}: not a file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UserError(f"--text {p}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--text {p}: not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise UserError(f"--text {p}: the text is empty")
    return text, hashlib.sha256(raw).hexdigest()[:12]


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    return name


def _check_memory(raw: dict, name: str, dtype: str, device: str, args) -> None:
    """Refuse (one line) a model that would not fit: its weights and the prefill's activations
    against the memory available now."""
    from ..model.ops import dtype_bytes
    from ..model.spec import spec_from_config
    from ..validation.memory_check import HEADROOM, available_bytes

    spec = spec_from_config(raw, name, allow_trace=False, with_architecture=False)
    tokens = max(args.batch * args.prompt_len if args.phase != "decode" else 0,
                 args.decode_batch * args.decode_prompt_len if args.phase != "prefill" else 0)
    # weights, plus a few [tokens, hidden]/[tokens, expert width × k] activations (fp32 routing)
    need = spec.total_params() * dtype_bytes(dtype) + 64 * tokens * spec.hidden_size * 4
    have, where = available_bytes(device)
    if need > HEADROOM * have:
        gb = 1024 ** 3
        raise UserError(f"{name}: {spec.num_layers} layers need about {need / gb:.1f} GiB, "
                        f"{have / gb:.1f} GiB is available ({where}): lower --layers")


def _ids(args, vocab: int, tokenizer, text_path):
    """(prefill ids [B, L] or None, decode prompts [B, P] or None, the 'text' field)."""
    import torch

    from ..hf.routing_record import random_ids

    want_p, want_d = args.phase != "decode", args.phase != "prefill"
    B, L, Db, P = args.batch, args.prompt_len, args.decode_batch, args.decode_prompt_len
    if text_path is None:
        pre = random_ids((B, L), vocab, args.seed) if want_p else None
        dec = random_ids((Db, P), vocab, args.seed + 1) if want_d else None
        parts = ([f"prefill {B} × {L}"] if want_p else []) + \
                ([f"decode prompts {Db} × {P}"] if want_d else [])
        return pre, dec, f"random token ids (seed {args.seed}): " + ", ".join(parts)
    text, digest = _read_text(text_path)
    from ..hf.perplexity import tokenize

    ids = tokenize(tokenizer, text)
    n = len(ids)
    if want_p and n < B * L:
        raise UserError(f"--text {text_path}: {n} tokens; --batch {B} × --prompt-len {L} needs "
                        f"{B * L}")
    if want_d and n < P:
        raise UserError(f"--text {text_path}: {n} tokens; --decode-prompt-len {P} needs {P}")
    if max(ids) >= vocab:
        raise UserError(f"--text {text_path}: the tokenizer gives id {max(ids)}, beyond the "
                        f"model's {vocab} embeddings")
    t = torch.tensor(ids, dtype=torch.long)
    pre = t[: B * L].view(B, L) if want_p else None
    dec = None
    if want_d:  # the prompts spread evenly over the text
        offs = [round(i * (n - P) / max(Db - 1, 1)) for i in range(Db)]
        dec = torch.stack([t[o:o + P] for o in offs])
    parts = ([f"prefill {B} × {L} from its start"] if want_p else []) + \
            ([f"decode prompts {Db} × {P} spread over it"] if want_d else [])
    return pre, dec, (f"file {Path(text_path).name} (sha256 {digest}…), {n} tokens: "
                      + ", ".join(parts))


def run(args) -> int:
    import os
    import sys

    from ..hf import routing_record as rr

    check_writable(args.out)
    if args.text is not None:
        _read_text(args.text)  # bad input before anything is built
    model_ref = str(args.model).strip()
    mdir = Path(model_ref).expanduser()
    pretrained = rr.has_weights(mdir)
    raw, spec = rr.moe_config_dict(model_ref, args.layers)
    tokenizer = None
    if args.text is not None:
        if not rr.has_tokenizer(mdir):
            raise UserError(f"--text needs the model's tokenizer: {model_ref} has none (a local "
                            "model directory with tokenizer.json…); leave --text out for seeded "
                            "random token ids")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(mdir), local_files_only=True)
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds here
            raise UserError(f"{mdir}: cannot load the tokenizer offline "
                            f"({rr._first_line(e)})") from None
    device = _device(args.device)
    dtype = args.dtype or ("bf16" if device == "cuda" else "fp32")
    _check_memory(raw, spec.name, dtype, device, args)
    total = spec.num_layers
    kept = raw.get("num_hidden_layers", total)
    layers_note = f", {kept} of {total} layers" if kept != total else ""
    if pretrained:
        model = rr.load_pretrained(mdir, layers=args.layers, dtype=dtype, device=device)
        source = f"weights from {mdir}{layers_note}"
    else:
        model = rr.build_random(raw, seed=args.seed, dtype=dtype, device=device)
        source = f"random weights (seed {args.seed}){layers_note}"
    vocab = int(model.get_input_embeddings().weight.shape[0])
    pre, dec, text = _ids(args, vocab, tokenizer, args.text)
    data = rr.record(model, prefill_ids=pre, decode_prompts=dec, decode_steps=args.decode_steps,
                     model_name=spec.name if not pretrained else model_ref,
                     source=f"recorded from transformers' {type(model).__name__} "
                            f"({rr.EXPERTS_IMPL} experts, {dtype}, {device}): {source}",
                     text=text)
    rr.write(data, args.out)
    for name, ph in data["phases"].items():
        print(rr.summary_line(name, ph))
    print(f"wrote {args.out}: {data['moe_layers']} MoE layers × {data['experts']} experts, "
          f"top-{data['top_k']}", file=sys.stderr)
    return 0

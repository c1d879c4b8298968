"""The serving scenario: how big prefill and decode are, in which dtype, which execution
profile (``engine``: how the serving stack launches each op's kernels, pis_tui.pricing.engines), and
over how many GPUs of one node (``tp``: tensor parallelism, pis_tui.model.tensor_parallel)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .ops import DTYPE_BYTES
from .quant_formats import get as quant_format

#: the engines (profiles/kernels/<name>.json; pis_tui.pricing.engines reads them)
ENGINES = ("eager", "fused")

PHASES = ("prefill", "decode")


@dataclass(frozen=True)
class Scenario:
    prefill_batch: int = 1
    prompt_len: int = 1024
    decode_batch: int = 16
    context_len: int = 1024
    dtype: str = "bf16"
    engine: str = "eager"
    #: tensor parallelism: the ranks (GPUs of one node) the model is split over; the op lists
    #: are then one rank's (see :mod:`pis_tui.model.tensor_parallel`).  After ``engine``: pass it by
    #: keyword (a sixth positional argument is the engine)
    tp: int = 1
    #: how an MoE model's tokens spread over its experts (:func:`pis_tui.model.moe.routing`):
    #: ``balanced``, ``powerlaw:<alpha>`` or a histogram file; a dense model ignores it
    routing: str = "balanced"
    #: the precision the model is served in (:mod:`pis_tui.model.precision`): a quantized
    #: format's canonical name (``fp8-row``, ``int4-g128``, ``mxfp4``…) or "" (unquantized: the
    #: dtype).  ``dtype`` stays the activation dtype (what a measurement runs its inputs in)
    precision: str = ""
    #: tokens each sequence feeds one decode forward: 1, or a speculative verification's γ + 1
    #: (the dense model checks γ drafted tokens and computes one more in one pass:
    #: :mod:`pis_tui.decide.speculative`); its attention reads the context and those tokens
    decode_tokens: int = 1

    def __post_init__(self) -> None:
        for name in ("prefill_batch", "prompt_len", "decode_batch", "context_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise UserError(f"{name.replace('_', ' ')} must be a positive integer, got {v!r}")
            if v > 1 << 20:
                raise UserError(f"{name.replace('_', ' ')} {v} is too large (at most {1 << 20})")
        if self.dtype not in DTYPE_BYTES:
            raise UserError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPE_BYTES)}")
        if self.engine not in ENGINES:
            raise UserError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        from .tensor_parallel import check_degree

        check_degree(self.tp)
        if not isinstance(self.decode_tokens, int) or isinstance(self.decode_tokens, bool) \
                or not 1 <= self.decode_tokens <= 64:
            raise UserError(f"decode tokens must be a whole number from 1 to 64, got {self.decode_tokens!r}")
        if self.precision and quant_format(self.precision) is None:
            raise UserError(f"unknown precision {self.precision!r} (a quantized format's canonical "
                            "name: fp8-row, fp8-tensor, int4-g128, mxfp4…)")
        r = self.routing
        if not isinstance(r, str) or not (r == "balanced" or r.startswith("powerlaw:")
                                           or r.endswith(".json")):
            raise UserError(f"unknown routing {r!r}: balanced, powerlaw:<alpha> or a histogram .json file")

    def batch(self, phase: str) -> int:
        return self.prefill_batch if phase == "prefill" else self.decode_batch

    def to_dict(self) -> dict:
        return {
            "prefill": {"batch": self.prefill_batch, "prompt_len": self.prompt_len},
            "decode": {"batch": self.decode_batch, "context_len": self.context_len},
            "dtype": self.dtype,
            "engine": self.engine,
            "tp": self.tp,
            "routing": self.routing,
            "precision": self.served,
        }

    @property
    def served(self) -> str:
        """The served precision's name: the quantized format's, else the dtype."""
        return self.precision or self.dtype

    def label(self, phase: str) -> str:
        tp = f" · TP {self.tp}" if self.tp > 1 else ""
        if self.precision:
            tp += f" · {self.precision}"
        if phase == "prefill":
            return f"prefill {self.prefill_batch}×{self.prompt_len}{tp}"
        return f"decode batch {self.decode_batch} @ {self.context_len}{tp}"


def check_phase(phase: str) -> str:
    if phase not in PHASES:
        raise UserError(f"unknown phase {phase!r}; choose prefill or decode")
    return phase

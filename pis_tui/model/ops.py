"""The op vocabulary of a transformer forward pass: what the taxonomy produces,
what timing measures, what the estimator prices and what the cache keys on.

Tensor parallelism (``Scenario.tp``) makes the op list one rank's: GEMMs of its shards and the
:class:`Collective` s that join them (all-reduce, all-gather), priced by
:mod:`pis_tui.pricing.collectives` and measured through torch.distributed (:mod:`pis_tui.timing.collectives`).

Pure data: no torch, no I/O. Every op is a small frozen dataclass with

* ``count``  – how many times it runs in the phase (layers × per-layer uses);
  fractional counts are expected values (dynamic depth at batch 1 in decode);
* ``flops()`` / ``bytes()`` – work and minimum memory traffic of ONE call;
* ``key()`` – a stable string identifying the kernel call (shape, dtype, kind)
  without ``count``, used to dedupe and to key measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Union

from .quant_formats import get as quant_format

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}

#: GEMM kinds.  ``unstructured`` has zeros in the weights but runs through the dense
#: kernel; ``sparse_24`` is a 2:4 semi-structured sparse GEMM (half the MACs).
GEMM_KINDS = ("dense", "sparse_24", "unstructured")

#: memory-bound ops and the routing/selection ops; see ``Elementwise.bytes``.
ELEMENTWISE_KINDS = (
    "rmsnorm",       # read x[rows,width] + weight, write y
    "rotary",        # read q/k [rows,width] + cos/sin, write back
    "silu_mul",      # read gate,up [rows,width], write [rows,width]
    "residual_add",  # read a,b [rows,width], write [rows,width]
    "bias_add",      # read x [rows,width] + bias, write
    "embedding",     # gather rows of an embedding table of `width` columns
    "kv_write",      # copy new k/v [rows,width] into the KV cache
    "topk",          # top-k along `width` for each of `rows` (k in `extra`)
    "gather",        # gather `rows` of width `width` (token routing)
    "scatter",       # scatter-add `rows` of width `width` back into the residual
    "block_pool",    # mean-pool q/k [rows,width] into blocks (block-sparse gating)
    "layernorm",     # LayerNorm: read x[rows,width] + weight/bias, write y
    "act",           # an ungated activation (ReLU, GELU…; `extra`: its index in ACTIVATIONS)
    "act_mul",       # a gated activation other than SiLU: act(gate)·up (`extra` as for act)
    "scale",         # x·c (Gemma's embedding scale)
    "softcap",       # c·tanh(x/c) (Gemma 2's final logit soft-cap)
    "act_quant",     # W8A8: x [rows,width] → fp8 and a scale per row (`extra` 0: dynamic
                     # per-token absmax, then the cast; 1: a static per-tensor scale, the cast)
)

#: activation functions of the ``act`` / ``act_mul`` kinds, by ``Elementwise.extra``
ACTIVATIONS = ("silu", "relu", "gelu", "gelu_tanh", "quick_gelu", "sigmoid")


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class Gemm:
    """Y[M,N] = X[M,K] · Wᵀ[K,N]."""

    name: str
    m: int
    n: int
    k: int
    count: float = 1.0
    dtype: str = "bf16"
    kind: str = "dense"
    density: float = 1.0  # share of non-zero weights (1 dense, 0.5 for 2:4)
    #: tensor parallelism: how many distinct shards of this weight the ranks hold together
    #: (a column- or row-parallel linear: the degree; KV heads replicated over the ranks:
    #: fewer; a weight every rank holds whole: 1).  Not part of the kernel (``key``): a rank
    #: runs the GEMM of its shard.  The model's parameters are the shard's times this.
    shards: int = 1
    #: the served precision of a quantized weight (:mod:`pis_tui.model.precision`: ``fp8-row``,
    #: ``int4-g128``, ``mxfp4``…); "" runs in ``dtype``.  In the key, with the measuring kernel
    quant: str = ""
    op_type: str = field(default="gemm", init=False)

    def flops(self) -> float:
        """Nominal FLOPs of one call (what the dense kernel executes)."""
        return 2.0 * self.m * self.n * self.k

    def effective_flops(self) -> float:
        """FLOPs left after pruning (what a FLOPs count predicts)."""
        return self.flops() * self.density

    def weight_nbytes(self) -> float:
        """Bytes of the weight as stored (:func:`stored_weight_bytes`)."""
        return stored_weight_bytes(self.quant, self.kind, self.n, self.k, dtype_bytes(self.dtype))

    def bytes(self) -> float:
        b = dtype_bytes(self.dtype)
        return self.weight_nbytes() + self.m * self.k * _input_bytes(self.quant, b) + self.m * self.n * b

    def key(self) -> str:
        return f"gemm:{self.kind}:{self.dtype}:{_quant_key(self.quant)}{self.m}x{self.n}x{self.k}"

    def shape(self) -> str:
        return f"M={self.m} N={self.n} K={self.k}"


@dataclass(frozen=True)
class GroupedGemm:
    """The routed experts of an MoE layer as one grouped GEMM: for each expert a token was
    routed to, Y[M_e, N] = X[M_e, K]·W_eᵀ (:mod:`pis_tui.model.moe`).

    ``groups`` is the expected number of distinct experts the step touches (their weights are
    read), ``rows`` the routed rows Σ M_e = T·k, ``padded_rows`` what a kernel that pads each
    expert's rows to its tile computes.  All of them resident: ``experts`` is E (the weights the
    model holds, :func:`pis_tui.model.layer.gemm_params` counts them all)."""

    name: str
    experts: int
    groups: float
    rows: float
    padded_rows: float
    n: int
    k: int
    count: float = 1.0
    dtype: str = "bf16"
    kind: str = "dense"
    density: float = 1.0
    shards: int = 1
    top_k: int = 0  # experts per token (shown; rows = tokens × top_k)
    #: what a measurement needs to draw real steps (:mod:`pis_tui.timing.grouped`): the step's
    #: tokens T, the routing's id (:attr:`pis_tui.model.moe.Routing.id`) and its per-layer
    #: shares (left out of equality: the id names them)
    tokens: int = 0
    routing: str = ""
    shares: tuple = field(default=(), compare=False, repr=False)
    #: dynamic top-k: each token's k drawn from ((k, probability), …); empty: every token top_k
    k_dist: tuple = ()
    quant: str = ""  # as :attr:`Gemm.quant`
    op_type: str = field(default="grouped_gemm", init=False)

    def __post_init__(self):
        # from a measurement's JSON (op_from_dict): lists back to tuples
        if self.shares and not isinstance(self.shares[0], tuple):
            object.__setattr__(self, "shares", tuple(tuple(x) for x in self.shares))
        if not isinstance(self.k_dist, tuple) or (self.k_dist and not isinstance(self.k_dist[0], tuple)):
            object.__setattr__(self, "k_dist", tuple((int(a), float(b)) for a, b in self.k_dist))
        if not isinstance(self.shares, tuple):
            object.__setattr__(self, "shares", tuple(self.shares))

    @property
    def k_label(self) -> str:
        """``8``, or a distribution of k: ``6:0.5/8:0.5``."""
        if not self.k_dist:
            return str(self.top_k)
        return "/".join(f"{k}:{p:.4g}" for k, p in self.k_dist)

    def flops(self) -> float:
        """FLOPs the kernel executes: the padded rows' (the pad rows are computed too)."""
        return 2.0 * self.padded_rows * self.n * self.k

    def effective_flops(self) -> float:
        return 2.0 * self.rows * self.n * self.k

    def weight_nbytes(self) -> float:
        """Bytes of ONE expert's weight as stored (:func:`stored_weight_bytes`)."""
        return stored_weight_bytes(self.quant, self.kind, self.n, self.k, dtype_bytes(self.dtype))

    def bytes(self) -> float:
        b = dtype_bytes(self.dtype)
        return (self.groups * self.weight_nbytes() + self.rows * self.k * _input_bytes(self.quant, b)
                + self.rows * self.n * b)

    def key(self) -> str:
        """A grouped shape is a vector of rows per expert, drawn from the routing: the key names
        what the vectors are drawn from (E, k, T tokens, the routing's id), not one vector; a
        measurement is the mean over several drawn steps (:mod:`pis_tui.timing.grouped`)."""
        q = _quant_key(self.quant)
        if self.tokens:
            return (f"ggemm:{self.kind}:{self.dtype}:{q}E{self.experts}:k{self.k_label}:T{self.tokens}:"
                    f"{self.routing}:{self.n}x{self.k}")
        return (f"ggemm:{self.kind}:{self.dtype}:{q}E{self.experts}:g{self.groups:.3f}:"
                f"r{self.rows:.1f}:p{self.padded_rows:.1f}:{self.n}x{self.k}")

    def shape(self) -> str:
        per = self.rows / self.groups if self.groups else 0.0
        k = f" k={self.k_label}" if self.top_k else ""
        return (f"E={self.experts}{k} touched={self.groups:.1f} rows={self.rows:g} "
                f"(≈{per:.1f}/expert) N={self.n} K={self.k}")


@dataclass(frozen=True)
class Attention:
    """Scaled-dot-product attention of one layer (all heads of all sequences)."""

    name: str
    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    causal: bool = True
    block_density: float = 1.0  # share of attention blocks computed (block-sparse)
    block_size: int = 64
    count: float = 1.0
    dtype: str = "bf16"
    #: sliding-window attention: each query sees at most this many keys (0: no window); a
    #: kernel with window support computes only those, one with a mask (eager SDPA) all of them
    window: int = 0
    #: logit soft-capping (Gemma 2): c·tanh(s/c) on the scores, which eager attention
    #: materialises (transformers runs such a model with its eager attention)
    softcap: bool = False
    op_type: str = field(default="attention", init=False)

    def _pairs(self) -> float:
        """Query-key pairs actually computed (causal halves a square prefill)."""
        if self.causal and self.q_len > 1:
            # query i (offset kv_len - q_len) sees kv_len - q_len + i + 1 keys
            off = self.kv_len - self.q_len
            pairs = self.q_len * off + self.q_len * (self.q_len + 1) / 2
            if self.window and self.window < self.kv_len:
                # ... of which at most `window`: sum over i of min(window, off + i + 1)
                w, q = self.window, self.q_len
                uncapped = min(q, max(0, w - off - 1))  # queries that see fewer than w keys
                pairs = uncapped * off + uncapped * (uncapped + 1) / 2 + (q - uncapped) * w
        else:
            pairs = float(self.q_len * min(self.kv_len, self.window or self.kv_len))
        return pairs * self.block_density

    def kv_read(self) -> int:
        """Keys each sequence's step reads in decode (the window, where there is one)."""
        return min(self.kv_len, self.window) if self.window else self.kv_len

    def flops(self) -> float:
        # QKᵀ and PV: 2 GEMMs of 2·d FLOPs per pair and head
        return 4.0 * self.batch * self.q_heads * self.head_dim * self._pairs()

    def effective_flops(self) -> float:
        return self.flops()

    def bytes(self) -> float:
        b = dtype_bytes(self.dtype)
        q_o = 2 * self.batch * self.q_heads * self.q_len * self.head_dim * b
        kv = 2 * self.batch * self.kv_heads * self.kv_read() * self.head_dim * b
        return q_o + kv * (self.block_density if self.q_len == 1 else 1.0)

    def key(self) -> str:
        return (
            f"attn:{self.dtype}:b{self.batch}:h{self.q_heads}/{self.kv_heads}:"
            f"q{self.q_len}:kv{self.kv_len}:d{self.head_dim}:"
            f"{'causal' if self.causal else 'full'}:bd{self.block_density:.4f}:bs{self.block_size}"
            + (f":w{self.window}" if self.window else "") + (":softcap" if self.softcap else "")
        )

    def shape(self) -> str:
        s = (f"B={self.batch} H={self.q_heads}/{self.kv_heads} q={self.q_len} "
             f"kv={self.kv_len} d={self.head_dim}")
        if self.block_density < 1.0:
            s += f" blocks={self.block_density:.0%}"
        if self.window:
            s += f" window={self.window}"
        if self.softcap:
            s += " softcap"
        return s


@dataclass(frozen=True)
class Elementwise:
    """A memory-bound or routing op over a [rows, width] activation."""

    name: str
    kind: str
    rows: int
    width: int
    count: float = 1.0
    dtype: str = "bf16"
    extra: int = 0  # topk: k; embedding: vocab size; rotary: head_dim
    op_type: str = field(default="elementwise", init=False)

    def flops(self) -> float:
        per = {"rmsnorm": 4, "rotary": 6, "silu_mul": 5, "residual_add": 1, "bias_add": 1,
               "topk": 2, "block_pool": 1, "scatter": 1, "layernorm": 7, "act": 4, "act_mul": 5,
               "scale": 1, "softcap": 3, "act_quant": 3}.get(self.kind, 0)
        return float(per * self.rows * self.width)

    def effective_flops(self) -> float:
        return self.flops()

    def bytes(self) -> float:
        b = dtype_bytes(self.dtype)
        n = self.rows * self.width * b
        if self.kind == "act_quant":
            # read x (twice when the per-token absmax is a pass of its own), write fp8 + scales
            reads = 2 if self.extra == 0 else 1
            return n * reads + self.rows * self.width * 1 + self.rows * 4
        reads_writes = {
            "rmsnorm": 2, "rotary": 2, "silu_mul": 3, "residual_add": 3, "bias_add": 2,
            "embedding": 2, "kv_write": 2, "topk": 1, "gather": 2, "scatter": 3,
            "block_pool": 1, "layernorm": 2, "act": 2, "act_mul": 3, "scale": 2, "softcap": 2,
        }[self.kind]
        return n * reads_writes

    def key(self) -> str:
        return f"ew:{self.kind}:{self.dtype}:{self.rows}x{self.width}:e{self.extra}"

    def shape(self) -> str:
        s = f"rows={self.rows} width={self.width}"
        if self.kind == "topk":
            s += f" k={self.extra}"
        if self.kind in ("act", "act_mul") and 0 <= self.extra < len(ACTIVATIONS):
            s += f" {ACTIVATIONS[self.extra]}"
        return s


#: host-side (eager framework) overhead kinds; see :class:`Overhead`
OVERHEAD_KINDS = (
    "forward",   # once per forward: model entry, rotary tables, cache bookkeeping, logits
    "block",     # per attention or MLP block run: the Python of the block's modules and glue
    "linear",    # per nn.Linear module call (beyond the GEMM kernel itself)
    "routing",   # per routed sublayer (dynamic depth): router scores, index sort/arange glue
)


@dataclass(frozen=True)
class Overhead:
    """Eager framework overhead: time the host spends outside the kernels of the op list
    (Python module calls, dispatch, shape glue), which a sum of kernel timings cannot see.

    ``count`` is the number of such calls in the phase (the taxonomy counts blocks, linears,
    routed sublayers, forwards).  It moves no data and does no FLOPs.  Devices whose
    measurements are taken through CUDA graphs (GPU profiles, ``cuda-graph`` tables) price it
    at zero: a graph replay has no host overhead, the way serving engines run.  On the CPU
    (eager) it is priced from a measured probe (``pis_tui.validation.probe.dispatch_probe``: tiny
    clones of the model whose run time is almost all overhead) stored in the cache as
    measurements of the keys below.
    """

    name: str
    kind: str
    phase: str = "decode"
    count: float = 1.0
    dtype: str = "bf16"
    op_type: str = field(default="overhead", init=False)

    def flops(self) -> float:
        return 0.0

    def effective_flops(self) -> float:
        return 0.0

    def bytes(self) -> float:
        return 0.0

    def key(self) -> str:
        return f"ovh:{self.kind}:{self.phase}:{self.dtype}"

    def shape(self) -> str:
        return f"{self.kind} ({self.phase})"


#: collective kinds (tensor parallelism) and their ring factors: the share of the message each
#: rank sends over its link (nccl-tests' "busbw" factor): an all-reduce (reduce-scatter then
#: all-gather) 2(n−1)/n, an all-gather (n−1)/n
COLLECTIVE_KINDS = ("all_reduce", "all_gather")


def ring_factor(kind: str, world: int) -> float:
    """Bytes a rank moves over its link per byte of the message, for a ring over ``world``."""
    if world <= 1:
        return 0.0
    if kind == "all_reduce":
        return 2.0 * (world - 1) / world
    if kind == "all_gather":
        return (world - 1) / world
    raise ValueError(f"unknown collective {kind!r}; known: {', '.join(COLLECTIVE_KINDS)}")


@dataclass(frozen=True)
class Collective:
    """A collective over the ``world`` ranks of a tensor-parallel group (torch.distributed:
    NCCL on GPUs, gloo on the CPU).

    ``elems`` is the message: the elements of the tensor every rank holds when it is done (an
    all-reduce of M × hidden: M·hidden; an all-gather of the lm_head's logits: batch × the
    padded vocabulary).  ``bytes()`` is that tensor's size, what the cache keys measurements
    by; ``bus_bytes()`` what each rank sends over its link in a ring (× :func:`ring_factor`).
    No FLOPs (the additions of a reduction are not GEMM work)."""

    name: str
    kind: str
    elems: int
    world: int
    count: float = 1.0
    dtype: str = "bf16"
    op_type: str = field(default="collective", init=False)

    def flops(self) -> float:
        return 0.0

    def effective_flops(self) -> float:
        return 0.0

    def bytes(self) -> float:
        return float(self.elems * dtype_bytes(self.dtype))

    def bus_bytes(self) -> float:
        return self.bytes() * ring_factor(self.kind, self.world)

    def key(self) -> str:
        return f"coll:{self.kind}:{self.dtype}:w{self.world}:{self.elems}"

    def shape(self) -> str:
        return f"{self.kind} {_size(self.bytes())} over {self.world} ranks"


def _size(b: float) -> str:
    for unit, f in (("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if b >= f:
            return f"{b / f:.4g} {unit}"
    return f"{b:.0f} B"


Op = Union[Gemm, GroupedGemm, Attention, Elementwise, Overhead, Collective]


def op_from_dict(d: dict) -> Op:
    """Inverse of ``dataclasses.asdict`` for ops (used by the measuring subprocess)."""
    d = dict(d)
    t = d.pop("op_type")
    cls = {"gemm": Gemm, "grouped_gemm": GroupedGemm, "attention": Attention,
           "elementwise": Elementwise, "overhead": Overhead, "collective": Collective}[t]
    return cls(**d)


def _quant_key(quant: str) -> str:
    """A quantized GEMM's part of the key: its precision and the kernel a measurement runs
    (``int4-g128@int4pack_mm:``); "" for an unquantized one (keys unchanged)."""
    if not quant:
        return ""
    p = quant_format(quant)
    return f"{quant}@{p.kernel or 'none'}:" if p is not None else f"{quant}:"


def stored_weight_bytes(quant: str, kind: str, n: int, k: int, b: int) -> float:
    """Bytes of an [N, K] weight as its kernel reads it: ``b`` bytes a value, or the quantized
    format's (scales and zeros included); 2:4 keeps half the values plus 2-bit metadata per
    kept value."""
    if quant:
        p = quant_format(quant)
        if p is None:
            raise ValueError(f"unknown precision {quant!r}")
        w = p.weight_nbytes(n, k)
        return w * 0.5 + n * k * 0.5 * 0.25 if kind == "sparse_24" else w
    if kind == "sparse_24":
        return n * k * b * 0.5 + n * k * 0.5 * 0.25
    return float(n * k * b)


def _input_bytes(quant: str, b: int) -> int:
    """Bytes of one input value: 1 under W8A8 (quantized before the GEMM), else ``b``."""
    if quant:
        p = quant_format(quant)
        if p is not None and p.act_quant:
            return 1
    return b


def kernel_of(op: Op, *, sparse_24: bool = True) -> Op:
    """The kernel call that really runs for an op: the one place that says so (the estimator
    prices it, profiling measures it, validation times it).  An unstructured GEMM runs the dense
    GEMM (zeros in the weights change no kernel), and so does a 2:4 GEMM on a device without
    2:4 kernels (``sparse_24=False``); every other op is its own kernel."""
    if isinstance(op, Gemm) and (op.kind == "unstructured" or (op.kind == "sparse_24" and not sparse_24)):
        return replace(op, kind="dense", density=1.0)
    return op


def measuring_form(op: Op) -> Op:
    """The kernel call timed for an op: one call (count 1) of :func:`kernel_of` (the key
    ignores names; a GEMM's shards are one rank's kernel all the same)."""
    k = replace(kernel_of(op), count=1.0)
    if isinstance(k, GroupedGemm) and k.tokens and k.shares:
        # timed at the routing's profile (moe.measured_profile): its own law's experts touched
        # and rows, which the estimator scales to the step's own by the roofline
        from .moe import Routing, mean_step

        st = mean_step(k.tokens, k.top_k, Routing(k.routing, k.shares, k.routing), k_dist=k.k_dist)
        return replace(k, name="grouped", groups=st.distinct, rows=st.routed_rows,
                       padded_rows=st.routed_rows, shards=1)
    if isinstance(k, Attention) and (k.window or k.softcap):
        # the local device times torch's SDPA: a window is a mask (every pair computed) and the
        # estimator adds soft-capping's score passes itself
        k = replace(k, window=0, softcap=False)
    return replace(k, shards=1) if isinstance(k, Gemm) and k.shards != 1 else k


# ------------------------------------------------------------------ the order of work

def alignment(x: int) -> int:
    """The largest power of two dividing x, up to 8 (kernels vectorise on multiples of 8
    elements: 16 bytes of bf16)."""
    return min(x & -x, 8) if x > 0 else 1


def work_shape(op: dict) -> Optional[tuple]:
    """(class, dims, alignments) of an op (its dict: ``dataclasses.asdict`` or a measurement's):
    the order in which one kernel does no more work than another of its class (every dim ≤)
    and so is not slower, unless it is less aligned (every alignment must be ≥).  One rule
    for the consistency check of measurements (:mod:`pis_tui.profiling.rounds`) and for
    comparing two op lists (:mod:`pis_tui.decide.compare`).  None: an op it does not order."""
    t = op.get("op_type")
    if t == "gemm":
        # M's alignment too: a CPU GEMM blocks M into register tiles, and an M off the tile
        # runs a remainder path (MKL fp32 here: M = 12 rows 1.37× slower than M = 16; dynamic
        # depth's gathered rows are such Ms), so a less aligned M may be slower, not wrong
        return (("gemm", op.get("kind"), op.get("dtype"), op.get("density"), op.get("quant", "")),
                (op["m"], op["n"], op["k"]), (alignment(op["m"]), alignment(op["n"]), alignment(op["k"])))
    if t == "grouped_gemm" and op.get("tokens"):
        # the same experts, top-k and routing: more tokens, a wider or deeper expert is more work
        kd = tuple(tuple(x) for x in op.get("k_dist") or ())
        return (("ggemm", op.get("kind"), op.get("dtype"), op["experts"], op["top_k"], kd, op["routing"],
                 op.get("quant", "")),
                (op["tokens"], op["n"], op["k"]), (alignment(op["n"]), alignment(op["k"])))
    if t == "attention":
        return (("attn", op.get("dtype"), op.get("causal"), op["q_len"] == 1,
                 op.get("block_density", 1.0) < 1.0, op["head_dim"]),
                (op["batch"], op["q_heads"], op["kv_heads"], op["q_len"], op["kv_len"],
                 op.get("block_density", 1.0)), ())
    if t == "elementwise":
        sized = op["kind"] in ("gather", "scatter", "kv_write", "topk")
        return (("ew", op["kind"], op.get("dtype")) + (() if sized else (op.get("extra", 0),)),
                (op["rows"], op["width"]) + ((op.get("extra", 0),) if sized else ()), ())
    return None

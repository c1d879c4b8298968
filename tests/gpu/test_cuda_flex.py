"""On a CUDA GPU: block-sparse attention through compiled FlexAttention, prefill and decode,
with the tiles flex_kernel_options gives this device: no labelled fallback, the reference
matched, and sparser masks faster."""

import pytest

torch = pytest.importorskip("torch")

from pis_tui import timing  # noqa: E402
from pis_tui.model.ops import Attention  # noqa: E402
from pis_tui.timing.attention import flex_kernel_options  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def ctx(device_ctx):
    return device_ctx


def _bs(q_len, kv_len, batch, density):
    return Attention("bs", batch, 32, 8, q_len, kv_len, 128, block_density=density, block_size=64,
                     dtype="bf16")


def test_tiles_for_this_device_divide_the_blocks(ctx):
    o = flex_kernel_options(ctx.capability, "bf16", 128, 64, 1024, 4)
    assert 64 % o["BLOCK_M"] == 0 and 64 % o["BLOCK_N"] == 0


@pytest.mark.parametrize("q_len,kv_len,batch", [(1024, 1024, 1), (1, 1024, 16)],
                         ids=["prefill", "decode"])
def test_flex_block_sparse_compiles_matches_and_is_faster_when_sparser(ctx, q_len, kv_len, batch):
    # the reference check at the timed shape (one compiled kernel per shape; densities share it)
    err, tol = timing.verify_op(_bs(q_len, kv_len, batch, 0.5), ctx)
    assert err < tol, (err, tol)
    times = {}
    for d in (0.25, 0.75):
        m = timing.measure_op(_bs(q_len, kv_len, batch, d), ctx)
        assert m.status == "ok", m.note
        assert "flex-compile failed" not in m.note and "flex_attention block-sparse" in m.note, m.note
        assert "tiles " in m.note and "graph capture failed" not in m.note, m.note
        assert m.ms < m.eager_ms, (m.ms, m.eager_ms)
        times[d] = m.ms
    assert times[0.25] < times[0.75], times

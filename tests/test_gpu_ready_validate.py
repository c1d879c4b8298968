"""validate's CUDA-graph logic on the CPU: prefill runs without a KV cache (no work the
prediction did not price, and capturable), a failed capture is flagged on the row (field,
JSON, CLI table) and makes both models run eager, rows are kept as they come."""

import json

import pytest

torch = pytest.importorskip("torch")

from pis_tui.families import phase_ops as tx
from pis_tui.families.strategy import Strategy  # noqa: E402
from pis_tui import validation as v  # noqa: E402
from pis_tui.validation import compare  # noqa: E402

TINY = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True,
        "_name": "tiny-qwen"}


def test_prefill_runs_without_a_kv_cache_and_keeps_the_last_logits():
    b = v.build_model(dict(TINY), Strategy("dense"))
    run = v.PhaseRun(b, "prefill", 2, 24)
    run.prepare()
    assert run.capture == "eager" and not run.use_graph  # the CPU
    with torch.inference_mode():
        out = run._fn()
    assert tuple(out.logits.shape) == (2, 1, 256)
    assert getattr(out, "past_key_values", None) is None  # no cache written: no kv_write priced
    # the prediction's prefill has no kv_write either
    po = tx.build_phase_ops(b.spec, Strategy("dense"),
                            tx.Scenario(prefill_batch=2, prompt_len=24, dtype="fp32"), "prefill")
    assert not any(o.name == "kv_write" for o in po.ops)


@pytest.fixture
def roofline_ops(monkeypatch):
    """Predictions from the roofline alone: these tests check validate's bookkeeping, not the
    op timings (measuring them on the CPU takes tens of seconds)."""
    monkeypatch.setattr(compare.OpTimes, "ensure", lambda self, ops: None)


class _FakeRun(v.PhaseRun):
    """A PhaseRun whose CUDA capture is simulated: the pruned model's capture fails."""

    dropped: list = []

    def prepare(self):
        super().prepare()
        if self.built.strategy.family != "dense":
            self.capture, self.capture_error = "failed", "RuntimeError: operation not permitted when stream is capturing"
            self.notes.append("CUDA graph capture of the decode failed: timed eager")
        else:
            self.capture = "graph"

    def drop_graph(self):
        _FakeRun.dropped.append(self.built.strategy.family)
        super().drop_graph()


def test_a_failed_capture_is_flagged_on_the_row_and_both_run_eager(monkeypatch, roofline_ops):
    monkeypatch.setattr(compare, "PhaseRun", _FakeRun)
    _FakeRun.dropped = []
    rows = v.validate(dict(TINY), [Strategy("static_depth", 0.5)], ("decode",),
                      decode_batches=(2,), context_len=16, repeats=1, warmup=0,
                      probe_overhead=False)
    (r,) = rows
    assert r.capture_failed and r.timing == "eager" and r.capture_error.startswith("pruned: RuntimeError")
    assert sorted(_FakeRun.dropped) == ["dense", "static_depth"]  # like with like
    d = r.to_dict()
    assert d["capture_failed"] is True and d["timing"] == "eager"
    from pis_tui.commands.validate import _table, _timing_label

    assert _timing_label(r) == "FAILED→eager"
    from rich.console import Console

    con = Console(width=250, record=True)
    con.print(_table(rows))
    assert "FAILED→eager" in con.export_text()


def test_rows_reach_the_store_as_they_come_and_a_resumed_run_skips_them(roofline_ops):
    from pis_tui.commands._store import MemoryStore

    store = MemoryStore()
    seen = []
    strategies = [Strategy("static_depth", 0.5), Strategy("low_rank", 0.5)]

    def on_row(r):
        seen.append((r.strategy, len(store.get_validations())))
    rows = v.validate(dict(TINY), strategies, ("decode",), decode_batches=(2,), context_len=16,
                      repeats=1, warmup=0, cache=store, probe_overhead=False, on_row=on_row)
    assert [s for s, _ in seen] == ["static_depth", "low_rank"]
    assert [n for _, n in seen] == [1, 2]  # stored before on_row, one at a time
    assert len(rows) == 2 and all(r.timing == "eager" for r in rows)
    again = v.validate(dict(TINY), strategies, ("decode",), decode_batches=(2,), context_len=16,
                       repeats=1, warmup=0, cache=store, probe_overhead=False,
                       skip=lambda st, ph, b, n: st.family == "static_depth")
    assert [r.strategy for r in again] == ["low_rank"]
    assert v.validate(dict(TINY), strategies, ("decode",), decode_batches=(2,), context_len=16,
                      skip=lambda *a: True) == []


def test_cli_resume_keeps_the_rows_of_the_json_file(tmp_path, roofline_ops, capsys):
    from helpers import run_cli

    from pis_tui.cli import main

    d = tmp_path / "tiny"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TINY))
    out = tmp_path / "rows.json"
    prev = {"strategy": "static_depth", "sparsity": 0.5, "phase": "decode", "batch": 2, "length": 16,
            "measured_speedup": 9.9}
    out.write_text(json.dumps([prev]))
    code = main(["validate", "--model", str(d), "--strategy", "static_depth,low_rank", "--sparsity",
                 "0.5", "--phase", "decode", "--decode-batch", "2", "--context-len", "16",
                 "--repeats", "1", "--warmup", "0", "--json", str(out), "--resume", "--cache", "none"])
    assert code == 0
    rows = json.loads(out.read_text())
    assert rows[0] == prev and [x["strategy"] for x in rows] == ["static_depth", "low_rank"]
    assert "resumed: 1 row(s) kept" in capsys.readouterr().out
    bad = run_cli("validate", "--model", str(d), "--strategy", "low_rank", "--sparsity", "0.5",
                  "--resume", "--cache", "none")
    assert bad.returncode == 2 and "--resume needs --json" in bad.stderr and "Traceback" not in bad.stderr

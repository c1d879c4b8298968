"""The DuckDB cache: keys, upserts, every table, sharing between processes, a corrupt or
newer file moved aside, a lock-less filesystem, export; and no torch on its import path."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from pis_tui import cache as cache_mod
from pis_tui.cache import SCHEMA_VERSION, Cache
from pis_tui.errors import CacheError, UserError
from pis_tui.pricing.measured_table import METHOD_VERSIONS, Measurement, software_versions

ROOT = Path(__file__).resolve().parents[1]
FP = "cpu:Test_CPU:2t"


def meas(key_m=16, ms=1.5, status="ok", software=None, method="cpu-wall", mv=None, dtype="fp32", fp=FP):
    op = {"op_type": "gemm", "name": "q", "m": key_m, "n": 64, "k": 32, "count": 1.0, "dtype": dtype,
          "kind": "dense", "density": 1.0}
    mv = METHOD_VERSIONS[method] if mv is None else mv
    return Measurement(key=f"gemm:dense:{dtype}:{key_m}x64x32", op=op, ms=ms, eager_ms=ms, spread=0.02,
                       repeats=5, status=status, note="n", method=method, method_version=mv,
                       fingerprint=fp, software=software or software_versions(),
                       measured_at="2026-01-02T03:04:05+00:00")


def test_default_path_env_and_platformdirs(monkeypatch, tmp_path):
    monkeypatch.setenv("PIS_TUI_CACHE", str(tmp_path / "x.duckdb"))
    assert cache_mod.default_path() == str(tmp_path / "x.duckdb")
    monkeypatch.delenv("PIS_TUI_CACHE")
    from platformdirs import user_cache_dir

    assert cache_mod.default_path() == str(Path(user_cache_dir("pis-tui", appauthor=False)) / "cache.duckdb")
    c = Cache.open(str(tmp_path / "sub" / "c.duckdb"))  # parent directories are created
    assert Path(c.path).is_file()


def test_measurements_land_with_their_keys(tmp_path):
    c = Cache.open(str(tmp_path / "c.duckdb"))
    ms = [meas(16), meas(32, ms=3.0), meas(64, status="unsupported", ms=None)]
    assert c.put_measurements(ms, {"fingerprint": FP, "kind": "cpu"}) == 3
    got = {m.key: m for m in c.get_measurements(FP)}
    assert set(got) == {m.key for m in ms}
    assert got[ms[1].key].ms == 3.0 and got[ms[1].key].op == ms[1].op
    assert got[ms[2].key].status == "unsupported" and got[ms[2].key].ms is None
    assert c.get_measurements(FP, "bf16") == [] and len(c.get_measurements(FP, "fp32")) == 3
    assert c.get_measurements("other-device") == []
    # the stored row carries every key column
    con = duckdb.connect(c.path, read_only=True)
    row = con.execute("SELECT fingerprint, torch_version, cuda_version, cusparselt_version, method, "
                      "method_version, op_key, dtype, device_json FROM op_timings WHERE op_key = ?",
                      [ms[0].key]).fetchone()
    con.close()
    sw = software_versions()
    assert row[:8] == (FP, sw["torch"], sw["cuda"], sw["cusparselt"], "cpu-wall",
                       METHOD_VERSIONS["cpu-wall"], ms[0].key, "fp32")
    assert json.loads(row[8])["kind"] == "cpu"


def test_upsert_and_version_filters(tmp_path):
    c = Cache.open(str(tmp_path / "c.duckdb"))
    c.put_measurements([meas(16, ms=1.0)])
    c.put_measurements([meas(16, ms=2.0)])  # same key: replaced
    assert [m.ms for m in c.get_measurements(FP)] == [2.0]
    old = {"torch": "1.0.0", "cuda": "", "cusparselt": ""}
    c.put_measurements([meas(32, software=old), meas(64, mv=0)])  # older torch, older method
    assert {m.key for m in c.get_measurements(FP)} == {meas(16).key}
    assert len(c.get_measurements(FP, any_version=True)) == 3


def test_concurrent_writers_in_one_process(tmp_path):
    c = Cache.open(str(tmp_path / "c.duckdb"))
    errors = []

    def work(i):
        try:
            for j in range(5):
                c.put_measurements([meas(16, ms=float(i + j)), meas(100 + i)])
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    ts = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert len(c.get_measurements(FP)) == 7


def test_other_tables_round_trip(tmp_path):
    c = Cache.open(str(tmp_path / "c.duckdb"))
    c.put_calibration(FP, "fp32", 0.12, 18.5, {"matmul_n": 2048})
    cal = c.get_calibration(FP, "fp32")
    assert cal["peak_tflops"] == 0.12 and cal["bandwidth_gbs"] == 18.5 and cal["matmul_n"] == 2048
    assert c.get_calibration(FP, "bf16") is None
    row = {"model": "m", "fingerprint": FP, "strategy": "static_depth", "sparsity": 0.25,
           "achieved_sparsity": 0.25, "phase": "decode", "batch": 16, "length": 256,
           "predicted_ms": 10.0, "measured_ms": 11.0, "dense_predicted_ms": 13.0,
           "dense_measured_ms": 14.0, "predicted_speedup": 1.3, "measured_speedup": 1.27,
           "error": 0.02, "note": "x"}
    c.put_validation([row])
    c.put_validation([{**row, "measured_ms": 12.0}])  # same key: replaced
    v = c.get_validations("m")
    assert len(v) == 1 and v[0]["measured_ms"] == 12.0 and v[0]["note"] == "x"
    assert c.get_validations(fingerprint="nope") == []
    with pytest.raises(ValueError):
        c.put_validation([{"model": "m"}])
    q = {"model": "m", "strategy": "low_rank", "sparsity": 0.5, "achieved_sparsity": 0.49,
         "ppl_dense": 10.0, "ppl_pruned": 15.0, "ppl_increase": 0.5, "text_sha256": "ab" * 32,
         "n_tokens": 512}
    c.put_quality_results([q])
    got = c.get_quality_results("m")
    assert len(got) == 1 and got[0]["ppl_increase"] == 0.5 and got[0]["n_tokens"] == 512
    assert c.get_quality_results("other") == []
    c.put_setting("last", {"model": "qwen2.5-0.5b", "budget": 0.1})
    assert c.get_setting("last") == {"model": "qwen2.5-0.5b", "budget": 0.1}
    assert c.get_setting("missing", 7) == 7
    key = ("m", "h200-sxm", {"prefill": [1, 1024]})
    c.put_sweep(key, {"points": [1, 2]}, model="m", gpu="h200-sxm")
    assert c.get_sweep(key) == {"points": [1, 2]} and c.get_sweep("nope") is None


def test_info_clear_export(tmp_path):
    c = Cache.open(str(tmp_path / "c.duckdb"))
    c.put_measurements([meas(16), meas(32)])
    c.put_setting("a", 1)
    info = c.info()
    assert info["schema_version"] == SCHEMA_VERSION and info["tables"]["op_timings"] == 2
    assert info["devices"][0]["fingerprint"] == FP and info["devices"][0]["ops"] == 2
    pq, csv = tmp_path / "t.parquet", tmp_path / "t.csv"
    assert c.export(pq)["rows"] == 2
    assert c.export(csv)["rows"] == 2
    con = duckdb.connect()
    assert con.execute(f"SELECT count(*) FROM read_parquet('{pq}')").fetchone()[0] == 2
    assert con.execute(f"SELECT count(*) FROM read_csv_auto('{csv}')").fetchone()[0] == 2
    with pytest.raises(UserError):
        c.export(tmp_path / "t.xlsx")
    with pytest.raises(UserError):
        c.export(tmp_path / "nodir" / "t.csv")
    removed = c.clear()
    assert removed["op_timings"] == 2
    assert c.get_measurements(FP) == [] and c.get_setting("a") == 1  # settings kept


def _hold(path: str, seconds: float) -> subprocess.Popen:
    """Another process holding the DuckDB file for `seconds`."""
    code = ("import duckdb, sys, time\n"
            f"c = duckdb.connect({path!r}); print('held', flush=True); time.sleep({seconds}); c.close()")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_hold_shares_one_connection_and_other_threads_wait(tmp_path, monkeypatch):
    c = Cache.open(str(tmp_path / "c.duckdb"))
    c.put_measurements([meas(16)])
    opened = []
    real = Cache._connect_file
    monkeypatch.setattr(Cache, "_connect_file", lambda self: opened.append(1) or real(self))
    other = []
    with c.hold():
        assert len(c.get_measurements(FP)) == 1
        c.put_setting("k", "v")
        assert c.get_setting("k") == "v" and c.get_calibration(FP, "fp32") is None
        t = threading.Thread(target=lambda: other.append(c.get_setting("k")))
        t.start()
        t.join(0.3)
        assert t.is_alive() and not other  # another thread waits for the block to end
        with c.hold():  # nested: the same connection
            c.put_measurements([meas(32)])
    t.join(5)
    assert other == ["v"]
    assert len(opened) == 2  # one for the block, one for the other thread afterwards
    assert len(c.get_measurements(FP)) == 2 and len(opened) == 3
    mem = Cache.open(":memory:")
    with mem.hold():
        mem.put_setting("a", "b")
    assert mem.get_setting("a") == "b"


def test_a_held_file_is_waited_for_then_used(tmp_path):
    path = str(tmp_path / "c.duckdb")
    Cache.open(path).put_measurements([meas(16)])
    p = _hold(path, 1.5)
    t = time.monotonic()
    c = Cache.open(path, wait_s=15)
    assert time.monotonic() - t > 0.5  # it had to wait
    assert len(c.get_measurements(FP)) == 1
    p.wait(10)


def test_a_file_held_too_long_gives_a_clear_error(tmp_path):
    path = str(tmp_path / "c.duckdb")
    Cache.open(path)
    p = _hold(path, 4)
    try:
        with pytest.raises(CacheError, match=r"in use by another process \(pid \d+\)"):
            Cache.open(path, wait_s=0.5)
    finally:
        p.kill()
        p.wait(10)


def test_a_second_process_reads_what_the_first_wrote(tmp_path):
    path = str(tmp_path / "c.duckdb")
    c = Cache.open(path)
    c.put_measurements([meas(16), meas(32)])  # connection closed after the call
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from pis_tui.cache import Cache\n"
            "c = Cache.open(%r, wait_s=5)\n"
            "print(len(c.get_measurements(%r)), 'torch' in sys.modules)\n"
            "c.put_setting('from_child', 1)\n") % (str(ROOT), path, FP)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "False"]  # and importing the cache never imported torch
    assert c.get_setting("from_child") == 1


def _corrupt_duckdb_file(path) -> bytes:
    """A DuckDB database file (its header) whose blocks are garbage."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t (a INTEGER)")
    con.close()
    data = bytearray(path.read_bytes())
    data[4096:] = b"this is not a database" * ((len(data) - 4096) // 22 + 1)
    path.write_bytes(bytes(data[: len(path.read_bytes())]))
    return path.read_bytes()


def test_a_corrupt_file_is_moved_aside(tmp_path):
    path = tmp_path / "c.duckdb"
    before = _corrupt_duckdb_file(path)
    warnings = []
    c = Cache.open(str(path), on_warning=warnings.append)
    aside = list(tmp_path.glob("c.duckdb.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == before
    assert warnings and "moved it to" in warnings[0] and str(aside[0]) in warnings[0]
    c.put_measurements([meas(16)])
    assert len(c.get_measurements(FP)) == 1


def test_a_file_that_is_no_duckdb_database_is_refused_and_left_untouched(tmp_path):
    """`cache info --cache my.tar.gz`: the user's file is not a corrupt cache to move aside."""
    from helpers import run_cli

    path = tmp_path / "my.tar.gz"
    path.write_bytes(b"\x1f\x8b\x08 an archive of someone's" * 50)
    before = path.read_bytes()
    with pytest.raises(UserError, match="not a pis-tui cache"):
        Cache.open(str(path))
    r = run_cli("cache", "info", "--cache", str(path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["my.tar.gz"]


def test_a_newer_schema_is_moved_aside(tmp_path):
    path = str(tmp_path / "c.duckdb")
    Cache.open(path).put_measurements([meas(16)])
    con = duckdb.connect(path)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    con.close()
    warnings = []
    c = Cache.open(path, on_warning=warnings.append)
    assert "newer schema" in warnings[0]
    assert len(list(tmp_path.glob("c.duckdb.newer-schema-*"))) == 1
    assert c.get_measurements(FP) == [] and c.info()["schema_version"] == SCHEMA_VERSION


def test_a_lockless_filesystem_falls_back_to_memory(tmp_path, monkeypatch):
    real = duckdb.connect

    def no_locks(database=":memory:", *a, **k):
        if database != ":memory:":
            raise duckdb.IOException(f'IO Error: Could not set lock on file "{database}": '
                                     "No locks available")
        return real(database, *a, **k)
    monkeypatch.setattr(duckdb, "connect", no_locks)
    warnings = []
    c = Cache.open(str(tmp_path / "nfs.duckdb"), on_warning=warnings.append)
    assert c.in_memory and "does not support file locks" in warnings[0]
    c.put_measurements([meas(16)])
    assert len(c.get_measurements(FP)) == 1
    assert c.info()["in_memory"]


def test_an_unusable_path_is_bad_input(tmp_path):
    """A path nobody can use is the user's to fix (exit 2), not a cache held by another
    process (CacheError, exit 4): issue 31."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot create its directory"):
        Cache.open(str(blocker / "sub" / "c.duckdb"))
    with pytest.raises(UserError):
        Cache.open(str(tmp_path))  # a directory


def test_cache_command(tmp_path):
    from helpers import run_cli

    path = str(tmp_path / "c.duckdb")
    c = Cache.open(path)
    c.put_measurements([meas(16), meas(32)])
    r = run_cli("cache", "info", "--cache", path)
    assert r.returncode == 0 and "op_timings 2" in r.stdout and FP in r.stdout
    r = run_cli("cache", "export", str(tmp_path / "o.csv"), "--cache", path)
    assert r.returncode == 0 and (tmp_path / "o.csv").read_text().count("\n") == 3
    r = run_cli("cache", "clear", "--cache", path)
    assert r.returncode == 0 and "op_timings 2" in r.stdout
    assert Cache.open(path).get_measurements(FP) == []
    r = run_cli("cache", "export", str(tmp_path / "o.txt"), "--cache", path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    typo = tmp_path / "typo" / "cahce.duckdb"  # a mistyped path is not a new, empty cache
    r = run_cli("cache", "export", str(tmp_path / "o2.csv"), "--cache", str(typo))
    assert r.returncode == 2 and "no cache at" in r.stderr and not typo.parent.exists()
    r = run_cli("cache", "info", "--cache", str(typo))
    assert r.returncode == 0 and "no cache at" in r.stdout and not typo.parent.exists()


def test_the_explorers_backend_waits_briefly_and_says_why(tmp_path):
    from pis_tui.tui.backend import Backend, Choices

    path = str(tmp_path / "c.duckdb")
    be = Backend(cache_path=path)
    be.save_choices(Choices(budget=0.2))
    p = _hold(path, 6)
    try:
        t = time.monotonic()
        assert be.load_choices(Choices()) is None  # the screen does not wait 10 s for it
        be.save_choices(Choices(budget=0.3), wait_s=0.3)
        assert time.monotonic() - t < 4
        said = be.take_warnings()
        assert any("could not be read" in w and "in use by another process" in w for w in said)
        assert any("could not be saved" in w for w in said) and be.take_warnings() == []
    finally:
        p.kill()
        p.wait(10)
    assert be.load_choices(Choices()).budget == 0.2


# ------------------------------------------------------------------ corruption a query hits, read-only files


def _big_cache(path):
    c = Cache.open(str(path))
    c.put_measurements([meas(i, 0.1) for i in range(1, 3000)])
    c.put_calibration(FP, "fp32", 0.1, 20.0)
    con = duckdb.connect(str(path))  # everything in the file, no write-ahead log beside it
    con.execute("CHECKPOINT")
    con.close()
    return c


def _corrupt_a_queried_block(path) -> int:
    """Random bytes over 4 KiB of the file, at the first offset where a full scan of op_timings
    then fails although the file still opens (block corruption, not a bad header)."""
    import random
    import shutil

    size = path.stat().st_size
    keep = path.with_name(path.name + ".orig")
    shutil.copy(path, keep)
    wal = path.with_name(path.name + ".wal")
    for off in range(256 * 1024, size - 4096, 64 * 1024):
        shutil.copy(keep, path)
        if wal.exists():
            wal.unlink()
        with open(path, "r+b") as f:
            f.seek(off)
            f.write(random.Random(off).randbytes(4096))
        try:
            con = duckdb.connect(str(path))
        except duckdb.Error:
            continue  # that spoiled the open: not the case wanted
        try:
            con.execute("SELECT count(*) FROM meta").fetchall()  # it opens and answers
            con.execute("SELECT * FROM op_timings").fetchall()
        except duckdb.Error as e:
            if "orrupt" in str(e) or "checksum" in str(e):
                return off
        finally:
            con.close()
    raise AssertionError("no offset corrupted a block that a query reads")


def test_a_query_that_hits_a_corrupt_block_saves_what_it_can(tmp_path):
    path = tmp_path / "c.duckdb"
    _big_cache(path)
    _corrupt_a_queried_block(path)
    warnings = []
    c = Cache.open(str(path), on_warning=warnings.append)  # the open itself succeeds
    got = c.get_measurements(FP, "fp32", any_version=True)  # no exception
    assert any("not a readable cache" in w and "moved it to" in w for w in warnings)
    assert any("rows read back" in w for w in warnings)
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    salvaged = [p for p in tmp_path.iterdir() if ".salvaged-" in p.name]
    assert aside and salvaged and (salvaged[0] / "op_timings.parquet").exists()
    assert len(got) < 2999  # the corrupt block's rows are gone (all of them, if it held a column)
    # ... and nothing else: the other tables came back whole
    assert c.get_calibration(FP, "fp32")["peak_tflops"] == 0.1
    assert duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{salvaged[0]}/"
                                    "device_calibration.parquet')").fetchone()[0] == 1
    c.put_measurements([meas(99999, 0.2)])  # the fresh file works
    assert any(m.op["m"] == 99999 for m in c.get_measurements(FP, "fp32", any_version=True))


def test_the_cli_survives_a_corrupt_block(tmp_path):
    from helpers import run_cli

    path = tmp_path / "c.duckdb"
    _big_cache(path)
    _corrupt_a_queried_block(path)
    r = run_cli("cache", "export", str(tmp_path / "t.parquet"), "--cache", str(path))
    assert r.returncode == 0, r.stderr
    assert "moved it to" in r.stderr and "internal error" not in r.stderr


def test_a_read_only_cache_is_read_not_moved_aside(tmp_path, monkeypatch):
    from pis_tui.cache import store
    from pis_tui.cli import main

    path = tmp_path / "c.duckdb"
    _big_cache(path)
    monkeypatch.setattr(store, "writable", lambda p: False)  # root ignores chmod: pretend
    warnings = []
    c = Cache.open(str(path), on_warning=warnings.append)
    assert c.read_only and any("read-only" in w for w in warnings)
    assert len(c.get_measurements(FP, "fp32", any_version=True)) == 2999
    with pytest.raises(CacheError, match="read-only"):
        c.put_measurements([meas(7, 0.1)])
    assert path.exists() and not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert main(["cache", "info", "--cache", str(path)]) == 0
    assert main(["cache", "export", str(tmp_path / "o.csv"), "--cache", str(path)]) == 0
    assert main(["sweep", "--model", "qwen2.5-0.5b", "--gpu", "local", "--strategies",
                 "static_depth", "--sparsities", "0.5", "--cache", str(path)]) == 0
    assert main(["cache", "clear", "--cache", str(path)]) == 4  # refused, one line
    # measuring commands refuse before measuring anything (nothing they measured could be kept)
    import pis_tui.timing as timing

    monkeypatch.setattr(timing, "open_device", lambda *a, **k: pytest.fail("measured"))
    assert main(["profile", "--model", "qwen2.5-0.5b", "--gpu", "local", "--strategies",
                 "static_depth", "--sparsities", "0.5", "--cache", str(path)]) == 4
    assert main(["validate", "--model", "qwen2.5-0.5b", "--strategy", "static_depth",
                 "--sparsity", "0.5", "--cache", str(path)]) == 4

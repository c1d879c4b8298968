"""A group of rank processes reports what really failed: the exception a rank raised, the
signal that killed it, never the last warning a library printed on its stderr."""

import os
import sys
import textwrap

import pytest

from pis_tui.errors import UserError
from pis_tui.timing.collectives import Group, _last_exception

WARNING = ("The following generation flags are not valid: eos_token_id must be None or an "
           "integer within the vocabulary (got 151643)")


def _worker(tmp_path, monkeypatch, body: str, name: str) -> str:
    src = ("import os, signal, sys\n"
           "from pis_tui.timing.collective_worker import run_worker\n\n"
           "def main(path):\n"
           f"    print({WARNING!r}, file=sys.stderr)\n"
           + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n\n"
           "if __name__ == '__main__':\n"
           "    sys.exit(run_worker(main, sys.argv[1]))\n")
    (tmp_path / f"{name}.py").write_text(src, encoding="utf-8")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    monkeypatch.setenv("PYTHONPATH", path)
    return name


def _fail(module, world=2) -> str:
    with Group(module, world, {}, start_s=60.0, timeout_s=60.0) as g:
        with pytest.raises(UserError) as e:
            g.wait()
    return str(e.value)


def test_the_exception_a_rank_raised_is_the_cause(tmp_path, monkeypatch):
    mod = _worker(tmp_path, monkeypatch, "raise ValueError('the real cause')", "raiser")
    msg = _fail(mod)
    assert "ValueError: the real cause" in msg and "eos_token_id" not in msg, msg


def test_a_rank_killed_by_a_signal_says_so(tmp_path, monkeypatch):
    mod = _worker(tmp_path, monkeypatch, "os.kill(os.getpid(), signal.SIGKILL)", "killed")
    msg = _fail(mod, world=1)
    assert "killed by SIGKILL" in msg and "eos_token_id" not in msg, msg


def test_a_rank_that_exits_with_a_code_says_which(tmp_path, monkeypatch):
    mod = _worker(tmp_path, monkeypatch, "sys.exit(3)", "exiter")
    msg = _fail(mod, world=1)
    assert "exit code 3" in msg and "eos_token_id" not in msg, msg


def test_the_last_traceback_ends_in_its_exception():
    text = ("UserWarning: something: else\nTraceback (most recent call last):\n  File \"x\", line 1\n"
            "    boom()\nRuntimeError: first\n\nDuring handling...\nTraceback (most recent call last):\n"
            "  File \"y\", line 2\ntorch.distributed.DistBackendError: peer closed\n" + WARNING + "\n")
    assert _last_exception(text) == "torch.distributed.DistBackendError: peer closed"
    assert _last_exception("only: a warning\n") == ""
    assert _last_exception("Traceback (most recent call last):\n  File \"z\"\nKeyError: 'k'\n") == "KeyError: 'k'"


def test_a_rank_that_aborts_in_teardown_after_its_work_loses_nothing(tmp_path, monkeypatch):
    """gloo's threads can abort a rank at teardown ("terminate called without an active
    exception", SIGABRT) after it wrote every result: the group returns them."""
    mod = _worker(tmp_path, monkeypatch, """
        import json, pathlib
        from pis_tui.timing.collective_worker import mark_done
        spec = json.loads(pathlib.Path(path).read_text())
        rank = int(os.environ["PIS_RANK"])
        pathlib.Path(spec["status_dir"], f"ready{rank}").write_text("ready")
        if rank == 0:
            with open(spec["out"], "a") as f:
                f.write(json.dumps({"row": 1}) + "\\n")
        mark_done(spec, rank)
        os.abort()""", "aborter")
    with Group(mod, 2, {}, start_s=60.0, timeout_s=60.0) as g:
        assert g.wait() == [{"row": 1}]

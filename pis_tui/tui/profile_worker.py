"""Drives the measuring subprocess and turns its JSON lines into events.

Measuring imports torch and runs kernels: inside the app's process that would stall the
screen and disturb the timings, so it runs as ``python -m pis_tui profile ...
--progress-jsonl`` and streams one JSON object a line::

    {"event": "progress", "done": 12, "total": 80, "current": "gemm ...", "elapsed_s": 3.1, "eta_s": 17.5}
    {"event": "done", "measured": 75, "reused": 5, "failed": 0, "cancelled": false}
    {"event": "error", "message": "..."}

:class:`ProfileRunner` is plain Python (no textual): the app runs :meth:`ProfileRunner.run`
in a thread worker and posts each event it hands to ``on_event`` to the screen.  Progress
is coalesced (at most one event per ``min_interval``); ``done`` and ``error`` always pass.
:meth:`cancel` asks politely (SIGINT: the CLI stops between measurements and keeps what it
measured), then terminates, then kills.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from typing import Callable, Optional


def _lower_priority() -> None:
    """In the measuring child: yield the CPU to the explorer when it needs to draw (on a CPU
    device the profiler keeps every core busy; its rounds absorb the rare interruption)."""
    try:
        os.nice(15)
    except OSError:
        pass


class ProfileRunner:
    def __init__(self, cmd: list[str], on_event: Callable[[dict], None], *,
                 min_interval: float = 0.1, env: Optional[dict] = None, cwd: Optional[str] = None):
        self.cmd = list(cmd)
        self.on_event = on_event
        self.min_interval = min_interval
        self.env = env
        self.cwd = cwd
        self.proc: Optional[subprocess.Popen] = None
        self.cancelled = False
        self._lock = threading.Lock()
        self._started = threading.Event()

    # ---------------------------------------------------------------- control
    def cancel(self, grace_s: float = 3.0) -> None:
        """Stop the subprocess (thread-safe; returns at once): SIGINT, then SIGTERM after
        ``grace_s``, then SIGKILL after twice that."""
        with self._lock:
            self.cancelled = True
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self._signal(proc, signal.SIGINT)

        def escalate() -> None:
            for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
                try:
                    proc.wait(timeout=wait)
                    return
                except subprocess.TimeoutExpired:
                    self._signal(proc, sig)

        threading.Thread(target=escalate, name="pis-tui-profile-stop", daemon=True).start()

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            proc.send_signal(sig)
        except (ProcessLookupError, OSError):
            pass

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ---------------------------------------------------------------- the loop
    def run(self) -> dict:
        """Run to the end (blocking); returns the final event (done or error)."""
        stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            with self._lock:
                if self.cancelled:
                    final = {"event": "done", "measured": 0, "reused": 0, "failed": 0,
                             "cancelled": True}
                    self.on_event(final)
                    return final
                self.proc = subprocess.Popen(
                    self.cmd, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                    text=True, bufsize=1, env=env, cwd=self.cwd, start_new_session=True,
                    preexec_fn=_lower_priority if hasattr(os, "nice") else None)
        except OSError as e:
            final = {"event": "error", "message": f"cannot start the measuring process: {e}"}
            self.on_event(final)
            return final
        final: Optional[dict] = None
        pending: Optional[dict] = None
        last = 0.0
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            kind = ev.get("event")
            if kind == "progress":
                now = time.monotonic()
                if now - last >= self.min_interval:
                    self.on_event(ev)
                    last, pending = now, None
                else:
                    pending = ev
            elif kind in ("done", "error"):
                if pending is not None:
                    self.on_event(pending)
                    pending = None
                final = ev
                if kind == "error":
                    self.on_event(ev)
        if pending is not None:
            self.on_event(pending)
        rc = self.proc.wait()
        if final is None or final.get("event") != "error":
            if final is None and self.cancelled:
                final = {"event": "done", "measured": None, "reused": None, "failed": None,
                         "cancelled": True}
            elif final is None or (rc not in (0, None) and not self.cancelled
                                   and final.get("event") != "done"):
                final = {"event": "error", "message": self._stderr_message(stderr, rc)}
            elif self.cancelled:
                final = {**final, "cancelled": True}
            self.on_event(final)
        stderr.close()
        return final

    @staticmethod
    def _stderr_message(stderr, rc: int) -> str:
        try:
            stderr.seek(0)
            lines = [ln.strip() for ln in stderr.read().splitlines() if ln.strip()]
        except (OSError, ValueError):
            lines = []
        msg = lines[-1] if lines else ""
        for prefix in ("pis-tui: error: ", "pis-tui: "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        if not msg:
            msg = f"the measuring process exited with status {rc} and said nothing"
        elif rc:
            msg = f"{msg} (exit status {rc})"
        return msg

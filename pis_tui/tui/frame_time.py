"""Keeping the explorer's frames short, and measuring how short they are: the part of
:class:`~pis_tui.tui.app.PisApp` that moves the app's long-lived heap out of the garbage
collector's sight (and hands it back at the end), and the lag monitor (``monitor_lag``: a
20 ms tick that records how late each one fires; the startup benchmark reads ``lags``).

A mixin: the app sets up ``heap_frozen``, ``lags`` and ``_lag_last``.
"""

from __future__ import annotations

import gc
import time


class FrameTime:
    """The frozen heap and the lag monitor (mixed into the app)."""

    def _freeze_heap(self) -> None:
        """Move every object alive now (modules, widgets, styles: the app's long-lived heap)
        out of the garbage collector's sight.  A full collection walks the whole heap and took
        90-115 ms here, in the middle of a frame while measurements streamed in; after the
        freeze it walks only what was allocated since.  Frozen objects are still freed by
        reference counting; the heap is handed back to the collector when the app ends."""
        gc.freeze()
        self.heap_frozen = True

    def _thaw_heap(self) -> None:
        """Hand the frozen heap back to the collector (the app is ending)."""
        if self.heap_frozen:
            gc.unfreeze()
            self.heap_frozen = False

    def _start_lag_monitor(self) -> None:
        self._lag_last = time.perf_counter()
        self.set_interval(0.02, self._lag_tick)

    def _lag_tick(self) -> None:
        now = time.perf_counter()
        self.lags.append(max(0.0, now - self._lag_last - 0.02))
        self._lag_last = now

"""Measured op times on the local device, for the estimator: what validate's predictions are priced from."""

from __future__ import annotations
from typing import Callable, Optional
from ..errors import MeasureError


class OpTimes:
    """Measured op times on the local device, for the estimator.

    Uses the profiling helper (``pis_tui.profiling``) and the DuckDB cache when they are
    available, so a validate run measures exactly the ops of the phases it compares (and
    only those not measured yet); else times them here with ``pis_tui.timing``.
    """

    def __init__(self, dtype: str, cache=None, on_progress: Optional[Callable[[str], None]] = None,
                 repeats: Optional[int] = None):
        self.dtype = dtype
        self.repeats = repeats
        self.cache = cache
        self.on_progress = on_progress
        self._mem: dict = {}  # key → Measurement
        self._ctx = None

    def ensure(self, ops) -> None:
        """Measure every op of ``ops`` not measured yet."""
        from ..model.ops import Overhead, measuring_form

        want = {}
        for o in ops:
            if isinstance(o, Overhead):  # priced from the dispatch probe (if run)
                continue
            k = measuring_form(o).key()
            if k not in self._mem and k not in want:
                want[k] = measuring_form(o)
        if self.cache is not None:
            for rec in self.cache.get_measurements(self._fingerprint(), self.dtype):
                key = rec.get("key") if isinstance(rec, dict) else getattr(rec, "key", None)
                if key in want:
                    self._mem[key] = rec
                    want.pop(key)
                elif str(key).startswith("ovh:") and key not in self._mem:
                    self._mem[key] = rec
        if not want:
            return
        if self.cache is not None:
            from .. import profiling

            done = profiling.measure_ops(list(want.values()), cache=self.cache, dtype=self.dtype,
                                         on_progress=self.on_progress, repeats=self.repeats)
            for m in done:
                self._mem[m.key] = m
            return
        from .. import timing

        if self._ctx is None:
            self._ctx = timing.open_device("local")
        for i, op in enumerate(want.values()):
            if self.on_progress:
                self.on_progress(f"measuring op {i + 1}/{len(want)}: {op.key()}")
            m = timing.measure_op(op, self._ctx, repeats=self.repeats)
            self._mem[m.key] = m
            if self._ctx.sticky_error:
                raise MeasureError(f"the GPU hit an unrecoverable error ({self._ctx.sticky_error}) "
                                   "while measuring the ops of the predictions")

    def unstable(self, ops) -> list:
        """The measuring forms of ``ops`` whose measurement is ``unstable`` (taken under load,
        its rounds disagreeing, or inconsistent with its neighbours)."""
        from ..model.ops import Overhead, measuring_form

        out = {}
        for o in ops:
            if isinstance(o, Overhead):
                continue
            f = measuring_form(o)
            m = self._mem.get(f.key())
            status = m.get("status") if isinstance(m, dict) else getattr(m, "status", None)
            if status == "unstable":
                out[f.key()] = f
        return list(out.values())

    def remeasure(self, ops) -> int:
        """Measure ``ops`` again (once); a new measurement replaces the old one unless it is
        unstable where the old one was not.  Returns how many are now stable."""
        ops = list(ops)
        if not ops:
            return 0
        if self.cache is not None:
            from .. import profiling

            done = profiling.measure_ops(ops, cache=self.cache, dtype=self.dtype,
                                         on_progress=self.on_progress, repeats=self.repeats,
                                         remeasure="unstable")
        else:
            from .. import timing

            if self._ctx is None:
                self._ctx = timing.open_device("local")
            done = [timing.measure_op(op, self._ctx, repeats=self.repeats) for op in ops]
        want = {o.key() for o in ops}
        for m in done:
            if m.key in want and (m.status == "ok" or m.key not in self._mem):
                self._mem[m.key] = m
        return sum(1 for m in done if m.key in want and m.status == "ok")

    def add(self, measurements) -> None:
        """Measurements taken elsewhere (the dispatch probe's overhead ops)."""
        for m in measurements:
            self._mem[m.key] = m

    def _fingerprint(self) -> str:
        from ..device.local import local_device

        return local_device().fingerprint

    def records(self) -> list:
        return [_record(m) for m in self._mem.values()]

    def with_overheads(self) -> "OpTimes":
        """These op times (the same ops, measured into the same store) with eager overhead
        measurements of their own: what :meth:`add` is given goes to the view only, in place
        of the same keys.  A quantized model's linears run other Python than nn.Linear, and
        the overhead keys (``ovh:<kind>:<path>:<dtype>``) do not name a precision: its
        dispatch probe's costs price its predictions, never the unquantized ones."""
        return _WithOverheads(self)

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.free()
            self._ctx = None


class _WithOverheads(OpTimes):
    """:meth:`OpTimes.with_overheads`: every op measured by (and stored in) the base; the
    overhead measurements added here replace the base's in :meth:`records`."""

    def __init__(self, base: OpTimes):
        self.base = base
        self.dtype, self.repeats, self.cache = base.dtype, base.repeats, base.cache
        self.on_progress = base.on_progress
        self.own: dict = {}

    def ensure(self, ops) -> None:
        self.base.ensure(ops)

    def unstable(self, ops) -> list:
        return self.base.unstable(ops)

    def remeasure(self, ops) -> int:
        return self.base.remeasure(ops)

    def add(self, measurements) -> None:
        for m in measurements:
            self.own[m.key] = m

    def records(self) -> list:
        mem = {**self.base._mem, **self.own}
        return [_record(m) for m in mem.values()]

    def close(self) -> None:
        pass  # the base's


def _record(m) -> dict:
    if isinstance(m, dict):
        return m
    return {"key": m.key, "op": m.op, "ms": m.ms, "status": m.status, "spread": m.spread,
            "conditions": m.conditions}



"""Command palette (``ctrl+p``): every action, plus quick picks of model, GPU and budget."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

ACTIONS = (
    ("Export JSON", "write the pis-tui/1 JSON (recommendations included)", "export"),
    ("Export CSV", "write every point as CSV", "export_csv"),
    ("Measure on the local device", "time the ops in a background process", "measure"),
    ("Cancel measuring", "stop the measuring process; what was measured is kept", "cancel_measure"),
    ("Drill into the highlighted point", "its op list: M, N, K and where the time goes", "drill"),
    ("Show / hide setup", "model, GPU, budget, scenario, TP, quality, dtype, kernels", "toggle_setup"),
    ("Pareto charts", "speedup vs quality loss per phase", "tab('pareto')"),
    ("Beyond FLOPs", "real vs FLOPs-predicted speedup per family", "tab('flops')"),
    ("Points table", "every point with its sources", "tab('points')"),
    ("Plan", "one pruned model for a workload across both phases, with its memory", "tab('plan')"),
    ("Batch", "decode speedup against decode batch (an MoE model: the experts a step touches)", "tab('batch')"),
    ("Filter by family", "cycle the family filter (table and Beyond FLOPs)", "cycle_family"),
    ("Filter by phase", "cycle the table's phase filter", "cycle_phase"),
    ("Sort the table", "cycle the sort column", "cycle_sort"),
    ("Reverse the sort", "flip the table's order", "reverse_sort"),
    ("Budget +1 %", "raise the quality budget", "budget(1)"),
    ("Budget -1 %", "lower the quality budget", "budget(-1)"),
    ("Recompute", "sweep again now", "recompute"),
    ("Help", "keys and how to read the screen", "help"),
    ("Quit", "cancel measuring, keep what was measured, quit", "quit"),
)


class PisCommands(Provider):
    def _entries(self):
        app = self.app
        for title, help_, action in ACTIONS:
            yield title, help_, partial(app.run_action, action)
        for label, value in getattr(app, "model_options", []):
            yield f"Model: {label}", "switch the model", partial(app.set_choice, "model", value)
        for label, value in getattr(app, "gpu_options", []):
            yield f"GPU: {label}", "switch the device", partial(app.set_choice, "gpu", value)
        for b in (0.01, 0.02, 0.05, 0.10, 0.15, 0.20, 0.30):
            yield f"Budget: {100 * b:.0f}%", "set the quality budget", partial(app.set_choice, "budget", b)
        for proto in ("lora", "training-free"):
            yield f"Protocol: {proto}", "quality priors protocol", partial(app.set_choice, "protocol", proto)

    async def discover(self) -> Hits:
        for title, help_, cb in self._entries():
            if title.startswith(("Model:", "GPU:", "Budget:", "Protocol:")):
                continue
            yield DiscoveryHit(title, cb, help=help_)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_, cb in self._entries():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), cb, help=help_)

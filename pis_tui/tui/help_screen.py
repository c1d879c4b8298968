"""``?``: what the screen shows and every key."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# pis-tui explorer

How much faster do **prefill** and **decode** get when you prune this model this way, on
this GPU, and what does it cost in quality?  Estimates need no GPU and appear at once;
measuring on the local device (`m`) replaces estimates with timings as they arrive.

## Keys
| key | does |
|---|---|
| `s` | show / hide the setup panel (model, GPU, budget, scenario and TP: 1, 2, 4 or 8 GPUs, quality, dtype, kernels: eager or fused engine; under 110 columns drawn over the charts) |
| `tab` / `shift+tab` | move between fields; `enter` opens a list or applies a typed value; `esc` leaves the field (keys are commands again) |
| `+` / `-` | quality budget up / down by 1 % (`]` / `[` too) |
| `1` `2` `3` | Pareto charts · Beyond FLOPs · all points table |
| `4` | Plan: one pruned model for a workload across both phases (prompt, answer, requests at once, targets) |
| `5` | Batch: decode speedup against decode batch for the core families (an MoE model: the experts a step touches) |
| `d` / `enter` | op list of the highlighted point (what the family did to M, N, K; where the time goes) |
| `f` | filter by family (cycles) · `p` filter by phase |
| `o` / `O` | sort the table by the next column / reverse |
| `home` / `end` | the table's first / last row (it opens at the top: the fastest point) |
| `m` | measure on the local device (a background process; charts update as timings arrive) |
| `x` | cancel measuring (what was measured stays in the cache) |
| `e` / `E` | export JSON (pis-tui/1 schema) / the points as CSV |
| `r` | recompute now |
| `ctrl+p` | command palette: every action, models, GPUs, budgets |
| `?` | this help · `q` / `ctrl+c` quit |

## Reading the charts
* **Pareto** (one per phase): speedup against quality loss.  Each family is a letter in its
  own colour (legend under the charts), and so is each combination of two families
  (depth+width, width+low-rank…: the table's "strategy" column, each part's sparsity); the grey dotted line is the frontier, the red
  vertical line the budget, `@` the recommended point.  Points without a quality figure
  (a family no published result covers under the chosen protocol, such as unstructured
  in the shipped priors) have no place on a loss axis: the chart counts them ("8 without a quality
  figure"), the legend names their families after "not plotted", and the points table
  (`3`) lists them with a "–" loss.  They are never recommended.
* **Beyond FLOPs**: per family, speedup against the sparsity actually achieved.  Letters are
  the real (measured or estimated) speedups, the dotted line of the same colour is what a
  FLOPs count predicts.  The gap is the point of the study: removing FLOPs does not remove
  time in the same proportion, and differently in prefill (compute-bound) and decode
  (memory-bound).

* **Plan** (`4`): a deployment serves prefill and decode with the same weights.  Pick a
  workload (a preset: chat, rag, summarize, or your numbers), optional TTFT / TPOT targets and
  what to rank by (end-to-end latency at that many requests at once, or throughput at the
  largest batch that fits and meets the targets).  The chart shows each candidate's gain over
  dense against its quality loss (grey: over the budget, too big for the GPU or missing a
  target); the panel gives the recommended model's TTFT, TPOT, request latency and
  throughput, its weights, KV cache per token, how many sequences fit and the memory left,
  each against dense.  Served by static batching (docs/planning.md).  `+`/`-` re-rank it;
  `e` puts the plan in the JSON, `E` on this tab writes the plan's CSV.

## Sources and trust
* Timing: **measured** (on this device, from the cache) > **shipped** (a table measured on
  that GPU) > **interpolated** (between measured shapes) > **solved** (the CPU's framework
  overhead, solved from timed model clones, not timed itself) > **unstable** (measured, but its
  rounds disagreed or the machine was busy: priced no better than interpolated) >
  **estimated** (a labelled stand-in kernel) > **roofline** (datasheet) > **unsupported**
  (no kernel here: runs dense).
* Every speedup has an **interval** (about 95 %, from the uncertainties of the ops behind
  it): the table's interval column, the panels' source line.  Speedups whose intervals
  overlap are a tie: the lower quality loss wins.
* **↑** the speedup lies above the family's physical ceiling (the dense model's least
  possible work over the pruned one's); **≠** the dense and the pruned model's own kernels
  were measured under different load.  Flagged points are never recommended; the panel
  says how many faster ones were skipped.
* Quality: **prior** (published results, cited), **own CSV**, **measured ppl**, or
  **composed** (a combination's, from its parts' by the rule you pick: × or +).  Marks:
  ᵉ extrapolated past the data (shown, not recommended unless you rank them in the setup),
  ᵇ borrowed from a similar model (never below a larger model of its line with data there),
  ˢ secondary source, ᶜ composed, ᵒ measured on an oracle (dynamic depth and sparse attention
  by `pis-tui quality` compute every update, then skip it: an upper bound on quality, used
  only where nothing else is measured at that point).
* Quality method (setup): the **family mean** of the published methods, the **best** single
  method for the model, or one method by name; each recommendation names it.
* On screen quality loss is a percentage; in exported files it is a fraction (0.10 = 10 %).
"""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 90%; max-width: 110; height: 90%; border: thick $primary; background: $surface;
    }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll() as v:
            v.border_title = "help · esc to close"
            yield Markdown(HELP)

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)

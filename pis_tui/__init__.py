"""pis-tui: measured speedups and quality costs of LLM pruning, per phase, per GPU."""

__version__ = "0.1.0"

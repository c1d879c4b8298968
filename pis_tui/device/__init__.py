"""Devices: the GPU profiles pis-tui ships and the machine it runs on.

One job a module: :mod:`.gpus` (the profiles in ``profiles/gpus/``, each figure with its source,
and the efficiency block the analytical model reads), :mod:`.local` (what this machine is: CPU,
NVML, nvidia-smi and torch probes, GPU conditions, a profile made up for an unknown GPU, the
device measuring is pinned to, a tensor-parallel rank's share of the cores), :mod:`.choose`
(a ``--gpu`` name: ``local`` or a shipped profile).  torch is asked only by the measuring
commands.
"""

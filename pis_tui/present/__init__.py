"""What leaves the tool: the ``pis-tui/1`` JSON document, CSV, and the checks on output paths.

One job a module: :mod:`.export` (serialising sweeps, recommendations and plans; the JSON Schema
in ``schema/``, whose lists of names are generated from the registries), :mod:`.output_paths`
(an output path is checked before anything is computed).
"""

"""Real pruning of a loaded Hugging Face causal LM, one function per family, by importance.

This is the measured-quality side of pis-tui: it changes a model the way a family says
(layers gone, widths sliced, weights zeroed, linears factorised, sublayers or attention
blocks skipped per token) so that its perplexity can be measured.  Every function works
in place on a model of the Llama layout (``model.model.layers[i].self_attn.{q,k,v,o}_proj``
and ``.mlp.{gate,up,down}_proj``: Llama, Qwen2/2.5/3, Mistral and their kin).

Importance comes from one calibration pass (:func:`calibrate`) over token windows:

* ``static_depth``: ShortGPT's Block Influence, BI = 1 − cos(x_in, x_out) of a layer's (or,
  with ``granularity="sublayer"``, of an attention / MLP block's) input and output hidden
  states, averaged over tokens; the least influential floor(s·n + 0.5) are dropped.
* ``static_width``: activation magnitude: the L2 norm over calibration tokens of the
  input of o_proj (per head, summed over a GQA group) and of down_proj (per MLP channel).
  Whole GQA groups are removed; MLP channels are kept in multiples of ``align``.
* ``semi_structured_24`` and ``unstructured``: Wanda scores |W_ij|·‖X_j‖₂ (one pass over
  the dense model, not Wanda's layer-by-layer sequential variant); 2:4 keeps 2 of every 4
  consecutive input weights, unstructured keeps the top (1−s) of each output row.
* ``low_rank``: plain truncated SVD of each decoder linear (not activation-aware like
  Dobi-SVD or ASVD, so it is a pessimistic stand-in for those methods).
* ``dynamic_depth``: forward hooks that compute each attention / MLP update and zero it for
  the share s of tokens whose update norm ‖f(x)‖ is smallest in their sequence.  This is a
  quality *oracle* (it still computes every update and looks at the whole window to rank
  tokens): it bounds what a learned router skipping the same share could reach and is
  no speed path at all.
* ``dynamic_sparse_attention``: block-sparse causal attention keeping, per query block,
  the top (1−s) of its causal key blocks by pooled q·k score (the diagonal block always
  kept).  Also an oracle: the scores are computed from the full q and k.
* the expert-level families (``expert_pruning``, ``topk_reduction``, ``dynamic_topk``,
  ``expert_slimming``) act on transformers' own MoE classes as they are, not the Llama layout
  (:mod:`.experts`): experts kept per layer by how many calibration tokens were routed to them,
  k set on every router, each expert's channels by activation, dynamic top-k as a router
  wrapper whose dropped slots the grouped GEMMs skip.
* ``static_width_hidden`` (SliceGPT-like) is not implemented: its family's
  ``quality_unsupported`` says why (:func:`unsupported`).

The torch kit over real Hugging Face models, below the family registry: each family's hooks
(``pis_tui/families``) call down into it, and it imports no registry
(:func:`pis_tui.families.prune.apply` is the one entry point by family name).  torch and
transformers are imported inside the functions only.  One job a module: :mod:`.layout` (the
decoder's layers and linears), :mod:`.calibration` (importance statistics), :mod:`.structured`
(depth, width, low rank), :mod:`.masks` (2:4 and unstructured by Wanda; a built model's
masks), :mod:`.oracles` (the dynamic families), :mod:`.result`, :mod:`.config` (a pruned
model's dims and transformers config), :mod:`.modules` (the wrapper modules validate builds),
:mod:`.attention` (the attention implementations), :mod:`.experts` (the routed experts'
surgery and criteria), :mod:`.perplexity`.
"""

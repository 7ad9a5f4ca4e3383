"""The GPT model family (Flax NNX). Modules are imported explicitly, never here, so that
`mylm_jax.model.accounting` (parameter and FLOP counts) stays importable without jax:

    layers.py     parameters with logical axes, Dense, norms, RoPE, MLP
    init.py       initialisation schemes by name
    attention.py  causal GQA attention, QK-norm, gated attention; reference and fast kernels
    moe.py        mixture-of-experts feed-forward with load-balancing and z-loss
    gpt.py        the decoder: blocks, embeddings, head
    stack.py      the layer stack: unrolled or under nnx.scan, with rematerialisation
    layout.py     the scanned stack's segments; unrolled <-> scanned weight layouts
    params.py     flat views of the parameters (paths, logical axes, counts)
    accounting.py parameter count and training FLOPs per token from the config alone
"""

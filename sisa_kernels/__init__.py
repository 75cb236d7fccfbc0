"""Fused Triton kernels for SISA attention.

Triton only, and nothing of ``sisa``: the package ``sisa`` imports these modules
lazily, so importing ``sisa_kernels`` itself never touches Triton and works on
machines without it. Submodules:

- ``sisa_kernels.scan``: the SSM importance scan (g, Phi, rotated C and B).
- ``sisa_kernels.attention`` / ``attention_bwd`` / ``attention_op``: FlashAttention-style
  SISA attention, forward, backward, and the torch custom op that ties them.
- ``sisa_kernels.decode``: split-K attention of a few new queries over a long cache.

Each sits beside a ``*_ref.py``: the same blocked maths in plain PyTorch.
"""

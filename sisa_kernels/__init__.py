"""Fused Triton kernels for SISA attention.

Triton only, and nothing of ``sisa``: the package ``sisa`` imports these modules
lazily, so importing ``sisa_kernels`` itself never touches Triton and works on
machines without it. Submodules:

- ``sisa_kernels.scan``: the SSM importance scan (g, Phi, rotated C and B).
- ``sisa_kernels.attention``: FlashAttention-style SISA attention.
"""

"""Layer-wise PT vs FT similarity: token cosine and linear CKA (``metrics``), their confidence
intervals (``intervals``), the streaming per-layer statistics of the compare stage
(``accumulator``, with its fast matmul paths in ``_kernels``) and linear probes (``probes``).

Import from the submodules; this file re-exports nothing, so a stage's import closure names
exactly the modules it uses.
"""

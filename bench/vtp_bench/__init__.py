"""vtp_gen's benchmark pieces, used by ``bench/run.py``, ``bench/gpu_mfu.py`` and ``bench/stage2_vs_reference.py``.

``timing`` (interleaved rounds on a noisy machine), ``memory`` (peak memory of
one call), ``suite`` (groups measured together: ratios, FLOP rate, MFU against
a matmul probe), ``results`` (CSV rows, the printed table, targets), and the
workloads: ``stage1``, ``stage2``, ``caching``; for the GPU check ``recipes``
(real steps of the GPU recipes) and ``precision`` (bf16 against fp32). FLOPs
are counted by :mod:`vtp_gen.utils.flops`.
"""

"""vtp_gen's performance harness: what each pipeline step costs, beside a baseline, in one run.

``bench/run.py`` is the command (``make bench``); ``bench/gpu_mfu.py`` the
one-command GPU check. The modules here are the pieces: ``timing``
(interleaved repetitions on a noisy machine), ``flops`` (FLOP counts and the
matmul peak), ``memory`` (peak memory of one call), ``suite`` (groups of
workloads measured together, ratios and MFU), ``report`` (table and JSON),
and one module per pipeline step that builds its workloads.
"""

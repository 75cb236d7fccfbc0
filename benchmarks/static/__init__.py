"""Static resource report of every Triton kernel config the launchers may pick, per
GPU target and input dtype, without a GPU.

    python -m benchmarks.static [--arch sm_80,sm_86,sm_89,sm_90,sm_100,sm_120]
                                [--dtypes bf16,fp16,fp32] [--quick] [--jobs N] [--force]

Every kernel is compiled for each target (``targets.TARGETS``: capability and limits)
through Triton's real argument specialisation, as a launch on that GPU would see it:
a stand-in driver for the target is made active, the project's own launchers are
called on CPU tensors of realistic shapes (b=1, t=4096, h=8, contiguous) with their
launches intercepted and their device queries answered as the target would
(``standin``), and each intercepted call is compiled with ``kernel.warmup``
(``plan`` says what is compiled, ``analyse`` what is read from it, ``report`` how it
is written). A FlashAttention-2 forward (``yardstick``) is compiled beside them.

One JSON and one markdown file per (arch, dtype) in ``--out`` (default
benchmarks/results/static/), e.g. ``sm80_fp32.json``; each carries one fingerprint per
kernel family, of the sources and table entries its rows were compiled from
(``report.fingerprint``), and a run recompiles only the families whose fingerprint
changed, keeping the other rows, and skips a pair with none (``--force`` recompiles
everything), so an interrupted run resumes where it stopped. Compiles run in a process pool (``--jobs``, default 2) whose
workers end with the report however it ends. TRITON_INTERPRET is removed from the
environment before Triton is imported (the compile needs the compiler).

``--device`` (on a GPU; ``benchmarks/gpu_check.sh`` runs it): the same compiles for
this GPU's arch through the real driver, each row also holding the registers and local
(spill) bytes the driver reports once the cubin is loaded, and a printed list of the
rows where they disagree with ptxas's figures.

No module of this package is imported here: ``python -m benchmarks.static`` must drop
TRITON_INTERPRET before anything imports Triton.
"""

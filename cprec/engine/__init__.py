"""The engine: a run's set-up (``build``), the loop (``trainer``), one optimizer step and
its plug points (``step``), checkpoints and run-directory I/O (``checkpoint``, ``runs``),
metric sinks (``loggers``), data parallelism (``distributed``, ``data_parallel``,
``collectives``), sharing the cores with other runs (``threads``), the terminal progress
bar (``progress``) and the allocator tuning (``memory``). It takes a
typed config; it never reads Hydra.
"""

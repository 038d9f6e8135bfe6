"""The benchmark of rebootshim against containerd-shim-runc-v2 (``make bench``).

Modules: env (the private containerd, ctr, shims, writable layers), procfs
(memory, fds, children, mounts of a process), stats (samples, figures,
targets), one module per figure (downtime, lifecycle, memory, throughput,
storm), report (docs/benchmarks.md and a JSON) and __main__ (the CLI).
"""

"""Benchmark suites of sequax, run from the repository root (not part of the installed package).

    python -m benchmarks.scale    # MFU, 1/2/4/8 devices, N vmapped seeds (docs/benchmarks.md)
    python -m benchmarks.stream   # grain streaming against torch's DataLoader and the device path
    python -m benchmarks.fisher   # EWC's end-of-task Fisher, dense and per-example paths
    python -m benchmarks.online   # online task-free Split MNIST: ER, MIR, GSS against PyTorch
    python -m benchmarks.gpu      # the GPU section: sequax against a PyTorch loop on one GPU

The product's own benchmark, sequax against a plain PyTorch loop, is `python -m
sequax.launch.bench`; these suites build on its cells. See benchmarks/README.md.
"""

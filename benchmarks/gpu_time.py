"""The `time` part of `benchmarks.gpu`: time to result on one GPU (issue "Time to result",
item 7), sequax cold and warm against the plain PyTorch loop, in the same run.

    python -m benchmarks.gpu --parts=time --results=/tmp/gpu.json     # on the GPU machine

Cells, each in its own process, from the process's start to its summary:

- PMNIST-10 naive (`bench --single=pmnist10,naive,...`, as the CPU time suite runs it): sequax
  cold (a fresh compilation cache) then warm (the same cache: XLA's and the whole programs of
  `engine/program_cache.py`), with a verified checkpoint after every task; the PyTorch loop
  on the GPU (`--torch_device=cuda`).
- Split CIFAR-10 with the ResNet-18 (`benchmarks.gpu`'s `cifar` cell, naive), the same three.

The targets (the issue's GPU rows): PMNIST-10 naive's whole stream warm in at most 3 s, and
Split CIFAR-10 ResNet-18's time to result at least 2x shorter than the PyTorch loop's.
"""

from __future__ import annotations

import os

RUNS = ("cold", "warm", "torch")
CELLS = (("pmnist10", "PMNIST-10 naive"), ("cifar", "S-CIFAR-10 ResNet-18 naive"))


def time_part(folder: str, pmnist_child, cifar_child, timed) -> dict:
    """{"pmnist10,cold": result, ...}: `pmnist_child(run, env)` and `cifar_child(run, env)`
    run one cell in its own process (`env`: the compilation cache's folder, shared by the cold
    and warm cells); `timed(label, fn)` reports and times it."""
    env = {**os.environ, "SEQUAX_COMPILATION_CACHE": os.path.join(folder, "time-cache")}
    results = {}
    for workload, title in CELLS:
        child = pmnist_child if workload == "pmnist10" else cifar_child
        for run in RUNS:
            results[f"{workload},{run}"] = timed(f"{title} {run}", lambda c=child, r=run: c(r, env))
    return results


def targets(cells: dict) -> list[tuple[str, str, str]]:
    rows = []
    warm = cells.get("pmnist10,warm")
    if warm:
        ok = warm["time_to_result"] <= 3.0
        rows.append(("PMNIST-10 naive: whole stream ≤ 3 s with a warm cache (time to result)",
                     f"{warm['time_to_result']:.2f} s", "PASS" if ok else "FAIL"))  # fmt: skip
    warm, torch = cells.get("cifar,warm"), cells.get("cifar,torch")
    if warm and torch:
        ratio = torch["time_to_result"] / warm["time_to_result"]
        rows.append(("S-CIFAR-10 ResNet-18: time to result ≥ 2× shorter than torch (warm)",
                     f"{ratio:.2f}×", "PASS" if ratio >= 2.0 else "FAIL"))  # fmt: skip
    return rows


def report(cells: dict) -> list[str]:
    """The section's lines for the `time` part's cells."""
    lines = [
        "",
        "### Time to result: process start to summary",
        "",
        "Each cell in its own process; sequax cold (a fresh compilation cache) then warm (the "
        "same cache), with a verified checkpoint after every task (PMNIST-10); the PyTorch loop "
        "on the same GPU. Seconds from the process's start to its summary "
        "(`benchmarks/gpu_time.py`).",
        "",
        "| workload | run | time to result s | compile s | train s | eval s | acc % |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for workload, title in CELLS:
        for run in RUNS:
            c = cells.get(f"{workload},{run}")
            if not c:
                lines.append(f"| {title} | {run} | failed | | | | |")
                continue
            compile_s = "–" if run == "torch" else f"{c.get('compile', 0.0):.2f}"
            lines.append(
                f"| {title} | {run} | {c['time_to_result']:.2f} | {compile_s} | "
                f"{c.get('train', 0.0):.2f} | {c.get('eval', 0.0):.2f} | {c.get('acc', 0.0):.2f} |"
            )
    rows = targets(cells)
    if rows:
        lines += ["", "| target | measured | result |", "| --- | --- | --- |"]
        lines += [f"| {n} | {m} | {v} |" for n, m, v in rows]
    return lines

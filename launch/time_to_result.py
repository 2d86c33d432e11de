"""`bench`'s time-to-result suite: process start to summary, sequax cold and warm against the
plain PyTorch loop, in the same run (issue "Time to result").

Each cell runs in its own process (`bench --single`), so every figure includes the
interpreter's start and the imports. sequax runs twice on one fresh compilation cache: cold
(every program compiled) and warm (every program loaded from the cache, as a rerun is), with
its default verified checkpoint after every task. The PyTorch loop (`launch/torch_loop.py`)
does the same work eagerly and saves nothing. The breakdown is `engine.clock`'s.

    python -m sequax.launch.bench --suites=time

Its section goes where bench puts every section: `--output` (runs/bench/benchmarks.md by
default) and, with `--update_docs`, the repository's docs/benchmarks.md.
"""

from __future__ import annotations

import os
import tempfile
import time

from sequax.engine.clock import SECTIONS

CELLS = (("pmnist10", "naive"), ("smnist5", "er"), ("rmnist20", "naive"))
RUNS = ("cold", "warm", "torch")


def time_suite(run_child, timed, titles: dict) -> tuple[dict, float]:
    """{(workload, method, run): result} of every cell, and the suite's seconds."""
    start, results = time.perf_counter(), {}
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "SEQUAX_COMPILATION_CACHE": os.path.join(folder, "xla")}
        for workload, method in CELLS:
            for run in RUNS:
                framework = "torch" if run == "torch" else "sequax"
                options = "" if run == "torch" else "checkpoints"

                def cell(w=workload, m=method, f=framework, o=options, r=run):
                    return run_child(w, m, f, folder, options=o, env=env, name=f"_{r}")

                result = timed(f"{titles[workload]} {method} {run}", cell)
                if result is not None:
                    results[(workload, method, run)] = result
    return results, time.perf_counter() - start


def outside(result: dict) -> float:
    """The share of the time to result spent outside training and evaluation."""
    total = result["time_to_result"]
    return (total - result["train"] - result["eval"]) / max(total, 1e-9)


def tables(results: dict, titles: dict) -> str:
    lines = [
        "| workload | method | run | time to result s | " + " | ".join(SECTIONS)
        + " | programs (from cache) | outside train+eval | acc % |",
        "| --- | --- | --- | ---: | " + " | ".join("---:" for _ in SECTIONS)
        + " | ---: | ---: | ---: |",
    ]  # fmt: skip
    for workload, method in CELLS:
        for run in RUNS:
            c = results.get((workload, method, run))
            name = f"| {titles[workload]} | {method} | {run} |"
            if c is None:
                lines.append(f"{name} failed |" + " |" * (len(SECTIONS) + 3))
                continue
            if run == "torch":  # the eager loop: no compile, no checkpoint, data inside "other"
                sections = [c.get("startup", 0.0), None, None, c["train"], c["end_task"],
                            c["eval"], None, None]  # fmt: skip
                programs = "–"
            else:
                sections = [c[key] for key in SECTIONS]
                programs = f"{c['compile_count']} ({c['cache_hits']})"
            shown = " | ".join("–" if s is None else f"{s:.2f}" for s in sections)
            lines.append(f"{name} {c['time_to_result']:.2f} | {shown} | {programs} "
                         f"| {100 * outside(c):.0f} % | {c['acc']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def targets(results: dict) -> list[tuple[str, str, str]]:
    """(target, measured, PASS/FAIL) for the issue's CPU targets this run measured."""
    rows = []

    def get(w, m, r):
        return results.get((w, m, r))

    cold, warm, torch = (get("pmnist10", "naive", r) for r in RUNS)
    if cold and warm:
        rows.append(("PMNIST-10 naive: outside train+eval ≤ 15 % of the wall (warm)",
                     f"{100 * outside(warm):.0f} %", outside(warm) <= 0.15))  # fmt: skip
        rows.append(("PMNIST-10 naive: warm rerun compiles ≤ 0.5 s in total",
                     f"{warm['compile']:.2f} s", warm["compile"] <= 0.5))  # fmt: skip
    if warm and torch:
        ratio = torch["time_to_result"] / warm["time_to_result"]
        rows.append(("PMNIST-10 naive: time to result ≥ 2.5× shorter than torch (warm)",
                     f"{ratio:.2f}×", ratio >= 2.5))  # fmt: skip
    if cold and torch:
        ratio = torch["time_to_result"] / cold["time_to_result"]
        rows.append(("PMNIST-10 naive: the same, cold (for the record)", f"{ratio:.2f}×", None))
    s_warm, s_torch = get("smnist5", "er", "warm"), get("smnist5", "er", "torch")
    if s_warm and s_torch:
        ratio = s_torch["time_to_result"] / s_warm["time_to_result"]
        rows.append(("SMNIST-5 ER: time to result ≥ 2× shorter than torch (warm)",
                     f"{ratio:.2f}×", ratio >= 2.0))  # fmt: skip
    return [(n, m, "–" if ok is None else ("PASS" if ok else "FAIL")) for n, m, ok in rows]


def report(results: dict, titles: dict, header: list[str]) -> str:
    lines = [
        "## Time to result: process start to summary",
        "",
        "Each cell in its own process; sequax cold (fresh compilation cache) then warm (the same "
        "cache), with a verified checkpoint after every task; the plain PyTorch loop in the same "
        "run. Seconds, from the process's start (`/proc`) to its summary.",
        *header,
        "",
        tables(results, titles),
        "",
        "| target | measured | result |",
        "| --- | --- | --- |",
        *(f"| {n} | {m} | {v} |" for n, m, v in targets(results)),
        "",
        "Sections (`sequax.engine.clock`): startup = interpreter, imports and config; data = "
        "reading the files and placing them on the device; compile = every trace, lowering and "
        "XLA compile or cache load, per program in each run's summary.json; end_task = the task "
        "boundaries; checkpoint = what saving holds training up (a copy of the state on "
        "the device; writing and verifying overlap training; the last save is waited for at "
        "the end); other = the rest. The torch "
        "loop reads, permutes or rotates its data inside its wall (shown under no section).",
    ]
    return "\n".join(lines)

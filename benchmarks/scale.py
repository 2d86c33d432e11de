"""The scale suite: sequax alone, at scale (the "At scale" section of docs/benchmarks.md).

    python -m benchmarks.scale                                   # from the repository root
    python -m benchmarks.scale --workloads=pmnist10 --tasks=2 --train_per_task=3000 --output=
    python -m benchmarks.scale --update_docs                     # + docs/benchmarks.md

The section goes into `--output` (bench's: runs/bench/benchmarks.md by default), its plots and
raw cells into img/ beside it; `--update_docs` also into the repository's docs/benchmarks.md
and docs/img/ (with `--output=` and no `--update_docs` nothing is written: it only prints).

Per workload and method (one device, one run): samples/s per device, compile time, step
time, MFU, peak host memory and the compiled program's memory; then the scaling of
PMNIST-10 naive over 1/2/4/8 devices (fake CPU devices when the machine has no others) and
of N vmapped runs (seeds) in one program, with plots. Every cell runs in its own process
(`--single=...`: a cell of `sequax.launch.bench`, or the matmul peak), so its peak RSS is its
own and its device count is fixed at start. The workload flags (`--workloads`, `--tasks`,
`--train_per_task`, `--output`) are `sequax.launch.bench`'s.

MFU = XLA's FLOP count of one compiled train step (`cost_analysis`, the loop body counted
once) × steps / training time / the machine's fp32 matmul peak, measured in the same
benchmark run by `measure_peak` (the best of large square matmuls in JAX).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from sequax.launch import bench  # its flags too: --workloads, --tasks, --output, --single, ...
from sequax.launch.common import define_update_docs, machine

# Not --methods: that is bench's (the compare cells), defined in this program too.
_SCALE_METHODS = flags.DEFINE_string(
    "scale_methods", "naive,er,ewc,derpp", "Methods of the per-method table."
)
FLAGS = flags.FLAGS
define_update_docs()  # bench's flag, listed in this program's --help too
REPO_ROOT = Path(__file__).resolve().parents[1]  # where `python -m benchmarks.scale` resolves

PEAK_SIZES = (1024, 2048, 4096)
DEVICE_COUNTS = (1, 2, 4, 8)
RUN_COUNTS = (1, 2, 4, 8)


def measure_peak() -> dict:
    """The best fp32 GFLOP/s of a jitted square matmul (all cores, XLA's default threads)."""
    import jax
    import jax.numpy as jnp

    best = {}
    for n in PEAK_SIZES:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
        f = jax.jit(lambda a: a @ a)
        f(a).block_until_ready()
        reps = max(3, int(2e10 // (2 * n**3)))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(reps):
                out = f(a)
            out.block_until_ready()
            times.append((time.perf_counter() - t0) / reps)
        best[n] = 2 * n**3 / min(times) / 1e9
    return {
        "gflops": max(best.values()),
        "by_size": best,
        "device": str(jax.devices()[0].device_kind),
    }


def child(
    spec: str, folder: str, extra_flags: list[str], devices: int = 1, timeout: int = 3600
) -> dict | None:
    """Runs `--single=spec` in a fresh process with `devices` (fake CPU) devices."""
    out = os.path.join(folder, spec.replace(",", "_").replace("=", "") + ".json")
    env = dict(os.environ)
    if devices > 1:
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
        ).strip()
    command = [
        sys.executable,
        "-m",
        "benchmarks.scale",
        f"--single={spec}",
        f"--json_out={out}",
        *extra_flags,
    ]
    done = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO_ROOT,
    )
    if done.returncode != 0:
        print(f"  FAILED ({done.returncode}):\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(Path(out).read_text())


def derived(cell: dict, peak_gflops: float) -> dict:
    """Per-device rate, step time, achieved GFLOP/s and MFU of one sequax cell."""
    steps = max(cell.get("train_steps", 0), 1)
    devices = cell.get("devices", 1)
    step_s = cell["train"] / steps
    flops = cell.get("step_flops", 0.0) * devices  # cost_analysis is one device's program
    achieved = flops * steps / max(cell["train"], 1e-9) / 1e9
    return dict(
        per_device=cell["samples_per_s"] / devices,
        step_ms=1e3 * step_s,
        gflops_step=flops / 1e9,
        achieved=achieved,
        mfu=100.0 * achieved / peak_gflops,
    )


def method_table(cells: dict, peak: float, titles: dict) -> str:
    lines = [
        "| workload | method | samples/s/device | step ms | compile s | GFLOP/step | GFLOP/s "
        "| MFU % | peak RSS MiB | program MiB | acc % |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (workload, method), c in cells.items():
        if c is None:
            lines.append(f"| {titles[workload]} | {method} | failed |" + " |" * 8)
            continue
        d = derived(c, peak)
        lines.append(
            f"| {titles[workload]} | {method} | {d['per_device']:,.0f} | {d['step_ms']:.3f} "
            f"| {c['compile']:.1f} | {d['gflops_step']:.3f} | {d['achieved']:.1f} | {d['mfu']:.1f} "
            f"| {c['rss_mib']:.0f} | {c.get('program_bytes', 0) / 2**20:.0f} | {c['acc']:.2f} |"
        )
    return "\n".join(lines)


def devices_table(cells: dict, peak: float) -> str:
    lines = [
        "| devices | samples/s (all) | samples/s/device | step ms | compile s | MFU % "
        "| peak RSS MiB | acc % |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, c in cells.items():
        if c is None:
            lines.append(f"| {n} | failed |" + " |" * 6)
            continue
        d = derived(c, peak)
        lines.append(
            f"| {n} | {c['samples_per_s']:,.0f} | {d['per_device']:,.0f} | {d['step_ms']:.3f} | "
            f"{c['compile']:.1f} | {d['mfu']:.1f} | {c['rss_mib']:.0f} | {c['acc']:.2f} |"
        )
    return "\n".join(lines)


def runs_table(cells: dict, peak: float) -> str:
    base = cells.get(1)
    lines = [
        "| runs | wall s | × one run | train s | × one run | eval s | samples/s (all runs) | MFU % "
        "| peak RSS MiB | acc % (mean ± std) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, c in cells.items():
        if c is None:
            lines.append(f"| {n} | failed |" + " |" * 8)
            continue
        d = derived(c, peak)
        wall_x = f"{c['wall'] / base['wall']:.2f}×" if base else ""
        train_x = f"{c['train'] / base['train']:.2f}×" if base else ""
        accs = np.asarray(c["accs"])
        acc = f"{accs.mean():.2f} ± {accs.std(ddof=1):.2f}" if len(accs) > 1 else f"{accs[0]:.2f}"
        lines.append(
            f"| {n} | {c['wall']:.1f} | {wall_x} | {c['train']:.1f} | {train_x} | {c['eval']:.1f} "
            f"| {c['samples_per_s']:,.0f} | {d['mfu']:.1f} | {c['rss_mib']:.0f} | {acc} |"
        )
    return "\n".join(lines)


def lower_bound(one: dict, runs: int, peak_gflops: float) -> dict:
    """The least wall-time ratio `runs` vmapped runs can reach, if all their FLOPs ran at the
    measured peak and the fixed costs (everything but training and evaluation) were shared.

    Evaluation FLOPs are counted from the workload's MLP: 2 x multiply-adds per test image,
    every task's test set after every phase and once before training.
    """
    train_flops = one.get("step_flops", 0.0) * one.get("devices", 1) * one["train_steps"]
    eval_flops = one.get("eval_flops", 0.0)
    compute_s = runs * (train_flops + eval_flops) / (peak_gflops * 1e9)
    fixed_s = max(one["wall"] - one["train"] - one["eval"], 0.0)
    return dict(
        ratio=(compute_s + fixed_s) / one["wall"],
        compute_s=compute_s,
        fixed_s=fixed_s,
        train_mfu=100.0 * train_flops / max(one["train"], 1e-9) / (peak_gflops * 1e9),
        eval_mfu=100.0 * eval_flops / max(one["eval"], 1e-9) / (peak_gflops * 1e9),
    )


def plot(
    device_cells: dict, run_cells: dict, folder: Path, peak: float, split_cells: dict | None = None
) -> list[str]:
    """Two PNGs: throughput over devices; wall time over vmapped runs, for one device and (if
    measured) the runs split one group per core, with N separate runs, the 3× target and the
    physical floor (all runs' FLOPs at the measured peak, plus the fixed costs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    ok = {n: c for n, c in device_cells.items() if c}
    if ok:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        n = sorted(ok)
        ax.plot(n, [ok[k]["samples_per_s"] for k in n], "o-", label="all devices")
        ax.plot(n, [ok[k]["samples_per_s"] / k for k in n], "s--", label="per device")
        ax.set_xscale("log", base=2)
        ax.set_xticks(n, [str(k) for k in n])
        ax.set_xlabel("devices (data axis)")
        ax.set_ylabel("training samples/s")
        ax.set_title("PMNIST-10 naive: batch split over devices")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "scale_devices.png", dpi=110)
        plt.close(fig)
        written.append(str(folder / "scale_devices.png"))
    ok = {n: c for n, c in run_cells.items() if c}
    if ok and 1 in ok:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        n = sorted(ok)
        ax.plot(n, [ok[k]["wall"] / ok[1]["wall"] for k in n], "o-", label="wall, one device")
        split = {k: c for k, c in (split_cells or {}).items() if c}
        if split:
            m = [1, *sorted(split)]
            ax.plot(
                m,
                [1.0] + [split[k]["wall"] / ok[1]["wall"] for k in m[1:]],
                "s-",
                label="wall, runs split per core",
            )
        ax.plot(
            n,
            [lower_bound(ok[1], k, peak)["ratio"] for k in n],
            "v--",
            color="black",
            lw=0.8,
            label="floor: FLOPs at peak + fixed",
        )
        ax.plot(n, n, ":", color="gray", label="N separate runs")
        ax.axhline(3, color="red", lw=0.8, ls="--", label="target at 8 runs: 3×")
        ax.set_xlabel("vmapped runs (seeds) in one program")
        ax.set_ylabel("wall time / one run's")
        ax.set_title("PMNIST-10 naive: N seeds at once")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "scale_runs.png", dpi=110)
        plt.close(fig)
        written.append(str(folder / "scale_runs.png"))
    return written


def save_images(folders: list[Path], raw: dict, peak: float) -> list[str]:
    """The plots and scale_cells.json, drawn into the first folder's img/ and copied into the
    others'; the plots' names (none when there is no folder: the section is only printed)."""
    if not folders:
        return []
    first = folders[0] / "img"
    images = plot(raw["devices"], raw["runs"].get("pmnist10", {}), first, peak,
                  raw["split"].get("pmnist10"))  # fmt: skip
    (first / "scale_cells.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    for folder in folders[1:]:
        (folder / "img").mkdir(parents=True, exist_ok=True)
        for name in [Path(p).name for p in images] + ["scale_cells.json"]:
            shutil.copy(first / name, folder / "img" / name)
    return images


def suite(workloads, info, folders: list[Path]) -> str:
    """Runs every cell in its own process; returns the markdown section. Its plots and raw
    cells go into img/ of every folder in `folders` (those of the documents the section goes
    into, so its image links resolve in each)."""
    start = time.perf_counter()
    extra = [f"--tasks={FLAGS.tasks}", f"--train_per_task={FLAGS.train_per_task}"]
    titles = {w: bench.WORKLOADS[w]["title"] for w in bench.WORKLOADS}

    def cell(spec, devices=1):
        return bench.timed(
            f"scale {spec} on {devices} device(s)",
            lambda: child(spec, folder, extra, devices),
        )

    with tempfile.TemporaryDirectory() as folder:
        peak = child("peak", folder, extra)
        print(f"fp32 matmul peak: {peak['gflops']:.1f} GFLOP/s", flush=True)
        methods = [m for m in _SCALE_METHODS.value.split(",") if m]
        per_method = {(w, m): cell(f"{w},{m},sequax") for w in workloads for m in methods}
        devices = {n: cell("pmnist10,naive,sequax", n) for n in DEVICE_COUNTS}
        runs = {w: {n: cell(f"{w},naive,sequax,r{n}") for n in RUN_COUNTS} for w in workloads}
        # The same runs split over one CPU device per core (mesh runs axis): each core trains
        # its own runs with no communication, instead of splitting every small matmul in two.
        cores = len(os.sched_getaffinity(0))
        split = (
            {
                w: {
                    n: cell(f"{w},naive,sequax,r{n},m{cores}", cores)
                    for n in RUN_COUNTS
                    if n % cores == 0
                }
                for w in workloads
            }
            if cores > 1
            else {}
        )
    raw = dict(  # the raw cells, so tables and plots can be checked or redrawn later
        peak=peak,
        per_method={f"{w},{m}": c for (w, m), c in per_method.items()},
        devices=devices,
        runs=runs,
        split=split,
    )
    images = save_images(folders, raw, peak["gflops"])
    g = peak["gflops"]
    lines = [
        "## At scale: MFU, devices, vmapped runs",
        "",
        "sequax alone (`benchmarks/py`), each cell in its own process.",
        *bench.header(info, time.perf_counter() - start, "scale", program="benchmarks.scale"),
        f"- Measured fp32 matmul peak (best of {', '.join(f'{n}²' for n in PEAK_SIZES)} in JAX, "
        f"all cores): **{g:.1f} GFLOP/s** ("
        + ", ".join(f"{n}²: {v:.0f}" for n, v in peak["by_size"].items())
        + ").",
        "",
        "### Per workload and method (1 device, 1 run)",
        "",
        method_table(per_method, g, titles),
        "",
        "### PMNIST-10 naive over 1/2/4/8 devices",
        "",
        "The batch (128) is split over the `data` axis; the task's examples and the reservoir over "
        "the devices. On a CPU machine the devices are fake "
        "(`--xla_force_host_platform_device_count`) and share the same cores, so this measures "
        "what partitioning costs, not a speed-up.",
        "",
        devices_table(devices, g),
        "",
    ]
    for w, cells in runs.items():
        lines += [
            f"### {titles[w]} naive: N seeds vmapped in one program",
            "",
            "One device (XLA's default: every op may use every core):",
            "",
            runs_table(cells, g),
            "",
        ]
        if split.get(w):
            lines += [
                f"The same runs split over {cores} CPU devices, one per core "
                f"(`config.mesh.runs={cores}`, `--xla_force_host_platform_device_count={cores}`; × "
                "is against one run on one device):",
                "",
                runs_table({1: cells.get(1), **split[w]}, g),
                "",
            ]
    lines += [f"![{Path(p).stem}](img/{Path(p).name})" for p in images]
    base = runs.get("pmnist10", {}).get(1)
    eights = [c for c in (runs.get("pmnist10", {}).get(8), split.get("pmnist10", {}).get(8)) if c]
    if base and eights:
        best = min(eights, key=lambda c: c["wall"])
        ratio = best["wall"] / base["wall"]
        bound = lower_bound(base, 8, g)
        lines += [
            "",
            "### Target",
            "",
            "| target | measured | result |",
            "| --- | --- | --- |",
            f"| 8 vmapped seeds of PMNIST-10 naive ≤ 3× the wall time of one seed | {ratio:.2f}× "
            f"(best of the two layouts) | {'PASS' if ratio <= 3.0 else 'FAIL'} |",
            "",
            f"Physical floor on this machine: {bound['ratio']:.2f}×. One run trains at "
            f"{bound['train_mfu']:.0f}% MFU and evaluates at about {bound['eval_mfu']:.0f}% "
            f"(XLA's FLOPs of the step; the evaluation's FLOPs counted from the MLP), so 8 runs at "
            f"100% of the measured peak would still need {bound['compute_s']:.1f} s of compute "
            f"plus {bound['fixed_s']:.1f} s of the one run's fixed costs (data, task transforms, "
            f"compile), against {base['wall']:.1f} s for one run.",
        ]
    return "\n".join(lines)


def main(argv):
    logging.set_verbosity(logging.WARNING)  # orbax's per-checkpoint INFO lines
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.single == "peak":
        Path(FLAGS.json_out).write_text(json.dumps(measure_peak()))
        return
    if FLAGS.single:  # one cell of bench's, "workload,method,sequax[,rN][,mK]"
        bench.run_single(FLAGS.single, FLAGS.json_out)
        return
    workloads = [w for w in FLAGS.workloads.split(",") if w]
    unknown = sorted(set(workloads) - set(bench.WORKLOADS))
    if unknown:
        raise app.UsageError(f"unknown workloads {unknown}; known: {list(bench.WORKLOADS)}")
    paths = bench.documents(FLAGS.output, FLAGS.update_docs, REPO_ROOT)  # before any cell
    text = suite(workloads, machine(), [p.parent for p in paths])
    print("\n" + text)
    bench.publish("scale", text, paths)


if __name__ == "__main__":
    app.run(main)

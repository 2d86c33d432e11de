"""The scale suite of `python -m sequax.launch.bench --suite=scale`: sequax alone, at scale.

Per workload and method (one device, one run): samples/s per device, compile time, step
time, MFU, peak host memory and the compiled program's memory; then the scaling of
PMNIST-10 naive over 1/2/4/8 devices (fake CPU devices when the machine has no others) and
of N vmapped runs (seeds) in one program, with plots. Every cell runs in its own process
(`bench.py --single=...`), so its peak RSS is its own and its device count is fixed at start.

MFU = XLA's FLOP count of one compiled train step (`cost_analysis`, the loop body counted
once) × steps / training time / the machine's fp32 matmul peak, measured in the same
benchmark run by `measure_peak` (the best of large square matmuls in JAX).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

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
    """Runs `bench.py --single=spec` in a fresh process with `devices` (fake CPU) devices."""
    out = os.path.join(folder, spec.replace(",", "_").replace("=", "") + ".json")
    env = dict(os.environ)
    if devices > 1:
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
        ).strip()
    command = [
        sys.executable,
        "-m",
        "sequax.launch.bench",
        f"--single={spec}",
        f"--json_out={out}",
        *extra_flags,
    ]
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, env=env, timeout=timeout
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
        "| workload | method | samples/s/device | step ms | compile s | GFLOP/step | GFLOP/s | MFU % | "
        "peak RSS MiB | program MiB | acc % |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (workload, method), c in cells.items():
        if c is None:
            lines.append(f"| {titles[workload]} | {method} | failed |" + " |" * 8)
            continue
        d = derived(c, peak)
        lines.append(
            f"| {titles[workload]} | {method} | {d['per_device']:,.0f} | {d['step_ms']:.3f} | {c['compile']:.1f} | "
            f"{d['gflops_step']:.3f} | {d['achieved']:.1f} | {d['mfu']:.1f} | {c['rss_mib']:.0f} | "
            f"{c.get('program_bytes', 0) / 2**20:.0f} | {c['acc']:.2f} |"
        )
    return "\n".join(lines)


def devices_table(cells: dict, peak: float) -> str:
    lines = [
        "| devices | samples/s (all) | samples/s/device | step ms | compile s | MFU % | peak RSS MiB | acc % |",
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
        "| runs | wall s | × one run | train s | × one run | eval s | samples/s (all runs) | MFU % | "
        "peak RSS MiB | acc % (mean ± std) |",
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
            f"| {n} | {c['wall']:.1f} | {wall_x} | {c['train']:.1f} | {train_x} | {c['eval']:.1f} | "
            f"{c['samples_per_s']:,.0f} | {d['mfu']:.1f} | {c['rss_mib']:.0f} | {acc} |"
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

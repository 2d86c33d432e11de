"""The pretrained-model table: every method of issue 19 on class-incremental Split MNIST (and
B0-Inc2) from the offline Fashion-MNIST ViT, beside the same ViT trained from scratch with
naive fine-tuning and ER (docs/pretrained.md).

    python -m benchmarks.vit_pretrain                     # the checkpoint (about 5 min here)
    python -m benchmarks.vit_table --update_docs          # every cell, both protocols
    python -m benchmarks.vit_table --methods=l2p,naive --protocols=split --local   # quick

Each cell is one `python -m sequax.launch.train --config=configs/vit_split_mnist.py:METHOD,
PROTOCOL` in its own process (its workdir under --workdir), so its wall time is the run's
time to result (process start to summary: startup, data, compilation, training, evaluation).
The table reads each run's summary.json: class-IL accuracy after the last task (ACC), its
forgetting (mean over the earlier tasks of the best accuracy minus the last,
docs/metrics.md), task-IL ACC, and `timings.time_to_result`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

from sequax.configs.vit_split_mnist import METHODS, PROTOCOLS, WEIGHTS
from sequax.launch import bench
from sequax.launch.common import define_update_docs, machine

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAINS = {
    "simplecil": "class means (no gradient step)",
    "ranpac": "random projection + ridge statistics (no gradient step)",
    "l2p": "prompt pool, keys, head",
    "dualprompt": "G- and E-prompts, keys, head",
    "coda_prompt": "prompt components, keys, attention, head",
    "slca": "all (backbone at 0.01x lr) + class-Gaussian alignment",
    "naive": "all, from scratch",
    "er": "all, from scratch, reservoir of 500",
}

FLAGS = flags.FLAGS
flags.DEFINE_string("protocols", ",".join(PROTOCOLS), "split, b0inc2 or both")
flags.DEFINE_string("workdir", "runs/vit_table", "where each cell's run writes")
flags.DEFINE_string("weights", WEIGHTS, "the pretrained checkpoint (benchmarks.vit_pretrain)")
flags.DEFINE_bool("local", False, "1,000 training images per task: a quick check of the table")
define_update_docs()


def run_cell(method: str, protocol: str) -> dict:
    """One run in its own process; its summary's figures, or the failure's last line."""
    workdir = Path(FLAGS.workdir) / protocol / method
    arg = f"{method},{protocol}" + (",local" if FLAGS.local else "")
    command = [
        sys.executable, "-m", "sequax.launch.train",
        f"--config={REPO_ROOT / 'configs' / 'vit_split_mnist.py'}:{arg}",
        f"--workdir={workdir}", "--config.checkpoint.enabled=False",
    ]  # fmt: skip
    if METHODS[method][2]:
        command.append(f"--config.model.weights={FLAGS.weights}")
    subprocess.run(["rm", "-rf", str(workdir)], check=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"{protocol}/{method}: failed: {tail}", flush=True)
        return {"failed": tail}
    summary = json.loads((workdir / "summary.json").read_text())
    cell = {
        "acc": summary["class_il"]["acc"],
        "forgetting": summary["class_il"]["forgetting"],
        "task_il_acc": summary["task_il"]["acc"],
        "time_to_result": summary["timings"]["time_to_result"],
        "train_samples_per_s": summary["timings"]["train_samples_per_s"],
        "process_seconds": seconds,
    }
    print(
        f"{protocol}/{method}: class-IL ACC {100 * cell['acc']:.2f}, forgetting "
        f"{100 * cell['forgetting']:.2f}, {cell['time_to_result']:.0f} s",
        flush=True,
    )
    return cell


def table(cells: dict, methods, protocols) -> str:
    head = "| method | starts from | trains |"
    rule = "| --- | --- | --- |"
    for p in protocols:
        head += f" {p}: class-IL ACC | forgetting | task-IL ACC | wall (s) |"
        rule += " ---: | ---: | ---: | ---: |"
    rows = [head, rule]
    for m in methods:
        start = "F-MNIST ViT" if METHODS[m][2] else "random init"
        row = f"| {m} | {start} | {TRAINS[m]} |"
        for p in protocols:
            c = cells[p][m]
            if "failed" in c:
                row += f" failed: {c['failed'][:60]} | | | |"
                continue
            row += (
                f" {100 * c['acc']:.2f} | {100 * c['forgetting']:.2f} | "
                f"{100 * c['task_il_acc']:.2f} | {c['time_to_result']:.0f} |"
            )
        rows.append(row)
    return "\n".join(rows)


def verdict(cells: dict, methods, protocols) -> list[str]:
    """Which pretrained methods are above the from-scratch naive baseline, per protocol."""
    lines = []
    for p in protocols:
        base = cells[p].get("naive", {}).get("acc")
        if base is None:
            continue
        below = [
            m
            for m in methods
            if METHODS[m][2] and "acc" in cells[p][m] and cells[p][m]["acc"] <= base
        ]
        above = [m for m in methods if METHODS[m][2] and m not in below]
        lines.append(
            f"- {p}: above from-scratch naive ({100 * base:.2f}): {', '.join(above) or 'none'}"
            + (f"; not above: {', '.join(below)}" if below else "")
        )
    return lines


def section(cells, methods, protocols, info, seconds: float) -> str:
    pretrain = {}
    figures = Path(FLAGS.weights + ".json")
    if figures.is_file():
        pretrain = json.loads(figures.read_text())
    load = info["load"][0]
    lines = [
        "## Split MNIST from a Fashion-MNIST ViT",
        "",
        f"`python -m benchmarks.vit_table{' --local' if FLAGS.local else ''} --update_docs`, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {seconds / 60:.1f} min; "
        f"{info['cpu']}, {info['cores']} cores, load average {load:.2f} at the start"
        + (
            " (other jobs were running: wall times are indicative)"
            if load > 0.5 * info["cores"]
            else ""
        )
        + ".",
    ]
    if pretrain:
        lines.append(
            f"The checkpoint: `python -m benchmarks.vit_pretrain` ({pretrain['epochs']} epochs "
            f"over {pretrain['train_examples']:,} Fashion-MNIST images, "
            f"{pretrain['seconds']:.0f} s, finished {pretrain.get('finished_utc', '?')} UTC): "
            f"Fashion-MNIST test accuracy {100 * pretrain['test_accuracy']:.2f} %, reloaded "
            f"through the .npz loader with logits within "
            f"{pretrain['reload_max_abs_logit_gap']:.1e}."
        )
    lines += [
        "",
        "Each cell: `python -m sequax.launch.train --config=configs/vit_split_mnist.py:METHOD,"
        "PROTOCOL`, MNIST's 60,000 training images"
        + (" (here 1,000 per task: --local)" if FLAGS.local else "")
        + ", one epoch per task, batch 32, seed 0; wall = the run's time to result.",
        "",
        table(cells, methods, protocols),
        "",
        *verdict(cells, methods, protocols),
    ]
    return "\n".join(lines)


def main(argv):
    del argv
    methods = [m for m in FLAGS.methods.split(",") if m]
    protocols = [p for p in FLAGS.protocols.split(",") if p]
    if set(methods) - set(METHODS) or set(protocols) - set(PROTOCOLS):
        raise app.UsageError(f"use methods from {', '.join(METHODS)}, protocols {PROTOCOLS}")
    pretrained = any(METHODS[m][2] for m in methods)
    if pretrained and not os.path.isfile(FLAGS.weights):
        sys.exit(f"no checkpoint at {FLAGS.weights}; run python -m benchmarks.vit_pretrain first")
    paths = [Path(FLAGS.output)] if FLAGS.output else []
    if FLAGS.update_docs:
        from sequax.launch.common import repository_docs

        paths.append(repository_docs(REPO_ROOT) / "pretrained.md")
    info = machine()
    start = time.perf_counter()
    cells = {p: {m: run_cell(m, p) for m in methods} for p in protocols}
    text = section(cells, methods, protocols, info, time.perf_counter() - start)
    print("\n" + text)
    bench.publish("vit_table", text, paths)
    if any("failed" in c for p in cells.values() for c in p.values()):
        sys.exit("vit_table: a cell failed")


if __name__ == "__main__":
    # --methods and --output are sequax.launch.bench's flags (absl's one namespace): this
    # table's defaults are every method and no extra file.
    FLAGS.set_default("methods", ",".join(METHODS))
    FLAGS.set_default("output", "")
    app.run(main)

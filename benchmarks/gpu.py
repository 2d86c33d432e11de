"""The GPU section of docs/benchmarks.md: absolute times on one accelerator, sequax against a
plain PyTorch loop on the same GPU.

    python -m benchmarks.gpu --results=/tmp/gpu.json     # on the GPU machine, repository root
    python -m benchmarks.gpu --report=/tmp/gpu.json      # anywhere: writes the section
    python -m benchmarks.gpu --report=/tmp/gpu.json --update_docs   # + docs/benchmarks.md

`--report` writes the section into `--output` (bench's: runs/bench/benchmarks.md by default)
and, with `--update_docs`, into the repository's docs/benchmarks.md too.

Three parts (`--parts`), every cell in its own process so its memory and device state are its own:

- `pmnist`: PMNIST-10 (PROTOCOLS §E) naive / ER-500 / online EWC, sequax against
  `sequax.launch.bench`'s PyTorch loop run with `--torch_device=cuda` (the same loop as the
  CPU comparison).
- `runs`: PMNIST-10 naive with N seeds vmapped into one program (`config.runs = N`).
- `cifar`: Split CIFAR-10 (5 tasks × 2 classes, class-IL) with the DER papers' ResNet-18
  (`nf`=64 by default), batch 32, random crop + flip on every trained and replayed example,
  SGD lr 0.1, naive and ER-500 (replay batch 32), `--cifar_epochs` epochs per task: sequax's
  flax ResNet-18 against a plain PyTorch loop over `engine/torch_bridge/zoo.py`'s identical
  torch network (augmentation vectorised on the GPU, reservoir slots drawn as mammoth's
  `reservoir()` and written in one scatter).
- `time`: time to result, process start to summary, of PMNIST-10 naive and Split CIFAR-10
  ResNet-18 naive, sequax cold and warm against the PyTorch loop (`benchmarks/gpu_time.py`).

CIFAR-10 itself is not available offline, so the `cifar` part writes 50,000 + 10,000 images
in the official pickle format (class-tinted noise, `write_synthetic_cifar10`): the official
size and shape, so steps and times are those of the real protocol, but the accuracies are
of that synthetic task, not CIFAR-10's.

Precision: both sides in float32 storage with TF32 allowed for matmuls and convolutions
(JAX's default precision on NVIDIA GPUs; torch is set to `allow_tf32` for both), so both
frameworks do the same arithmetic.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from benchmarks import gpu_time, scale  # scale.child(): the matmul peak, vmapped runs
from sequax.engine.clock import process_start
from sequax.launch import (
    bench,  # its flags too: --single, --json_out, --torch_device
    torch_loop,
)
from sequax.launch.common import define_update_docs

_PARTS = flags.DEFINE_string(
    "parts",
    "pmnist,runs,cifar,time",
    "Comma-separated parts to run (`time`: benchmarks/gpu_time.py).",
)
_OUT = flags.DEFINE_string(
    "results", "", "Where the run writes its JSON results (after every cell)."
)
_REPORT = flags.DEFINE_string(
    "report", "", "Read this JSON and write the GPU section of --output (and --update_docs)."
)
_RUNS = flags.DEFINE_string("run_counts", "1,8,32,128", "Seed counts of the `runs` part.")
_CIFAR_ROOT = flags.DEFINE_string(
    "cifar_root", "/tmp/sequax_cifar", "Where the synthetic CIFAR-10 goes."
)
_CIFAR_EPOCHS = flags.DEFINE_integer("cifar_epochs", 1, "Epochs per task of the `cifar` part.")
_CIFAR_NF = flags.DEFINE_integer("cifar_nf", 64, "ResNet-18 width of the `cifar` part (64: DER's).")
_CIFAR_TRAIN = flags.DEFINE_integer(
    "cifar_train_per_task", 0, "Subsample each CIFAR task (quick runs); 0 = all."
)

FLAGS = flags.FLAGS
define_update_docs()  # bench's flag, listed in this program's --help too
REPO_ROOT = Path(__file__).resolve().parents[1]  # where `python -m benchmarks.gpu` resolves
CIFAR_METHODS = ("naive", "er")
CAPACITY, BATCH = 500, 32


# ---------------- Data -----------------------------------------------------------------------
def write_synthetic_cifar10(root: Path, seed: int = 0) -> Path:
    """<root>/cifar-10-batches-py at the official size, in the official format: 5 training
    pickles of 10,000 rows and a test pickle (uint8 [N, 3072], R, G, B planes; bytes keys).
    Each image is uniform noise blended 60/40 with its class's own colour, so the task is
    learnable and the two frameworks' accuracies can be compared."""
    folder = root / "cifar-10-batches-py"
    if (folder / "test_batch").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (10, 3)).astype(np.float32)

    def images(n, offset):
        y = (np.arange(n) + offset) % 10
        rng.shuffle(y)
        x = 0.6 * rng.integers(0, 256, (n, 32, 32, 3)) + 0.4 * colours[y][:, None, None, :]
        rows = x.astype(np.uint8).transpose(0, 3, 1, 2).reshape(n, 3072)
        return rows, [int(v) for v in y]

    for i in range(1, 6):
        rows, y = images(10000, i)
        (folder / f"data_batch_{i}").write_bytes(
            pickle.dumps(
                {
                    b"batch_label": f"training batch {i} of 5".encode(),
                    b"labels": y,
                    b"data": rows,
                    b"filenames": [b"synthetic.png"] * len(y),
                },
                protocol=2,
            )
        )
    rows, y = images(10000, 0)
    (folder / "test_batch").write_bytes(
        pickle.dumps(
            {
                b"batch_label": b"testing batch 1 of 1",
                b"labels": y,
                b"data": rows,
                b"filenames": [b"synthetic.png"] * len(y),
            },
            protocol=2,
        )
    )
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    (folder / "batches.meta").write_bytes(
        pickle.dumps(
            {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072}, protocol=2
        )
    )
    return folder


def cifar_config(method: str):
    from sequax.configs import common

    hyper = dict(capacity=CAPACITY, replay_batch=BATCH) if method == "er" else {}
    config = common.der_image_config("cifar10", method, lr=0.1, **hyper)
    config.data.root = _CIFAR_ROOT.value
    config.data.train_per_task = _CIFAR_TRAIN.value
    config.training.epochs = _CIFAR_EPOCHS.value
    config.model.nf = _CIFAR_NF.value
    config.seed = 0
    config.checkpoint.enabled = False  # like the PyTorch loop: throughput, not resumability
    return config


# ---------------- One CIFAR cell ------------------------------------------------------------
def run_sequax_cifar(method: str) -> dict:
    result = bench.run_sequax(cifar_config(method))
    result.pop("eval_flops", None)  # an MLP count; meaningless for the ResNet
    return result


def run_torch_cifar(method: str) -> dict:
    import torch
    import torch.nn.functional as F

    from sequax.engine.torch_bridge.zoo import resnet18_reduced

    wall_start = time.perf_counter()
    config = cifar_config(method)
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True  # JAX's default precision on NVIDIA GPUs
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    np.random.seed(0)
    d = config.data
    scenario = torch_loop.task_stream(config)  # test_per_task is 0 here: the full test sets
    mean = torch.tensor(d.normalize[0], device=device)[None, :, None, None]
    std = torch.tensor(d.normalize[1], device=device)[None, :, None, None]

    def tensors(x, y):  # uint8 NHWC -> float NCHW in [0, 1], on the GPU
        x = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float() / 255.0
        return x, torch.from_numpy(y).long().to(device)

    arange = torch.arange(32, device=device)

    def augment(x):  # random crop (zero padding 4) and horizontal flip, per example
        b = x.shape[0]
        padded = F.pad(x, (4, 4, 4, 4)).permute(0, 2, 3, 1)
        oy, ox = torch.randint(0, 9, (2, b), device=device)
        out = padded[
            torch.arange(b, device=device)[:, None, None],
            (oy[:, None] + arange)[:, :, None],
            (ox[:, None] + arange)[:, None, :],
        ].permute(0, 3, 1, 2)
        flip = torch.rand(b, device=device) < 0.5
        return torch.where(flip[:, None, None, None], out.flip(3), out)

    model = resnet18_reduced(num_classes=scenario.num_classes, nf=int(config.model.nf)).to(device)
    tests = [tensors(*scenario.test(t)) for t in range(scenario.num_tasks)]
    task_classes = torch.tensor(scenario.task_classes, device=device)

    def evaluate(p: int) -> list[float]:
        return torch_loop.torch_accuracy_row(
            model, tests, task_classes, p, 1000, prepare=lambda x: (x - mean) / std
        )

    # Warm-up on a throw-away copy, outside the timers (as sequax's compile is): cuDNN's
    # autotuning (`cudnn.benchmark`) of every convolution at the two batch shapes (32; 64 with
    # replay) and CUDA's lazy initialisation, so the train time is the steady state.
    t0 = time.perf_counter()
    spare = copy.deepcopy(model)
    spare_optimizer = torch.optim.SGD(spare.parameters(), lr=0.0)
    x0 = tests[0][0][: 2 * BATCH]
    for size in (BATCH, 2 * BATCH) if method == "er" else (BATCH,):
        for _ in range(3):
            spare_optimizer.zero_grad()
            F.cross_entropy(spare(augment(x0[:size])), tests[0][1][:size]).backward()
            spare_optimizer.step()
    torch.cuda.synchronize()
    warmup = time.perf_counter() - t0
    del spare, spare_optimizer

    buffer_x = torch.zeros(CAPACITY, 3, 32, 32, device=device)
    buffer_y = torch.zeros(CAPACITY, dtype=torch.long, device=device)
    num_seen = 0
    timings = {"train": 0.0, "end_task": 0.0, "eval": 0.0}
    matrix, train_samples = [], 0
    evaluate(0)
    for task in range(scenario.num_tasks):
        x_task, y_task = tensors(*scenario.train(task))
        optimizer = torch.optim.SGD(model.parameters(), lr=float(config.optimizer.lr))
        steps = len(y_task) // BATCH
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(int(config.training.epochs)):
            order = torch.randperm(len(y_task), device=device)
            for i in range(steps):
                index = order[i * BATCH : (i + 1) * BATCH]
                x, y = x_task[index], y_task[index]
                inputs, labels = augment(x), y
                if method == "er" and num_seen > 0:
                    filled = min(num_seen, CAPACITY)
                    choice = torch.from_numpy(
                        np.random.choice(filled, size=min(BATCH, filled), replace=False)
                    ).to(device)
                    inputs = torch.cat([inputs, augment(buffer_x[choice])])
                    labels = torch.cat([y, buffer_y[choice]])
                optimizer.zero_grad()
                loss = F.cross_entropy(model((inputs - mean) / std), labels)
                loss.backward()
                optimizer.step()
                loss.item()
                if method == "er":  # mammoth's reservoir slots, written in one scatter
                    slots = []
                    for _ in range(len(y)):
                        slots.append(torch_loop.reservoir(num_seen, CAPACITY))
                        num_seen += 1
                    keep = torch.tensor(
                        [j for j, s in enumerate(slots) if s >= 0], dtype=torch.long
                    )
                    if len(keep):
                        where = torch.tensor(
                            [s for s in slots if s >= 0], dtype=torch.long, device=device
                        )
                        buffer_x[where] = x[keep.to(device)]
                        buffer_y[where] = y[keep.to(device)]
            train_samples += steps * BATCH
        torch.cuda.synchronize()
        timings["train"] += time.perf_counter() - t0
        torch_loop.timed_row(matrix, evaluate, task, timings)
    return torch_loop.loop_result(timings, wall_start, train_samples, matrix, compile=warmup,
                                  device_peak_bytes=torch.cuda.max_memory_allocated(),
                                  time_to_result=time.time() - process_start())  # fmt: skip


def run_single(spec: str, json_out: str) -> None:
    _, method, framework = spec.split(",")
    result = run_sequax_cifar(method) if framework == "sequax" else run_torch_cifar(method)
    result["acc"] = 100.0 * float(np.mean(result["matrix"][-1]))
    result.update(method=method, framework=framework)
    Path(json_out).write_text(json.dumps(result))


def cifar_child(method: str, framework: str, folder: str, env=None, name: str = "") -> dict | None:
    """One CIFAR cell in its own process (`env`: its environment, None: this one's)."""
    out = os.path.join(folder, f"cifar_{method}_{framework}{name}.json")
    command = [
        sys.executable,
        "-m",
        "benchmarks.gpu",
        f"--single=cifar,{method},{framework}",
        f"--json_out={out}",
        f"--cifar_root={_CIFAR_ROOT.value}",
        f"--cifar_epochs={_CIFAR_EPOCHS.value}",
        f"--cifar_nf={_CIFAR_NF.value}",
        f"--cifar_train_per_task={_CIFAR_TRAIN.value}",
    ]
    done = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO_ROOT,
                          env=env)  # fmt: skip
    if done.returncode != 0:
        print(f"  FAILED ({done.returncode}):\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
        return None
    return json.loads(Path(out).read_text())


# ---------------- The whole GPU run ---------------------------------------------------------
def gpu_info() -> dict:
    import jax

    from sequax.launch.common import machine

    info = machine()
    info["gpu"] = str(jax.devices()[0].device_kind)
    info["backend"] = jax.default_backend()
    try:
        info["gpu_memory_gib"] = jax.devices()[0].memory_stats()["bytes_limit"] / 2**30
    except Exception:  # noqa: BLE001 - informational only
        pass
    return info


def run_all() -> None:
    FLAGS.torch_device = "cuda"  # bench.run_child passes it on to the PyTorch cells
    parts = [p for p in _PARTS.value.split(",") if p]
    results: dict = {"info": gpu_info(), "pmnist": {}, "runs": {}, "cifar": {}, "time": {},
                     "seconds": {}}  # fmt: skip
    results["info"]["cifar"] = dict(
        nf=_CIFAR_NF.value, epochs=_CIFAR_EPOCHS.value, train_per_task=_CIFAR_TRAIN.value
    )

    def save():
        if _OUT.value:
            Path(_OUT.value).write_text(json.dumps(results, indent=1, default=str))

    with tempfile.TemporaryDirectory() as folder:
        results["peak"] = scale.child("peak", folder, [])
        print(
            f"matmul peak (fp32 storage, default precision): {results['peak']['gflops']:,.0f} "
            "GFLOP/s",
            flush=True,
        )
        save()
        if "pmnist" in parts:
            t0 = time.perf_counter()
            for method in bench.METHODS:
                for framework in bench.FRAMEWORKS:
                    results["pmnist"][f"{method},{framework}"] = bench.timed(
                        f"PMNIST-10 {method} {framework}",
                        functools.partial(bench.run_child, "pmnist10", method, framework, folder),
                    )
                    save()
            results["seconds"]["pmnist"] = time.perf_counter() - t0
        if "runs" in parts:
            t0 = time.perf_counter()
            for n in [int(v) for v in _RUNS.value.split(",")]:
                results["runs"][str(n)] = bench.timed(
                    f"PMNIST-10 naive x{n} runs",
                    functools.partial(scale.child, f"pmnist10,naive,sequax,r{n}", folder, []),
                )
                save()
            results["seconds"]["runs"] = time.perf_counter() - t0
        if "cifar" in parts:
            t0 = time.perf_counter()
            write_synthetic_cifar10(Path(_CIFAR_ROOT.value))
            print(f"synthetic CIFAR-10 written in {time.perf_counter() - t0:.0f}s", flush=True)
            for method in CIFAR_METHODS:
                for framework in ("sequax", "torch"):
                    results["cifar"][f"{method},{framework}"] = bench.timed(
                        f"S-CIFAR-10 ResNet-18 {method} {framework}",
                        functools.partial(cifar_child, method, framework, folder),
                    )
                    save()
            results["seconds"]["cifar"] = time.perf_counter() - t0
        if "time" in parts:
            t0 = time.perf_counter()
            write_synthetic_cifar10(Path(_CIFAR_ROOT.value))

            def pmnist(run, env):
                framework = "torch" if run == "torch" else "sequax"
                options = "" if run == "torch" else "checkpoints"
                return bench.run_child("pmnist10", "naive", framework, folder, options=options,
                                       env=env, name=f"_{run}")  # fmt: skip

            def cifar(run, env):
                framework = "torch" if run == "torch" else "sequax"
                return cifar_child("naive", framework, folder, env=env, name=f"_{run}")

            results["time"] = gpu_time.time_part(folder, pmnist, cifar, bench.timed)
            save()
            results["seconds"]["time"] = time.perf_counter() - t0
    results["command"] = " ".join(["python -m benchmarks.gpu", *sys.argv[1:]])
    save()


# ---------------- Report --------------------------------------------------------------------
def _pair_rows(cells: dict, methods, title: str) -> list[str]:
    rows = []
    for m in methods:
        s, t = cells.get(f"{m},sequax"), cells.get(f"{m},torch")
        for name, c in (("sequax", s), ("torch", t)):
            if not c:
                rows.append(f"| {title} | {m} | {name} | failed | | | | | | |")
                continue
            ratio = (
                f"{s['samples_per_s'] / t['samples_per_s']:.2f}×"
                if (name == "sequax" and s and t)
                else ""
            )
            compile_s = f"{c['compile']:.1f}" if (name == "sequax" or c["compile"]) else "–"
            peak = c.get("device_peak_bytes")
            peak = f"{peak / 2**20:,.0f}" if peak else "–"
            rows.append(
                f"| {title} | {m} | {name} | {c['samples_per_s']:,.0f} | {ratio} | {c['wall']:.1f} "
                f"| {compile_s} | {c['train']:.1f} | {c['acc']:.2f} | {peak} |"
            )
    return rows


def report(results: dict) -> str:
    info, peak = results["info"], results.get("peak") or {}
    lines = [
        "## On one GPU",
        "",
        "Absolute times on one accelerator, sequax against a plain PyTorch loop on the same GPU, "
        "each cell in its own process (`benchmarks/gpu.py`; its docstring describes the loops).",
        "",
        "Command (on the GPU machine; `--report=FILE` then wrote this section here):",
        "",
        f"    {results.get('command', 'python -m benchmarks.gpu')}",
        "",
        f"- GPU: {info.get('gpu')} ({info.get('gpu_memory_gib', 0):.0f} GiB usable by JAX); host "
        f"{info['cpu']}, {info['cores']} cores, {info['ram_gib']:.0f} GiB RAM.",
        f"- Software there: Python {info['python']}, jax {info['jax']} (jaxlib {info['jaxlib']}), "
        f"torch {info['torch']}. These are the GPU image's versions, not the CPU pins of BUILD.md.",
        "- Precision: float32 storage, TF32 allowed for matmuls and convolutions on both sides "
        "(JAX's default on NVIDIA GPUs; torch set to `allow_tf32`).",
    ]
    if peak:
        lines.append(
            f"- Matmul peak measured in the same run (JAX, fp32 storage, default precision): "
            f"**{peak['gflops'] / 1000:,.1f} TFLOP/s** ("
            + ", ".join(f"{n}²: {v / 1000:.0f}" for n, v in peak["by_size"].items())
            + ")."
        )
    header = [
        "| workload | method | framework | samples/s | ratio | wall s | compile s | train s "
        "| acc % | peak device MiB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    if results.get("pmnist"):
        lines += [
            "",
            "### PMNIST-10 (MLP 784-256-256-10, batch 128, 10 tasks × 60,000, 1 epoch)",
            "",
            "The same PyTorch loop as the CPU comparison above (`sequax.launch.bench "
            "--torch_device=cuda`): "
            "mammoth's ER insertion example by example, `loss.item()` every step, the Fisher by "
            "`torch.func.vmap(grad)` in chunks of 128.",
            "",
            *header,
            *_pair_rows(results["pmnist"], bench.METHODS, "PMNIST-10"),
        ]
    if results.get("runs"):
        base = results["runs"].get("1")
        lines += [
            "",
            "### PMNIST-10 naive: N seeds vmapped in one program",
            "",
            "| seeds | wall s | × one seed's wall | train s | samples/s (all seeds) | compile s "
            "| mean acc % |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for n, c in results["runs"].items():
            if not c:
                lines.append(f"| {n} | failed | | | | | |")
                continue
            times = f"{c['wall'] / base['wall']:.2f}×" if base else ""
            lines.append(
                f"| {n} | {c['wall']:.1f} | {times} | {c['train']:.1f} | {c['samples_per_s']:,.0f} "
                f"| {c['compile']:.1f} | {np.mean(c['accs']):.2f} |"
            )
    if results.get("cifar"):
        cfg = results["info"].get("cifar", {})
        lines += [
            "",
            f"### Split CIFAR-10, ResNet-18 (nf {cfg.get('nf', 64)}), batch 32, crop + flip, "
            f"{cfg.get('epochs', 1)} epoch per task",
            "",
            "**Synthetic data of the official size** (50,000 + 10,000 class-tinted noise images "
            "written in the official pickle format; CIFAR-10 is not available offline): the steps "
            "and times are the protocol's, the accuracies are of that synthetic task, not "
            "CIFAR-10's.",
            "",
            *header,
            *_pair_rows(results["cifar"], CIFAR_METHODS, "S-CIFAR-10"),
        ]
    if results.get("time"):
        lines += gpu_time.report(results["time"])
    lines += [
        "",
        "- **samples/s**: training examples (not counting replayed ones) per second of "
        "training-loop time; **wall**: the whole stream in the child process after imports (data, "
        "compile, training, evaluation after every task); **peak device MiB**: JAX's "
        "`peak_bytes_in_use` / torch's `max_memory_allocated`.",
    ]
    seconds = sum(results.get("seconds", {}).values())
    lines.append(f"- Device time of the run: {seconds / 60:.1f} min of cells.")
    return "\n".join(lines)


def main(argv):
    logging.set_verbosity(
        logging.WARNING
    )  # orbax's per-checkpoint INFO lines would drown the output
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.single:  # one CIFAR cell, in this process
        run_single(FLAGS.single, FLAGS.json_out)
    elif _REPORT.value:
        paths = bench.documents(FLAGS.output, FLAGS.update_docs, REPO_ROOT)
        text = report(json.loads(Path(_REPORT.value).read_text()))
        print(text)
        bench.publish("gpu", text, paths)
    else:
        run_all()


if __name__ == "__main__":
    app.run(main)
